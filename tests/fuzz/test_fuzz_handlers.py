"""Every request handler of a node, with arbitrary messages and with valid ones mutated.

The operations come from the nodes' :class:`~nodedb.query.api.RequestAPI` itself: every
client operation (``hello`` included) and every peer operation some service registered, so a
new operation is fuzzed as soon as it is served. Requests go through ``RequestAPI.dispatch``,
on a client connection for client operations and on a peer connection (after a real
``hello``) for peer operations, to a host of a simulated 3-host cluster (real nodes, memory
storage, one fake clock; :class:`~nodedb.testing.cluster.SimCluster`).

For every request, whatever it holds:

- the handler returns a value or a Deferred, or raises a :class:`~nodedb.errors.NodeDBError`;
  the Deferred fires (the cluster's clock runs until it does) with a value the channel can
  encode, or fails with a NodeDBError; nothing else, and no error is logged;
- a request refused with ``InvalidRequest`` or ``ProtocolError`` changed no stored data on
  any host (element tables, logs, partition states);
- the host keeps working: a ``ping`` on a new connection answers, and a ``get`` of an element
  written before the fuzzing returns it.

Client operations, ``gossip.ping`` and ``query.forward`` (which carries client requests)
share one cluster. Every other peer operation changes the cluster's own state when it is
valid (a newer Raft term, a fenced epoch, a forged NI entry: peers are trusted, see
docs/security.md), so each family of them (the name before the dot) gets a cluster of its
own, and for those only the first two properties hold: a host that follows a valid but
forged Raft message can lose its read barrier, and that is not a bug.

The examples are derandomized: a run replays exactly, provided the same tests run in the same
order (the clusters live for the whole module).
"""

import struct
import zlib

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import fuzzkit
from fuzzkit import counted, fuzz_settings
from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb import codec
from nodedb.wire.channel import PROTOCOL_VERSION, Channel

SEED = 5
#: Simulated seconds a handler's Deferred may take: the longest a node waits on its own is a
#: forwarded request's 2 x --peer-timeout, a write's 10 s, or a relay's.
REPLY_WITHIN = 40.0
#: Simulated seconds the follow-up get may be answered Unavailable before it succeeds.
GET_WITHIN = 20.0
#: Peer operations whose valid messages change nothing a client could not (they share the
#: clients' cluster).
SHARED_PEER_OPS = frozenset({"gossip.ping", "query.forward"})
#: The operations every node serves today; the enumeration must find at least these.
KNOWN_CLIENT_OPS = {
    "hello", "insert", "get", "update", "delete", "scan", "transaction", "status", "ping", "map", "admin.recover"
}
KNOWN_PEER_OPS = {
    "gossip.push", "gossip.sync", "gossip.join", "gossip.ping",
    "query.forward", "query.relay",
    "tx.prepare", "tx.commit", "tx.abort", "tx.resolve",
    "logsync.append", "logsync.promise", "logsync.handoff",
    "voting.elect", "raft.message",
}  # fmt: skip


# -- the clusters -----------------------------------------------------------------------------


class Fixture:
    """A settled 3-host cluster with elements written through it.

    :ivar anchors: ``{element id: doc}`` of type ``anchor``, which no base message names:
        the follow-up ``get`` reads them.
    :ivar elements: ids of type ``fuzz`` elements, which the base messages use.
    """

    def __init__(self, seed):
        self.cluster = SimCluster(seed)
        self.cluster.start_hosts(3)
        self.cluster.run_until(self.cluster.settled, timeout=60)
        clients = [self.cluster.client(hosts=[h]) for h in self.cluster.hosts]

        async def write():
            anchors, elements = {}, []
            for n, client in enumerate(clients):
                doc = {"anchor": n, "text": "unchanged"}
                anchors[await client.insert("anchor", doc)] = doc
            for n in range(12):
                elements.append(await clients[n % 3].insert("fuzz", {"n": n, "tags": ["a", n], "sub": {"x": n / 2}}))
            page = await clients[0].scan("fuzz", limit=2)
            return anchors, elements, page.cursor

        self.anchors, self.elements, self.cursor = self.cluster.wait(write())
        self.cluster.run(2.0)

    def host(self, index):
        return self.cluster.hosts[index % len(self.cluster.hosts)]


_clusters = {}


