"""The partition-aware client under a Clock, against fake hosts in memory: which host each
request goes to, the map asked for again (periodically, and at once after a stale answer),
the any-host connection when a primary cannot serve, and the map's own checks."""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from nodedb import errors
from nodedb.client._client import start_client
from nodedb.client._routing import AVOID_FOR, INSERTS_PER_TURN, MAP_INTERVAL, PartitionMap
from nodedb.testing import failure_result_of, success_result_of
from nodedb.testing.network import MemoryEndpoint, pump_all
from nodedb.wire.connection import ChannelFactory

BITS = 16
SHIFT = 64 - BITS
CLUSTER = "c0ffee"


def key(partition, sequence=1):
    return (partition << SHIFT) | sequence


def wire_map(version, primaries, addresses):
    """A ``map`` reply: partition *p* led by ``primaries[p]`` (a host id, or None)."""
    hosts = sorted(addresses)
    return {
        "version": version,
        "cluster": CLUSTER,
        "partition_bits": BITS,
        "hosts": [[h, addresses[h]] for h in hosts],
        "partitions": [[] if h is None else [hosts.index(h)] for h in primaries],
    }


class FakeHost:
    """Answers hello as host *name*, ``map`` from the cluster's current map, and every
    other request with what it is, recording each one: ``served`` lists ``(op, arguments)``."""

    def __init__(self, name, cluster):
        self.name = name
        self.cluster = cluster
        self.served = []
        self.refuse_with = None  # an error to answer data requests with
        self.unanswered = ()  # ops it answers only when the test fires their Deferreds
        self.held = []
        self.factory = ChannelFactory(self.dispatch)

    def dispatch(self, request, channel):
        op = request["op"]
        if op == "hello":
            channel.accept_hello(request.get("role", "client"))
            return {"version": 1, "host": self.name, "cluster": self.cluster.id}
        arguments = {k: v for k, v in request.items() if k not in ("id", "op")}
        self.served.append((op, arguments))
        if op == "map":
            if self.cluster.serves_map is False:
                raise errors.InvalidRequest("unknown op 'map'")
            current = self.cluster.map
            return {"version": current["version"]} if arguments.get("since") == current["version"] else current
        if op == "ping":
            return "pong"
        if self.refuse_with is not None:
            raise self.refuse_with
        if op in self.unanswered:
            d = defer.Deferred()
            self.held.append(d)
            return d
        return [{"served by": self.name}, 1] if op == "get" else self.name

    def ops(self, *names):
        return [op for op, _arguments in self.served if op in names]


class FakeCluster:
    """Hosts h0, h1, h2 at 127.0.0.1:7400..7402; partition p is led by ``h{p % 3}``."""

    def __init__(self, clock, count=3):
        self.clock = clock
        self.id = CLUSTER
        self.serves_map = True
        self.addresses = {f"h{i}": f"127.0.0.1:{7400 + i}" for i in range(count)}
        self.hosts = {name: FakeHost(name, self) for name in self.addresses}
        self.endpoints = {
            address: MemoryEndpoint(self.hosts[name].factory, IPv4Address("TCP", "127.0.0.1", 7400 + i))
            for i, (name, address) in enumerate(self.addresses.items())
        }
        self.map = wire_map(1, [f"h{p % count}" for p in range(6)], self.addresses)

    def client(self, partition_aware=True, given="h0"):
        address = self.addresses[given]
        named = [(address, self.endpoints[address])]
        return start_client(self.clock, named, self.endpoints.__getitem__, timeout=5.0, partition_aware=partition_aware)

    def pump(self, until=None):
        assert pump_all(self.endpoints.values(), self.clock, until=until)
        return until

    def settle(self, seconds=0.5):
        """Let the clock run *seconds*, pumping: connections made, answers delivered."""
        for _ in range(round(seconds / 0.05)):
            self.clock.advance(0.05)
            pump_all(self.endpoints.values())

    def moved(self, version, primaries):
        self.map = wire_map(version, primaries, self.addresses)

    def down(self, name):
        endpoint = self.endpoints[self.addresses[name]]
        endpoint.refuse = True
        for pair in endpoint.open_connections():
            pair.close()

    def close(self, client):
        d = client.close()
        self.pump(until=d)
        assert self.clock.getDelayedCalls() == []


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cluster(clock):
    return FakeCluster(clock)


