"""RequestAPI: the checks between untrusted request maps and the query layer."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nodedb.errors import Conflict, InvalidRequest, NodeDBError, NotFound, ProtocolError
from nodedb.ids import IdAllocator, IdLayout
from nodedb.metrics import NodeMetrics
from nodedb.query.api import RequestAPI
from nodedb.wire.transaction import MAX_TRANSACTION_OPERATIONS, parse_transaction
from nodedb.query.local import LocalQuery
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb.wire.channel import PROTOCOL_VERSION

LAYOUT = IdLayout()
HELLO = {"version": 1, "host": "h1", "cluster": "c1"}


class FakeChannel:
    """Stands in for the Channel a request came on; the API marks it greeted, with a role."""

    greeted = False
    role = None

    def accept_hello(self, role, host):
        self.greeted, self.role = True, role


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def metrics():
    return NodeMetrics()


@pytest.fixture
def api(clock, metrics):
    storage = MemoryStorage()
    success_result_of(storage.open())
    ids = IdAllocator(LAYOUT, {0: 0, 1: 0})
    query = LocalQuery(storage, ids, clock, status=lambda: {"host": {"id": "h1"}, "hosts": [{"id": "h1"}]})
    return RequestAPI(query, lambda: HELLO, clock, metrics)


@pytest.fixture
def channel(api):
    channel = FakeChannel()
    assert api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION, "role": "client"}, channel) == HELLO
    return channel


def call(api, channel, op, **fields):
    """Dispatch *op* and return its result, waiting on nothing (everything here is synchronous)."""
    result = api.dispatch({"id": 9, "op": op, **fields}, channel)
    return success_result_of(result) if isinstance(result, defer.Deferred) else result


def refused(api, channel, error, match, op, **fields):
    with pytest.raises(error, match=match or None):
        result = api.dispatch({"id": 9, "op": op, **fields}, channel)
        if isinstance(result, defer.Deferred):
            failure_result_of(result).raiseException()


# -- the handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["ping", "get", "insert", None, "nonsense"])
def test_hello_must_come_first(api, op):
    with pytest.raises(ProtocolError, match="first request on a connection must be hello"):
        api.dispatch({"id": 1, "op": op}, FakeChannel())


@pytest.mark.parametrize("version", [0, 2, None, "1", 1.5])
def test_hello_of_another_protocol_version_is_refused(api, version):
    channel = FakeChannel()
    request = {"id": 1, "op": "hello", "role": "client"}
    if version is not None:
        request["version"] = version
    with pytest.raises(ProtocolError, match="protocol version .* is not supported"):
        api.dispatch(request, channel)
    with pytest.raises(ProtocolError, match="must be hello"):
        api.dispatch({"id": 2, "op": "ping"}, channel)


def test_hello_is_per_channel(api, channel):
    assert call(api, channel, "ping") == "pong"
    with pytest.raises(ProtocolError):
        api.dispatch({"id": 1, "op": "ping"}, FakeChannel())


@pytest.mark.parametrize("op", ["nonsense", None, 5, "hello2", "Insert"])
def test_unknown_ops_are_invalid(api, channel, op):
    refused(api, channel, InvalidRequest, "unknown op", op)


# -- every operation --------------------------------------------------------------------------


def test_insert_get_update_delete(api, channel):
    element = call(api, channel, "insert", type="user", doc={"name": "ada"})
    assert element == LAYOUT.make(0, 1)
    assert call(api, channel, "get", type="user", key=element) == [{"name": "ada"}, 1]
    assert call(api, channel, "update", type="user", key=element, doc={"name": "ada", "age": 36}) == 2
    assert call(api, channel, "update", type="user", key=element, doc={"v": 3}, if_version=2) == 3
    refused(api, channel, Conflict, "version", "update", type="user", key=element, doc={}, if_version=2)
    assert call(api, channel, "delete", type="user", key=element, if_version=3) == 4
    refused(api, channel, NotFound, "not found", "get", type="user", key=element)
    refused(api, channel, NotFound, "not found", "delete", type="user", key=element)


def test_insert_near(api, channel):
    first = call(api, channel, "insert", type="user", doc={})
    second = call(api, channel, "insert", type="order", doc={}, near=LAYOUT.make(1, 5))
    assert LAYOUT.partition_of(first) == 0 and LAYOUT.partition_of(second) == 1


def test_scan(api, channel):
    elements = [call(api, channel, "insert", type="user", doc={"n": n}) for n in range(5)]
    page = call(api, channel, "scan", type="user", where={"n": {">=": 1}}, limit=2)
    assert [item[0] for item in page["items"]] == elements[1:3]
    rest = call(api, channel, "scan", type="user", where={"n": {">=": 1}}, cursor=page["cursor"])
    assert [item[0] for item in rest["items"]] == elements[3:] and rest["cursor"] is None
    assert call(api, channel, "scan", type="user")["items"][0] == [elements[0], {"n": 0}, 1]


def test_transaction(api, channel):
    existing = call(api, channel, "insert", type="user", doc={"v": 1})
    results = call(
        api,
        channel,
        "transaction",
        ops=[
            {"op": "insert", "type": "order", "doc": {"u": existing}, "near": existing},
            {"op": "update", "type": "user", "key": existing, "doc": {"v": 2}, "if_version": 1},
        ],
    )
    assert len(results) == 2 and results[1] == 3
    assert call(api, channel, "get", type="order", key=results[0]) == [{"u": existing}, 2]
    refused(
        api,
        channel,
        Conflict,
        "version",
        "transaction",
        ops=[{"op": "insert", "type": "user", "doc": {}}, {"op": "delete", "type": "user", "key": existing, "if_version": 1}],
    )
    assert [item[0] for item in call(api, channel, "scan", type="user")["items"]] == [existing]


def test_status_and_ping(api, channel):
    assert call(api, channel, "status") == {"host": {"id": "h1"}, "hosts": [{"id": "h1"}]}
    assert call(api, channel, "ping") == "pong"


# -- malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, fields, match",
    [
        ("insert", {"doc": {}}, "insert: missing field 'type'"),
        ("insert", {"type": "user"}, "insert: missing field 'doc'"),
        ("get", {"type": "user"}, "get: missing field 'key'"),
        ("get", {"key": 1}, "get: missing field 'type'"),
        ("update", {"type": "user", "key": 1}, "update: missing field 'doc'"),
        ("delete", {"type": "user"}, "delete: missing field 'key'"),
        ("scan", {}, "scan: missing field 'type'"),
    ],
)
def test_missing_fields(api, channel, op, fields, match):
    refused(api, channel, InvalidRequest, match, op, **fields)


@pytest.mark.parametrize(
    "op, fields",
    [
        ("insert", {"type": "user", "doc": {}, "id2": 1}),
        ("get", {"type": "user", "key": 1, "stale": True}),
        ("update", {"type": "user", "key": 1, "doc": {}, "version": 1}),
        ("delete", {"type": "user", "key": 1, "doc": {}}),
        ("scan", {"type": "user", "order": "desc"}),
        ("transaction", {"ops": [{"op": "insert", "type": "t", "doc": {}}], "atomic": True}),
    ],
)
def test_unknown_fields_are_refused(api, channel, op, fields):
    refused(api, channel, InvalidRequest, f"{op}: unknown field", op, **fields)


@pytest.mark.parametrize("op", ["insert", "transaction"])
def test_unknown_text_and_bytes_fields_together_are_refused(api, channel, op):
    # Found by tests/fuzz: text and bytes keys do not sort together, and the refusal of a
    # transaction sorted them to name the first (a TypeError, an internal error).
    request = {"id": 9, "op": op, "type": "user", "doc": {}, "ops": [{"op": "insert", "type": "t", "doc": {}}]}
    request.update({"x": 1, b"x": 2})
    with pytest.raises(InvalidRequest, match=f"{op}: unknown field"):
        api.dispatch(request, channel)


@pytest.mark.parametrize(
    "op, fields, match",
    [
        ("insert", {"type": "User", "doc": {}}, "record type"),
        ("insert", {"type": 5, "doc": {}}, "record type"),
        ("insert", {"type": "user", "doc": [1]}, "must be a map"),
        ("insert", {"type": "user", "doc": {"a": 2**64}}, "64 bits"),
        ("insert", {"type": "user", "doc": {}, "near": -1}, "unsigned 64-bit"),
        ("insert", {"type": "user", "doc": {}, "near": "1"}, "unsigned 64-bit"),
        ("get", {"type": "user", "key": "1"}, "unsigned 64-bit"),
        ("get", {"type": "user", "key": True}, "unsigned 64-bit"),
        ("get", {"type": "user", "key": 2**64}, "unsigned 64-bit"),
        ("update", {"type": "user", "key": 1, "doc": {}, "if_version": -1}, "non-negative integer"),
        ("update", {"type": "user", "key": 1, "doc": {}, "if_version": "1"}, "non-negative integer"),
        ("delete", {"type": "user", "key": 1, "if_version": True}, "non-negative integer"),
        ("delete", {"type": "user", "key": 1, "if_version": 1.0}, "non-negative integer"),
        ("scan", {"type": "user", "where": [["a", 1]]}, "where is a map"),
        ("scan", {"type": "user", "where": {"a": {"!": 1}}}, "unknown filter operator"),
        ("scan", {"type": "user", "limit": "10"}, "limit is an integer"),
        ("scan", {"type": "user", "limit": True}, "limit is an integer"),
        ("scan", {"type": "user", "limit": 0}, "limit must be between"),
        ("scan", {"type": "user", "cursor": 5}, "cursor is text"),
        ("scan", {"type": "user", "cursor": "bad"}, "malformed cursor"),
    ],
)
def test_wrong_types_are_refused(api, channel, op, fields, match):
    refused(api, channel, InvalidRequest, match, op, **fields)


def test_none_counts_as_absent_for_optional_fields(api, channel):
    element = call(api, channel, "insert", type="user", doc={}, near=None)
    assert call(api, channel, "update", type="user", key=element, doc={"a": 1}, if_version=None) == 2
    assert call(api, channel, "scan", type="user", where=None, limit=None, cursor=None)["cursor"] is None


@pytest.mark.parametrize(
    "ops, match",
    [
        (None, "ops must be a non-empty list"),
        ([], "ops must be a non-empty list"),
        ({"op": "insert"}, "ops must be a non-empty list"),
        ([{"op": "insert", "type": "t", "doc": {}}] * (MAX_TRANSACTION_OPERATIONS + 1), "at most"),
        (["insert"], "operation 0 must be insert, update or delete"),
        ([{"op": "insert", "type": "t", "doc": {}}, {"op": "get", "type": "t", "key": 1}], "operation 1 must be"),
        ([{"op": "insert", "type": "t"}], "operation 0: insert: missing field 'doc'"),
        ([{"op": "update", "type": "t", "id": 1, "doc": {}}], "operation 0: update: unknown field 'id'"),
        ([{"op": "delete", "type": "T", "key": 1}], "operation 0: a record type"),
    ],
)
def test_malformed_transactions_are_refused(api, channel, ops, match):
    refused(api, channel, InvalidRequest, match, "transaction", ops=ops)


def test_a_transaction_without_ops_is_refused(api, channel):
    refused(api, channel, InvalidRequest, "ops must be a non-empty list", "transaction")


def test_parse_transaction_renames_key_to_id():
    assert parse_transaction([{"op": "delete", "type": "t", "key": 5, "if_version": 2}]) == [
        {"op": "delete", "type": "t", "id": 5, "if_version": 2}
    ]


# -- metrics ----------------------------------------------------------------------------------


def test_requests_are_counted_by_outcome(api, channel, metrics, clock):
    element = call(api, channel, "insert", type="user", doc={})
    call(api, channel, "get", type="user", key=element)
    refused(api, channel, NotFound, "", "get", type="user", key=element + 1)
    refused(api, channel, InvalidRequest, "", "get", type="user")
    refused(api, channel, Conflict, "", "update", type="user", key=element, doc={}, if_version=9)
    assert metrics.requests == {
        ("insert", "ok"): 1,
        ("get", "ok"): 1,
        ("get", "NotFound"): 1,
        ("get", "InvalidRequest"): 1,
        ("update", "Conflict"): 1,
    }
    assert sum(metrics.latencies["get"].counts) == 3


class OnlyGet:
    """An IQuery of which these tests call get alone."""

    insert = update = delete = scan = transaction = status = None


def test_a_failure_that_is_no_nodedb_error_counts_as_internal(clock, metrics):
    class Broken(OnlyGet):
        def get(self, record_type, element_id, consistency=None):
            return defer.fail(RuntimeError("bug"))

    api = RequestAPI(Broken(), lambda: HELLO, clock, metrics)
    channel = FakeChannel()
    api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION}, channel)
    failure_result_of(api.dispatch({"id": 2, "op": "get", "type": "t", "key": 1}, channel), RuntimeError)
    assert metrics.requests == {("get", "internal"): 1}


def test_latency_is_measured_on_the_clock(clock, metrics):
    slow = defer.Deferred()

    class Slow(OnlyGet):
        def get(self, record_type, element_id, consistency=None):
            return slow

    api = RequestAPI(Slow(), lambda: HELLO, clock, metrics)
    channel = FakeChannel()
    api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION}, channel)
    d = api.dispatch({"id": 2, "op": "get", "type": "t", "key": 1}, channel)
    clock.advance(0.3)
    slow.callback(["doc", 1])
    assert success_result_of(d) == ["doc", 1]
    assert metrics.latencies["get"].total == pytest.approx(0.3)
    assert "nodedb_requests_total" in metrics.render().decode()


def test_without_metrics_requests_are_served_the_same(clock):
    storage = MemoryStorage()
    success_result_of(storage.open())
    query = LocalQuery(storage, IdAllocator(LAYOUT, {0: 0}), clock, status=dict)
    api = RequestAPI(query, lambda: HELLO, clock)
    channel = FakeChannel()
    api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION}, channel)
    element = success_result_of(api.dispatch({"id": 2, "op": "insert", "type": "t", "doc": {"a": 1}}, channel))
    assert api.dispatch({"id": 3, "op": "get", "type": "t", "key": element}, channel) == [{"a": 1}, 1]
    with pytest.raises(NodeDBError):
        api.dispatch({"id": 4, "op": "get", "type": "t", "key": element + 1}, channel)


# -- roles and peer operations ----------------------------------------------------------------


def greeted(api, **hello):
    channel = FakeChannel()
    api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION, **hello}, channel)
    return channel


def test_a_second_hello_is_an_unknown_op(api, channel):
    refused(api, channel, InvalidRequest, "unknown op 'hello'", "hello", version=PROTOCOL_VERSION)


def test_peer_operations_are_served_to_peers_only(api):
    api.register("gossip.push", lambda request: {"pushed": request["n"]})
    peer = greeted(api, role="peer", host="h2")
    assert peer.role == "peer"
    assert api.dispatch({"id": 2, "op": "gossip.push", "n": 3}, peer) == {"pushed": 3}
    client = greeted(api, role="client")
    refused(api, client, InvalidRequest, "unknown op 'gossip.push'", "gossip.push", n=3)
    anonymous = greeted(api)
    assert anonymous.role == "client"
    refused(api, anonymous, InvalidRequest, "unknown op", "gossip.push", n=3)
    # Peers may make client requests too.
    assert api.dispatch({"id": 3, "op": "ping"}, peer) == "pong"


def test_an_op_is_registered_once(api):
    api.register("gossip.sync", lambda request: None)
    with pytest.raises(ValueError):
        api.register("gossip.sync", lambda request: None)
    with pytest.raises(ValueError):
        api.register("get", lambda request: None)


@pytest.mark.parametrize("role", ["admin", "", None, 1])
def test_unknown_roles_are_refused(api, role):
    channel = FakeChannel()
    with pytest.raises(ProtocolError, match="unknown role"):
        api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION, "role": role}, channel)
    assert not channel.greeted


def test_peers_are_admitted_by_the_node(clock):
    admitted = []

    def admit(request, channel):
        if request.get("cluster") != "c1":
            raise ProtocolError("wrong cluster")
        admitted.append(request["host"])

    storage = MemoryStorage()
    success_result_of(storage.open())
    query = LocalQuery(storage, IdAllocator(LAYOUT, {0: 0}), clock, status=dict)
    api = RequestAPI(query, lambda: HELLO, clock, admit_peer=admit)
    assert greeted(api, role="peer", host="h2", cluster="c1").greeted
    stranger = FakeChannel()
    with pytest.raises(ProtocolError, match="wrong cluster"):
        api.dispatch({"id": 1, "op": "hello", "version": PROTOCOL_VERSION, "role": "peer", "host": "h3", "cluster": "c9"}, stranger)
    assert not stranger.greeted
    # Clients are not judged as peers.
    assert greeted(api, role="client", cluster="c9").greeted
    assert admitted == ["h2"]