def fixture_for(family):
    """The cluster of *family* (``shared`` for client operations), built on first use, with
    a seed of its own that does not depend on which tests run."""
    if family not in _clusters:
        _clusters[family] = Fixture(SEED + zlib.crc32(family.encode()) % 1000)
    return _clusters[family]


def family_of(op, client):
    if client or op in SHARED_PEER_OPS:
        return "shared"
    return op.split(".")[0] if op != "query.relay" else "relay"


def served_ops(api):
    """``(client ops, peer ops)`` a node's RequestAPI serves (``hello`` is the handshake,
    answered by ``dispatch`` itself)."""
    peer = {op for op, operation in api.operations.items() if operation.peer}
    return sorted(api.operations.keys() - peer | {"hello"}), sorted(peer)


CLIENT_OPS, PEER_OPS = served_ops(fixture_for("shared").host(0).node.api)


@pytest.fixture(scope="module", autouse=True)
def _stop_clusters():
    yield
    for fixture in _clusters.values():
        fixture.cluster.stop()
    _clusters.clear()


# -- talking to a node ------------------------------------------------------------------------


def connection(node, role):
    """A channel to *node* over a StringTransport, greeted with a real ``hello`` as *role*
    (None: not greeted)."""
    channel = Channel(node.api.dispatch)
    channel.makeConnection(StringTransport())
    if role is not None:
        hello = {"id": 0, "op": "hello", "version": PROTOCOL_VERSION, "role": role}
        if role == "peer":
            hello.update(host="fuzzer000000", cluster=node.identity.cluster_id)
        node.api.dispatch(hello, channel)
        assert channel.greeted and channel.role == role
    return channel


def outcome_of(cluster, call):
    """Run ``call()`` (a dispatch) and, if it returns a Deferred, the cluster's clock until
    the Deferred fires. :return: ``(result or Failure, fired at once)``."""
    try:
        result = call()
    except Exception:  # noqa: BLE001 - judged by the caller
        return Failure(), True
    if not isinstance(result, defer.Deferred):
        return result, True
    seen = []
    result.addBoth(seen.append)
    if seen:
        return seen[0], True
    try:
        cluster.run_until(lambda: seen, timeout=REPLY_WITHIN)
    except AssertionError:
        raise AssertionError(f"no answer in {REPLY_WITHIN:g} simulated seconds") from None
    return seen[0], False


def stored(cluster):
    """What every host has stored: element tables, logs and partition states. (A log is
    only appended to and cut at its start, so its length and both ends stand for it; a full
    copy would make each example slower as the fuzzing writes.)"""
    return [
        (
            {name: dict(table) for name, table in h.store.types.items() if table},
            {p: (len(entries), entries[0], entries[-1]) for p, entries in h.store.log.items() if entries},
            {p: state.copy() for p, state in h.store.partitions.items()},
        )
        for h in cluster.hosts
    ]


def describe_change(before, after, cluster):
    for h, old, new in zip(cluster.hosts, before, after):
        for label, a, b in zip(("elements", "log", "partitions"), old, new):
            if a != b:
                return f"{h.name}'s {label} changed"
    return "nothing"


def serve(fixture, index, op, request, role, strict):
    """Send *request* to host *index* and check the properties of the module docstring.

    :param strict: also check that the host still serves a linearizable ``get``.
    :return: the outcome (a value, or the Failure).
    """
    cluster = fixture.cluster
    node = fixture.host(index).node
    channel = connection(node, None if op == "hello" else role)
    message = {"id": 1, **request, "op": op}
    before = stored(cluster)
    result, at_once = outcome_of(cluster, lambda: node.api.dispatch(message, channel))
    event(f"{'refused' if isinstance(result, Failure) else 'served'}: {_name(result)}{'' if at_once else ' (later)'}")
    if isinstance(result, Failure):
        assert result.check(errors.NodeDBError), f"{op} raised {result.type.__name__}:\n{result.getTraceback()}"
        if result.check(errors.InvalidRequest, errors.ProtocolError):
            after = stored(cluster)
            assert after == before, f"{op} was refused ({result.value}) but {describe_change(before, after, cluster)}"
    else:
        # The channel encodes the reply into a frame: it must be plain CBOR the peer can decode.
        codec.decode(codec.encode({"id": 1, "ok": result}))
    follow_up(fixture, node, strict)
    return result


def _name(result):
    if isinstance(result, Failure):
        return result.type.__name__
    return type(result).__name__