def answer(cluster, d):
    return success_result_of(cluster.pump(until=d))


def test_requests_on_an_element_go_to_its_primary(cluster):
    client = cluster.client()
    cluster.settle()
    assert client.partition_map.version == 1
    h0, h1, h2 = cluster.hosts.values()
    # The first request for h1's partition opens the connection to h1 and goes through h0.
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h0"}, 1)
    cluster.settle()
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h1"}, 1)
    answer(cluster, client.update("t", key(4), {}))
    answer(cluster, client.delete("t", key(4)))
    answer(cluster, client.insert("t", {}, near=key(4)))
    assert [op for op, _ in h1.served if op not in ("map", "ping")] == ["get", "update", "delete", "insert"]
    # A replica read, a scan and status go through the any-host connection.
    answer(cluster, client.get("t", key(2), consistency="replica"))
    statuses = len(h0.ops("status"))  # the client asks for it too, to learn the hosts
    answer(cluster, client.status())
    assert h0.ops("get") == ["get", "get"] and len(h0.ops("status")) == statuses + 1
    assert h2.ops("get") == []
    cluster.close(client)


def test_inserts_stay_with_a_primary_connected_to_and_transactions_go_to_their_home(cluster):
    client = cluster.client()
    cluster.settle()
    served = {answer(cluster, client.insert("t", {})) for _ in range(INSERTS_PER_TURN * 3)}
    assert served == {"h0"}  # the any-host connection's host leads partitions: no hop
    answer(cluster, client.get("t", key(5)))  # opens the connection to h2
    cluster.settle()
    home = client.transaction().insert("t", {}).update("t", key(5), {}).insert("t", {}, near=key(1))
    assert answer(cluster, home.commit()) == "h2"
    cluster.close(client)


def test_the_map_is_asked_for_again_each_interval_and_a_move_is_followed(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, _h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    asked = len(h0.ops("map"))
    cluster.settle(MAP_INTERVAL * 3)
    since = [arguments for op, arguments in h0.served if op == "map"][asked:]
    assert len(since) >= 2 and all(arguments == {"since": 1} for arguments in since)
    # Partition 1 moves to h2: the next answer tells, and h1 leads nothing any more.
    cluster.moved(2, ["h0", "h2", "h2", "h0", "h2", "h2"])
    cluster.settle(MAP_INTERVAL)
    assert client.partition_map.version == 2 and client.partition_map.primaries == ("h0", "h2")
    assert cluster.endpoints[cluster.addresses["h1"]].open_connections() == []
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h2"}, 1)
    cluster.close(client)


def test_a_connection_to_a_host_no_longer_a_primary_is_closed_once_its_requests_are_answered(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, _h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    h1.unanswered = ("update",)
    write = client.update("t", key(1), {})
    pump_all(cluster.endpoints.values())
    cluster.moved(2, ["h0", "h2", "h2", "h0", "h2", "h2"])
    cluster.settle(MAP_INTERVAL * 2)
    assert client.partition_map.version == 2
    [held] = h1.held
    assert len(cluster.endpoints[cluster.addresses["h1"]].open_connections()) == 1
    held.callback("h1")
    assert answer(cluster, write) == "h1"  # answered, not failed by the move
    cluster.settle(MAP_INTERVAL)
    assert cluster.endpoints[cluster.addresses["h1"]].open_connections() == []
    cluster.close(client)


def test_a_stale_answer_sends_the_retry_through_any_host_and_asks_for_the_map_at_once(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, _h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    h1.refuse_with = errors.Unavailable("partition 1 is changing primary")
    asked = len(h0.ops("map"))
    d = client.get("t", key(1))
    pump_all(cluster.endpoints.values())
    assert len(h0.ops("map")) == asked + 1  # not waiting for the next interval
    assert answer(cluster, d) == ({"served by": "h0"}, 1)
    assert h1.ops("get") == ["get"]
    # For a second, h1's requests go through h0; then h1 is tried again, and a write it
    # refuses is retried through h0 too.
    cluster.settle(AVOID_FOR - 0.2)
    assert answer(cluster, client.update("t", key(1), {})) == "h0"
    assert h1.ops("update") == []
    cluster.settle(0.2)
    assert answer(cluster, client.update("t", key(1), {})) == "h0"
    assert h1.ops("update") == ["update"]
    h1.refuse_with = None
    cluster.settle(AVOID_FOR)
    assert answer(cluster, client.update("t", key(1), {})) == "h1"
    cluster.close(client)


def test_a_newer_map_ends_the_detour_at_once(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    answer(cluster, client.get("t", key(2)))
    cluster.settle()
    h1.refuse_with = errors.Unavailable("not the primary of partition 1")
    cluster.moved(2, ["h0", "h2", "h2", "h0", "h1", "h2"])
    # Refused by h1, asked for the map at once: the retry goes straight to the new primary.
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h2"}, 1)
    assert client.partition_map.version == 2 and h1.ops("get") == ["get"]
    h1.refuse_with = None
    answer(cluster, client.get("t", key(4)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(4))) == ({"served by": "h1"}, 1)
    cluster.close(client)


def test_a_primary_that_cannot_be_reached_is_gone_around(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, _h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h1"}, 1)
    cluster.down("h1")
    for sequence in range(1, 4):
        assert answer(cluster, client.get("t", key(1, sequence))) == ({"served by": "h0"}, 1)
        assert answer(cluster, client.update("t", key(1, sequence), {})) == "h0"
    assert h1.ops("get") == ["get"]
    cluster.close(client)


def test_a_write_lost_with_the_primary_connection_is_not_sent_again(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, _h2 = cluster.hosts.values()
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    h1.unanswered = ("update", "get")
    write = client.update("t", key(1), {})
    read = client.get("t", key(1))
    pump_all(cluster.endpoints.values())
    cluster.down("h1")
    failure_result_of(write, errors.ConnectionLost)  # it may have been applied
    assert answer(cluster, read) == ({"served by": "h0"}, 1)
    assert h0.ops("update") == []
    cluster.close(client)


def test_a_host_that_is_not_the_one_the_map_names_is_not_used(cluster):
    client = cluster.client()
    cluster.settle()
    h0, h1, h2 = cluster.hosts.values()
    h1.name = "someone-else"
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h0"}, 1)
    h2.cluster = FakeCluster(cluster.clock)
    h2.cluster.id = "another-cluster"
    answer(cluster, client.get("t", key(2)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(2))) == ({"served by": "h0"}, 1)
    assert h1.ops("get") == h2.ops("get") == []
    cluster.close(client)


def test_a_cluster_without_maps_is_served_through_one_host(cluster):
    cluster.serves_map = False
    client = cluster.client()
    cluster.settle(MAP_INTERVAL * 3)
    h0 = cluster.hosts["h0"]
    assert client.partition_map is None
    assert h0.ops("map") == ["map"]  # asked once on the connection, not again
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h0"}, 1)
    cluster.close(client)


def test_a_client_that_is_not_partition_aware_never_asks(cluster):
    client = cluster.client(partition_aware=False)
    cluster.settle(MAP_INTERVAL * 3)
    assert cluster.hosts["h0"].ops("map") == []
    assert client.partition_map is None
    answer(cluster, client.get("t", key(1)))
    cluster.settle()
    assert answer(cluster, client.get("t", key(1))) == ({"served by": "h0"}, 1)
    cluster.close(client)


# -- the map itself ---------------------------------------------------------------------------


ADDRESSES = {"a": "10.0.0.1:7400", "b": "10.0.0.2:7400", "c": None}


@pytest.fixture
def routing():
    return PartitionMap.from_wire(wire_map(7, ["a", "b", None, "c", "a"], ADDRESSES))


def test_the_map_reads_the_partition_from_the_ids_high_bits(routing):
    assert routing.primaries == ("a", "b")  # c has no address to dial
    assert [routing.primary_of(key(p)) for p in range(5)] == ["a", "b", None, "c", "a"]
    assert routing.primary_of(key(1, (1 << SHIFT) - 1)) == "b"
    for not_routed in (key(5), -1, 1 << 64, "1", 1.0, True, None):
        assert routing.primary_of(not_routed) is None


@pytest.mark.parametrize(
    "op, arguments, host",
    [
        ("get", {"type": "t", "key": key(1)}, "b"),
        ("get", {"type": "t", "key": key(1), "consistency": "linearizable"}, "b"),
        ("get", {"type": "t", "key": key(1), "consistency": "replica"}, None),
        ("update", {"type": "t", "key": key(4), "doc": {}}, "a"),
        ("delete", {"type": "t", "key": key(2)}, None),
        ("insert", {"type": "t", "doc": {}, "near": key(1)}, "b"),
        ("transaction", {"ops": [{"op": "insert", "type": "t", "doc": {}}, {"op": "delete", "type": "t", "key": key(1)}]}, "b"),
        ("transaction", {"ops": [{"op": "insert", "type": "t", "doc": {}, "near": key(4)}]}, "a"),
        ("scan", {"type": "t"}, None),
        ("status", None, None),
    ],
)
def test_each_request_has_its_target(routing, op, arguments, host):
    assert routing.target(op, arguments, iter([0])) == host


def test_plain_inserts_take_the_primaries_in_turn(routing):
    turn = iter(range(INSERTS_PER_TURN * 3))
    targets = [routing.target("insert", {"type": "t", "doc": {}}, turn, own="z") for _ in range(INSERTS_PER_TURN * 3)]
    assert targets == ["a"] * INSERTS_PER_TURN + ["b"] * INSERTS_PER_TURN + ["a"] * INSERTS_PER_TURN


def test_plain_inserts_stay_with_the_connected_host_when_it_is_a_primary(routing):
    # It takes them itself, with no hop; taking the primaries in turns made every client move
    # from primary to primary together.
    turn = iter(range(INSERTS_PER_TURN * 3))
    targets = {routing.target("insert", {"type": "t", "doc": {}}, turn, own="b") for _ in range(INSERTS_PER_TURN * 3)}
    assert targets == {"b"}
    assert routing.target("transaction", {"ops": [{"op": "insert", "type": "t", "doc": {}}]}, turn, own="b") == "b"


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("version"),
        lambda m: m.update(version="7"),
        lambda m: m.update(cluster=None),
        lambda m: m.update(partition_bits=0),
        lambda m: m.update(partition_bits=33),
        lambda m: m.update(hosts={"a": "x"}),
        lambda m: m.update(hosts=[["a"]]),
        lambda m: m.update(hosts=[["a", 7]]),
        lambda m: m.update(partitions=[[0], [9]]),
        lambda m: m.update(partitions=[[0], ["a"]]),
        lambda m: m.update(partitions=[0]),
        lambda m: m.update(partition_bits=1, partitions=[[0], [0], [0]]),
    ],
)
def test_a_malformed_map_is_refused(change):
    reply = wire_map(7, ["a", "b"], ADDRESSES)
    change(reply)
    with pytest.raises(ValueError):
        PartitionMap.from_wire(reply)
    with pytest.raises(ValueError):
        PartitionMap.from_wire([reply])