def follow_up(fixture, node, strict):
    cluster = fixture.cluster
    client = connection(node, "client")
    assert node.api.dispatch({"id": 2, "op": "ping"}, client) == "pong"
    status, _ = outcome_of(cluster, lambda: node.api.dispatch({"id": 3, "op": "status"}, client))
    assert type(status) is dict, status
    codec.encode(status)
    if strict:
        # Unavailable is a transient answer (a primary moving, as a valid voting.elect or
        # logsync.handoff asks): asked again, as the client does, the get must succeed.
        deadline = cluster.clock.seconds() + GET_WITHIN
        for key, doc in fixture.anchors.items():
            while True:
                request = {"id": 4, "op": "get", "type": "anchor", "key": key}
                reply, _ = outcome_of(cluster, lambda: node.api.dispatch(request, client))
                if not (isinstance(reply, Failure) and reply.check(errors.Unavailable) and cluster.clock.seconds() < deadline):
                    break
                cluster.run(0.5)
            assert not isinstance(reply, Failure), f"the host no longer serves a get: {reply.value!r}"
            assert reply[0] == doc


# -- valid messages, one per operation ----------------------------------------------------------


class Context:
    """What the valid messages to one host are made of, read from the cluster as it is now."""

    def __init__(self, fixture, index):
        self.fixture = fixture
        self.node = node = fixture.host(index).node
        self.me = node.identity.host_id
        self.others = [h.node.identity.host_id for h in fixture.cluster.hosts if h.node is not node]
        self.layout = node.storage.layout
        self.assignments = node.voting.state.assignments
        self.led = sorted(p for p, a in self.assignments.items() if a.primary == self.me)
        self.followed = sorted(p for p, a in self.assignments.items() if self.me in a.replicas[1:])
        self.partitions = sorted(self.assignments)

    def plausible(self):
        """Values a mutation may put anywhere: ids, partitions, epochs, names of this cluster."""
        values = [self.me, *self.others, "fuzz", "anchor", "nodedb.prepared", "nodedb.decision", *self.fixture.elements[:4]]
        values += [0, 1, 63, 64, self.fixture.cursor, self.node.identity.cluster_id, *KNOWN_PEER_OPS]
        if self.led:
            values += [self.led[0], self.layout.first_id(self.led[0]), self.layout.last_id(self.led[0])]
        return values

    def element(self, draw, partitions=None):
        """A written ``fuzz`` element's id, in one of *partitions* if any is; else the first
        id of one of them."""
        ids = self.fixture.elements
        if partitions is not None:
            inside = [i for i in ids if self.layout.partition_of(i) in partitions]
            if inside:
                return fuzzkit.pick(draw, inside, label="element")
            if partitions:
                return self.layout.first_id(fuzzkit.pick(draw, sorted(partitions), label="partition")) + 1
        return fuzzkit.pick(draw, ids, label="element")

    def state(self, partition):
        return self.node.storage.partition_state(partition)

    def entry(self, draw):
        other = draw(st.sampled_from(self.others), label="other host")
        return self.node.gossip.state.ni.entries[other].to_wire()


#: ``op -> base(context, draw)``: a valid message of each operation (its fields, without
#: ``id`` and ``op``), made of what the cluster holds now.
BASES = {}


def base(*ops):
    def register(build):
        for op in ops:
            BASES[op] = build
        return build

    return register


def _doc(draw):
    return draw(st.fixed_dictionaries({"n": st.integers(0, 9)}, optional={"t": st.text(max_size=4)}), label="doc")


def _one_of(draw, *choices, label=None):
    return draw(st.sampled_from(choices), label=label)


@base("hello")
def _hello(c, draw):
    if _one_of(draw, "client", "peer", label="role") == "client":
        return {"version": 1, "role": "client", "client": "fuzz"}
    return {"version": 1, "role": "peer", "host": "fuzzer000000", "cluster": c.node.identity.cluster_id}


@base("insert")
def _insert(c, draw):
    return {"type": "fuzz", "doc": _doc(draw), "near": c.element(draw)}


@base("get")
def _get(c, draw):
    return {"type": "fuzz", "key": c.element(draw), "consistency": _one_of(draw, "replica", "linearizable")}


@base("update")
def _update(c, draw):
    return {"type": "fuzz", "key": c.element(draw), "doc": _doc(draw), "if_version": 2**63}


@base("delete")
def _delete(c, draw):
    # At a version no element has: the elements stay for the other examples (a mutation
    # that drops if_version deletes one, which is fine).
    return {"type": "fuzz", "key": c.element(draw), "if_version": 2**63}


@base("scan")
def _scan(c, draw):
    where = {"n": {">=": 0, "<": 100}, "tags": {"in": [["a", 1]]}}
    return {"type": "fuzz", "where": where, "limit": 5, "cursor": _one_of(draw, None, c.fixture.cursor)}


@base("transaction")
def _transaction(c, draw):
    return {
        "ops": [
            {"op": "update", "type": "fuzz", "key": c.element(draw), "doc": _doc(draw), "if_version": 2**63},
            {"op": "insert", "type": "fuzz", "doc": _doc(draw), "near": c.element(draw)},
            {"op": "delete", "type": "fuzz", "key": c.element(draw), "if_version": 2**63},
        ]
    }


@base("status", "ping", "gossip.ping")
def _nothing(c, draw):
    return {}


@base("map")
def _map(c, draw):
    return {"since": _one_of(draw, 0, 1, 2**63, label="since")}


@base("admin.recover")
def _recover(c, draw):
    return {"force": True}


#: Operations whose valid message a healthy cluster refuses, changing nothing: the fixture's
#: clusters are healthy, and there is nothing to recover.
REFUSED_WHEN_HEALTHY = {"admin.recover": "the cluster has a live majority; nothing to recover"}


@base("gossip.push")
def _push(c, draw):
    ni = c.node.gossip.state.ni
    return {"source": c.others[0], "rumours": [[c.entry(draw), 1]], "checksum": ni.checksum, "size": ni.size}


@base("gossip.sync")
def _sync(c, draw):
    return {"entries": [c.entry(draw)], "want": list(c.others)}


@base("gossip.join")
def _join(c, draw):
    return {"entry": c.entry(draw)}


@base("query.forward")
def _forward(c, draw):
    kind = _one_of(draw, "get", "insert", "update", "delete", "transaction", "batch", "scan", label="forwarded")
    key = c.element(draw, c.led)
    partition = c.layout.partition_of(key)
    if kind == "get":
        request = {"op": "get", "type": "fuzz", "key": key, "consistency": _one_of(draw, "replica", "linearizable")}
    elif kind == "insert":
        request = {"op": "insert", "type": "fuzz", "doc": _doc(draw), "near": key}
    elif kind == "update":
        request = {"op": "update", "type": "fuzz", "key": key, "doc": _doc(draw)}
    elif kind == "delete":
        request = {"op": "delete", "type": "fuzz", "key": key, "if_version": 2**63}
    elif kind == "transaction":
        request = {"op": "transaction", "ops": [{"op": "update", "type": "fuzz", "key": key, "doc": _doc(draw)}]}
    elif kind == "batch":
        parts = [[partition, c.layout.first_id(partition) - 1]]
        request = {"op": "scan", "type": "fuzz", "where": {"n": {">=": 0}}, "parts": parts, "limit": 10, "examine": 100}
    else:
        request = {"op": "scan", "type": "fuzz", "limit": 10, "until": c.layout.last_id(partition)}
    return {"request": request}


@base("query.relay")
def _relay(c, draw):
    call = _one_of(draw, "gossip.ping", "query.forward", label="call")
    arguments = {"request": {"op": "get", "type": "fuzz", "key": c.element(draw)}}
    return {"to": fuzzkit.pick(draw, c.others, label="to"), "call": call, "args": arguments, "timeout": 2.0}


@base("tx.prepare")
def _prepare(c, draw):
    partition = c.led[0] if c.led else 0
    insert = {"op": "insert", "type": "fuzz", "doc": _doc(draw), "near": c.layout.first_id(partition) + 1}
    return {"tx": c.element(draw, c.led), "p": partition, "ops": [insert]}


@base("tx.commit", "tx.abort")
def _decision(c, draw):
    # A record that does not exist: the decision of a transaction already completed.
    partition = c.led[0] if c.led else 0
    return {"tx": c.element(draw, c.led), "p": partition, "record": c.layout.first_id(partition) + 7}


@base("tx.resolve")
def _resolve(c, draw):
    return {"tx": c.element(draw, c.led)}


@base("logsync.append")
def _append(c, draw):
    partition = fuzzkit.pick(draw, c.followed or c.partitions, label="partition")
    state = c.state(partition)
    part = {"p": partition, "e": state.epoch, "last": state.last_commit_id}
    kind = _one_of(draw, "probe", "entries", "load", "reset", label="part")
    element = c.layout.first_id(partition) + 1000
    data = codec.encode({"n": 1})
    previous = [state.last_commit_id, state.last_epoch]
    if kind == "probe":
        part.update(prev=previous, entries=[], trunc=state.truncated, start=0)
    elif kind == "entries":
        commit = state.last_commit_id + 1
        part.update(prev=previous, entries=[[commit, state.epoch, 1.0e9, 0, "fuzz", element, data]], last=commit)
    elif kind == "load":
        part.update(load=[["fuzz", element, data, 1]], done=[state.last_commit_id, state.epoch])
    else:
        part["reset"] = 1.0e9
    return {"parts": [part]}


@base("logsync.promise")
def _promise(c, draw):
    return {"parts": [[p, c.state(p).epoch] for p in (c.followed or c.partitions)[:2]]}


@base("logsync.handoff")
def _handoff(c, draw):
    partition = c.led[0] if c.led else 0
    return {"p": partition, "e": c.assignments[partition].epoch, "to": fuzzkit.pick(draw, c.others, label="to")}


@base("voting.elect")
def _elect(c, draw):
    return {"parts": [[p, c.assignments[p].epoch] for p in c.led[:1]]}


@base("raft.message")
def _raft(c, draw):
    raft = c.node.voting.raft
    kind = _one_of(draw, "vote", "pre-vote", "vote-reply", "pre-vote-reply", "append", "append-reply", "snapshot", label="kind")
    term = max(0, raft.term - draw(st.integers(0, 1), label="older"))
    message = {"kind": kind, "from": fuzzkit.pick(draw, c.others, label="from"), "to": c.me, "term": term}
    if kind in ("vote", "pre-vote"):
        message.update(last_index=0, last_term=0)
    elif kind in ("vote-reply", "pre-vote-reply"):
        message["granted"] = False
    elif kind == "append":
        index = raft.last_index()
        entries = [[raft.term, index + 1, "normal", None]]
        message.update(prev_index=index, prev_term=raft.term, commit=raft.commit, entries=entries)
    elif kind == "append-reply":
        message.update(success=False, match=0, hint=0)
    else:
        config = {"voters": sorted(raft.config.voters), "learners": []}
        message["snapshot"] = {"index": 0, "term": 0, "config": config, "data": None}
    return message


# -- the properties -------------------------------------------------------------------------------


def test_every_operation_is_enumerated_and_has_a_valid_message():
    assert KNOWN_CLIENT_OPS <= set(CLIENT_OPS), CLIENT_OPS
    assert KNOWN_PEER_OPS <= set(PEER_OPS), PEER_OPS
    for host in fixture_for("shared").cluster.hosts:
        assert served_ops(host.node.api) == (CLIENT_OPS, PEER_OPS)
    missing = sorted(set(CLIENT_OPS + PEER_OPS) - set(BASES))
    assert not missing, f"add a valid message of {missing} to BASES, so that its mutations are fuzzed"


@pytest.mark.parametrize("op", sorted(set(BASES) & set(CLIENT_OPS + PEER_OPS)))
@fuzz_settings(6, campaign=False)
@given(data=st.data())
@counted
def test_every_valid_message_is_served(op, data, logged_errors):
    """The base messages are valid: no host refuses them as malformed (so that their
    mutations start from something meaningful)."""
    client = op in CLIENT_OPS
    family = family_of(op, client)
    fixture = fixture_for(family)
    index = data.draw(st.integers(0, 2), label="host")
    request = BASES[op](Context(fixture, index), data.draw)
    with fuzzkit.no_errors_logged(logged_errors):
        result = serve(fixture, index, op, request, "client" if client else "peer", strict=family == "shared")
    if op in REFUSED_WHEN_HEALTHY:
        assert isinstance(result, Failure) and REFUSED_WHEN_HEALTHY[op] in str(result.value), result
    elif isinstance(result, Failure):
        assert not result.check(errors.InvalidRequest, errors.ProtocolError), f"{op} {request} refused: {result.value}"


def _fuzz(op, data, logged_errors, mutated):
    client = op in CLIENT_OPS
    family = family_of(op, client)
    fixture = fixture_for(family)
    index = data.draw(st.integers(0, 2), label="host")
    context = Context(fixture, index)
    role = "client" if client else "peer"
    if mutated:
        request, how = fuzzkit.mutate(data.draw, BASES[op](context, data.draw), context.plausible())
        data.draw(st.just(how), label="mutated")
    else:
        names = sorted(BASES.get(op, lambda c, d: {})(context, data.draw))
        request = fuzzkit.arbitrary_message(data.draw, names, context.plausible())
        if not client and data.draw(st.integers(0, 4), label="on a client connection") == 0:
            role = "client"
    with fuzzkit.no_errors_logged(logged_errors):
        result = serve(fixture, index, op, request, role, strict=family == "shared")
    if role == "client" and not client:
        assert isinstance(result, Failure) and result.check(errors.InvalidRequest), "a peer op served to a client"


@pytest.mark.parametrize("op", CLIENT_OPS + PEER_OPS)
@fuzz_settings(50)
@given(data=st.data())
@counted
def test_arbitrary_messages(op, data, logged_errors):
    _fuzz(op, data, logged_errors, mutated=False)


@pytest.mark.parametrize("op", CLIENT_OPS + PEER_OPS)
@fuzz_settings(50)
@given(data=st.data())
@counted
def test_mutated_valid_messages(op, data, logged_errors):
    if op not in BASES:
        pytest.fail(f"no valid message of {op} in BASES")
    _fuzz(op, data, logged_errors, mutated=True)


@fuzz_settings(50)
@given(data=st.data())
@counted
def test_mutated_frames_to_a_node(data, logged_errors):
    """Both layers at once: a client's stream (a hello, then valid requests of every client
    operation) mutated at the byte level and fed in pieces to a real node's connection.
    Nothing raises, no error is logged, every request dispatched is answered with a
    well-formed reply, a ProtocolError closes the connection, and the host keeps working."""
    fixture = fixture_for("shared")
    cluster = fixture.cluster
    index = data.draw(st.integers(0, 2), label="host")
    node = fixture.host(index).node
    context = Context(fixture, index)
    ops = data.draw(st.lists(st.sampled_from([op for op in CLIENT_OPS if op != "hello"]), min_size=1, max_size=3), label="ops")
    messages = [{"id": 0, "op": "hello", "version": PROTOCOL_VERSION, "role": "client"}]
    messages += [{"id": n, **BASES[op](context, data.draw), "op": op} for n, op in enumerate(ops, 1)]
    frames = [codec.encode(m) for m in messages]
    stream = frames
    mutations = st.lists(fuzzkit.byte_mutations(sum(4 + len(f) for f in frames)), min_size=1, max_size=2)
    for mutation in data.draw(mutations, label="mutations"):
        stream = fuzzkit.mutate_stream(stream if isinstance(stream, list) else [stream], mutation)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")

    answers = []

    def dispatch(request, channel):
        result = node.api.dispatch(request, channel)
        if isinstance(result, defer.Deferred):
            answers.append(result)
        return result

    channel = Channel(dispatch, max_frame=node.config.max_frame_size)
    transport = StringTransport()
    channel.makeConnection(transport)
    with fuzzkit.no_errors_logged(logged_errors):
        bounds = [0, *sorted(set(cuts)), len(stream)]
        for start, end in zip(bounds, bounds[1:]):
            channel.dataReceived(stream[start:end])
        cluster.run_until(lambda: all(d.called for d in answers), timeout=REPLY_WITHIN)
        replies = []
        written = transport.value()
        while written:
            (length,) = struct.unpack(">I", written[:4])
            replies.append(codec.decode(written[4 : 4 + length]))
            written = written[4 + length :]
        for reply in replies:
            assert reply.keys() in ({"id", "ok"}, {"id", "error"}), reply
            if "error" in reply:
                assert reply["error"].keys() == {"type", "message"} and type(reply["error"]["message"]) is str
                assert errors.from_wire(reply["error"]).wire_name == reply["error"]["type"], reply  # a known type
                if reply["error"]["type"] == "ProtocolError":
                    assert transport.disconnecting
        assert len([r for r in replies if r["id"] is not None]) <= len(messages)
        follow_up(fixture, node, strict=True)

