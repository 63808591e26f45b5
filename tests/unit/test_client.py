"""nodedb.client.Client against a node's RequestAPI over in-memory connections, under a Clock."""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from nodedb.client import Client, NodeDBClientFactory, NodeDBProtocol, Page, connect
from nodedb.client._client import start_client
from nodedb.client._endpoints import LEARN_INTERVAL, client_endpoint, host_addresses
from nodedb.errors import Conflict, ConnectionLost, InvalidRequest, NotFound, Timeout, Unavailable
from nodedb.ids import IdAllocator, IdLayout
from nodedb.query.api import RequestAPI
from nodedb.query.local import LocalQuery
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.testing.network import MemoryEndpoint, memory_client, pump_all
from nodedb.wire.connection import ChannelFactory

LAYOUT = IdLayout()


class Node:
    """The request-serving part of a node, on a MemoryStorage; its status lists *hosts* (a
    list the test may change)."""

    def __init__(self, clock, name="h1", hosts=None):
        self.storage = MemoryStorage()
        success_result_of(self.storage.open())
        self.hosts = [] if hosts is None else hosts
        self.query = LocalQuery(self.storage, IdAllocator(LAYOUT, {0: 0, 1: 0}), clock, status=lambda: {"host": {"id": name}, "hosts": self.hosts})
        self.api = RequestAPI(self.query, lambda: {"version": 1, "host": name}, clock)
        self.held = None  # while set, requests of these ops are held here, unanswered
        self.factory = ChannelFactory(self.dispatch)

    def dispatch(self, request, channel):
        if self.held is not None and request.get("op") in self.held:
            d = defer.Deferred()
            self.held[request["op"]].append((d, request, channel))
            return d
        return self.api.dispatch(request, channel)

    def hold(self, *ops):
        self.held = {op: [] for op in ops}

    def release(self):
        held, self.held = self.held, None
        for pending in held.values():
            for d, request, channel in pending:
                defer.maybeDeferred(self.api.dispatch, request, channel).chainDeferred(d)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def node(clock):
    return Node(clock)


@pytest.fixture
def connected(node, clock):
    client, endpoints = memory_client(node.factory, clock, timeout=5.0)
    pump_all(endpoints)
    assert client.server == {"version": 1, "host": "h1"}
    yield client, endpoints
    d = client.close()
    assert pump_all(endpoints, clock, until=d)
    success_result_of(d)


def run(connected, clock, d):
    """Pump until *d* fires and return the Deferred."""
    _client, endpoints = connected
    assert pump_all(endpoints, clock, until=d), "no result"
    return d


def ok(connected, clock, d):
    return success_result_of(run(connected, clock, d))


def test_every_operation(connected, clock):
    client, _endpoints = connected
    element = ok(connected, clock, client.insert("user", {"name": "ada"}))
    assert element == LAYOUT.make(0, 1)
    assert ok(connected, clock, client.get("user", element)) == ({"name": "ada"}, 1)
    assert ok(connected, clock, client.update("user", element, {"name": "ada", "age": 36}, if_version=1)) == 2
    child = ok(connected, clock, client.insert("order", {"user": element}, near=element))
    assert LAYOUT.partition_of(child) == 0
    page = ok(connected, clock, client.scan("user", where={"age": {">=": 18}}, limit=10))
    assert page == Page([(element, {"name": "ada", "age": 36}, 2)], None)
    assert ok(connected, clock, client.delete("user", element, if_version=2)) == 4
    assert ok(connected, clock, client.status()) == {"host": {"id": "h1"}, "hosts": []}


def test_scan_pages_with_the_cursor(connected, clock):
    client, _endpoints = connected
    elements = [ok(connected, clock, client.insert("t", {"n": n})) for n in range(7)]
    seen, cursor = [], None
    while True:
        page = ok(connected, clock, client.scan("t", limit=3, cursor=cursor))
        assert all(isinstance(item, tuple) for item in page.items)
        seen.extend(item[0] for item in page.items)
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == sorted(elements)


def test_errors_arrive_as_their_classes(connected, clock):
    client, _endpoints = connected
    element = ok(connected, clock, client.insert("user", {}))
    failure_result_of(run(connected, clock, client.get("user", element + 1)), NotFound)
    failure_result_of(run(connected, clock, client.update("user", element, {}, if_version=9)), Conflict)
    failure_result_of(run(connected, clock, client.insert("Bad Type", {})), InvalidRequest)
    failure_result_of(run(connected, clock, client.scan("user", where={"a": {"~": 1}})), InvalidRequest)


def test_transactions(connected, clock):
    client, _endpoints = connected
    user = ok(connected, clock, client.insert("user", {"orders": 0}))
    tx = client.transaction()
    assert tx.insert("order", {"user": user}, near=user) is tx
    tx.update("user", user, {"orders": 1}, if_version=1).delete("user", user, if_version=3)
    order, updated, deleted = ok(connected, clock, tx.commit())
    assert (updated, deleted) == (3, 4)
    assert ok(connected, clock, client.get("order", order)) == ({"user": user}, 2)
    failure_result_of(tx.commit(), InvalidRequest)
    assert success_result_of(client.transaction().commit()) == []


def test_a_failed_transaction_applies_nothing(connected, clock):
    client, _endpoints = connected
    user = ok(connected, clock, client.insert("user", {}))
    tx = client.transaction().insert("user", {"new": True}).delete("user", user, if_version=7)
    failure_result_of(run(connected, clock, tx.commit()), Conflict)
    assert [item[0] for item in ok(connected, clock, client.scan("user")).items] == [user]


def test_a_request_without_a_reply_times_out(connected, node, clock):
    client, endpoints = connected
    node.hold("get")
    d = client.get("user", 1)
    pump_all(endpoints)
    clock.advance(4.9)
    no_result(d)
    clock.advance(0.2)
    failure_result_of(d, Timeout)


def test_reads_are_retried_after_the_connection_drops(connected, node, clock):
    client, endpoints = connected
    element = ok(connected, clock, client.insert("user", {"a": 1}))
    node.hold("get", "insert")
    read = client.get("user", element)
    write = client.insert("user", {"a": 2})
    pump_all(endpoints)
    endpoints[0].connections[-1].close()
    node.release()
    # The write may have been applied: it fails rather than being sent twice.
    failure_result_of(write, Unavailable)
    no_result(read)
    assert success_result_of(run(connected, clock, read)) == ({"a": 1}, 1)
    assert len(endpoints[0].connections) == 2


def test_calls_wait_for_a_connection_up_to_their_timeout(connected, clock):
    client, endpoints = connected
    endpoints[0].refuse = True
    endpoints[0].connections[-1].close()
    d = client.get("user", 1)
    for _ in range(40):
        clock.advance(0.1)
    no_result(d)
    clock.advance(1.1)
    error = failure_result_of(d, Unavailable).value
    assert "cannot reach a node" in str(error)


def test_the_client_fails_over_to_the_next_node(clock):
    first, second = Node(clock, "first"), Node(clock, "second")
    client, endpoints = memory_client([first.factory, second.factory], clock)
    pump_all(endpoints)
    assert client.server["host"] == "first"
    endpoints[0].refuse = True
    endpoints[0].connections[-1].close()
    d = client.status()
    assert pump_all(endpoints, clock, until=d)
    assert success_result_of(d)["host"]["id"] == "second"
    # When the second node goes away, the client goes back to the first.
    endpoints[0].refuse = False
    endpoints[1].refuse = True
    endpoints[1].connections[-1].close()
    d = client.status()
    assert pump_all(endpoints, clock, until=d)
    assert success_result_of(d)["host"]["id"] == "first"
    d = client.close()
    assert pump_all(endpoints, clock, until=d)


def test_a_node_that_refuses_the_hello_is_not_used(clock):
    class OldNode(Node):
        def dispatch(self, request, channel):
            if request["op"] == "hello":
                from nodedb.errors import ProtocolError

                raise ProtocolError("protocol version 1 is not supported; this node speaks 2")
            return super().dispatch(request, channel)

    old, good = OldNode(clock, "old"), Node(clock, "good")
    client, endpoints = memory_client([old.factory, good.factory], clock)
    pump_all(endpoints, clock, until=defer.Deferred(), limit=5)
    assert client.server["host"] == "good"
    assert client._connection.last_error.startswith("127.0.0.1:7400: protocol version 1 is not supported")
    d = client.close()
    assert pump_all(endpoints, clock, until=d)


def test_close_closes_the_connection(connected, clock):
    client, endpoints = connected
    d = client.close()
    assert pump_all(endpoints, clock, until=d)
    assert endpoints[0].open_connections() == []
    failure_result_of(run(connected, clock, client.get("t", 1)), Unavailable)


def test_client_is_built_from_a_connection():
    class FakeConnection:
        server = {"host": "x"}
        clock = Clock()

        def call(self, op, arguments, timeout):
            self.sent = (op, arguments, timeout)
            return defer.succeed({"items": [[1, {"a": 1}, 3]], "cursor": "c"})

    connection = FakeConnection()
    client = Client(connection, timeout=2.5, heartbeat=None)
    assert client.server == {"host": "x"}
    page = success_result_of(client.scan("t", where={"a": 1}))
    assert page == Page([(1, {"a": 1}, 3)], "c")
    assert connection.sent == ("scan", {"type": "t", "where": {"a": 1}}, 2.5)


@pytest.mark.parametrize("bad", [2**64, {1, 2}, float, object()])
def test_a_document_the_node_would_refuse_fails_alone_before_it_is_sent(connected, clock, bad):
    client, _endpoints = connected
    before = client.insert("user", {"n": 1})
    refused = client.insert("user", {"n": bad})
    updated = client.update("user", 1, {"n": bad})
    tx = client.transaction().insert("user", {"n": 2}).insert("user", {"n": bad})
    failure_result_of(refused, InvalidRequest)
    failure_result_of(updated, InvalidRequest)
    assert "operation 1" in str(failure_result_of(tx.commit(), InvalidRequest).value)
    after = client.insert("user", {"n": 3})
    # The connection stayed up: the requests around the refused ones went through.
    assert ok(connected, clock, before) != ok(connected, clock, after)


def test_a_client_drops_a_connection_that_stops_answering_pings():
    class FrozenConnection:
        clock = Clock()
        beats = 0

        def beat(self, interval, report, op="ping"):
            self.beats += 1
            report(None, None)

    connection = FrozenConnection()
    client = Client(connection, heartbeat=1.0)
    for _ in range(3):
        connection.clock.advance(1.0)
    assert connection.beats == 3  # PersistentConnection.beat drops the connection after three misses
    client._heartbeat.stop()


# -- NodeDBProtocol: one connection, for Twisted programs that connect themselves ----------


def protocol_on(server_factory, clock, **options):
    """A NodeDBProtocol connected in memory to *server_factory*: ``(protocol, endpoint)``."""
    endpoint = MemoryEndpoint(server_factory)
    protocol = success_result_of(endpoint.connect(NodeDBClientFactory(clock, **options)))
    return protocol, endpoint


def test_the_protocol_serves_every_operation_on_one_connection(node, clock):
    protocol, endpoint = protocol_on(node.factory, clock)
    assert isinstance(protocol, NodeDBProtocol)
    ready = protocol.when_ready()
    early = protocol.insert("user", {"name": "ada"})  # waits for the handshake
    no_result(ready)
    no_result(early)
    pump_all([endpoint])
    assert success_result_of(ready) is protocol
    assert protocol.server == {"version": 1, "host": "h1"}
    element = success_result_of(early)

    def done(d):
        pump_all([endpoint])
        return success_result_of(d)

    assert done(protocol.get("user", element)) == ({"name": "ada"}, 1)
    assert done(protocol.update("user", element, {"name": "ada", "age": 36}, if_version=1)) == 2
    assert done(protocol.scan("user", limit=10)) == Page([(element, {"name": "ada", "age": 36}, 2)], None)
    order, version = done(protocol.transaction().insert("order", {"user": element}, near=element).delete("user", element).commit())
    assert LAYOUT.partition_of(order) == 0 and version == 4
    assert done(protocol.status()) == {"host": {"id": "h1"}, "hosts": []}
    failure_result_of(protocol.insert("user", {"n": 2**64}), InvalidRequest)  # never sent
    closed = protocol.close()
    pump_all([endpoint])
    assert success_result_of(closed) is None
    assert endpoint.open_connections() == []
    assert clock.getDelayedCalls() == []  # its deadline sweeper stopped with the connection
    failure_result_of(protocol.get("user", element), Unavailable)
    assert success_result_of(protocol.close()) is None


def test_the_protocol_reports_a_refused_handshake(clock):
    protocol, endpoint = protocol_on(ChannelFactory(None), clock)  # a peer that serves nothing
    ready = protocol.when_ready()
    waiting = protocol.get("user", 1)
    pump_all([endpoint])
    assert "serves no requests" in str(failure_result_of(ready, InvalidRequest).value)
    failure_result_of(waiting, InvalidRequest)
    failure_result_of(protocol.when_ready(), InvalidRequest)
    assert endpoint.open_connections() == []  # the protocol closed it


def test_protocol_requests_time_out_and_fail_when_the_connection_drops(node, clock):
    protocol, endpoint = protocol_on(node.factory, clock, timeout=5.0)
    pump_all([endpoint])
    node.hold("get", "insert")
    late = protocol.get("user", 1)
    pump_all([endpoint])
    clock.advance(4.9)
    no_result(late)
    clock.advance(0.2)
    failure_result_of(late, Timeout)
    in_flight = protocol.insert("user", {})
    pump_all([endpoint])
    endpoint.connections[-1].close()
    failure_result_of(in_flight, ConnectionLost)  # it does not retry: one connection, no more
    assert len(endpoint.connections) == 1


# -- connect: addresses, endpoint descriptions and endpoint objects -----------------------


@pytest.mark.parametrize(
    "where, kind",
    [
        ("127.0.0.1:7400", HostnameEndpoint),
        ("db-1.example:7400", HostnameEndpoint),
        ("[::1]:7400", HostnameEndpoint),
        ("tcp:db-1.example:7400", TCP4ClientEndpoint),
        ("unix:/run/nodedb/client.sock", UNIXClientEndpoint),
    ],
)
def test_connect_takes_addresses_and_endpoint_descriptions(where, kind):
    name, endpoint = client_endpoint(MemoryReactorClock(), where)
    assert name == where
    assert type(endpoint) is kind


def test_a_tls_description_is_an_endpoint_and_an_endpoint_object_is_used_as_it_is():
    _name, endpoint = client_endpoint(MemoryReactorClock(), "tls:db-1.example:7400")
    assert IStreamClientEndpoint.providedBy(endpoint) and not isinstance(endpoint, HostnameEndpoint)
    given = MemoryEndpoint(ChannelFactory(None))
    assert client_endpoint(MemoryReactorClock(), given)[1] is given


@pytest.mark.parametrize("bad", ["nonsense", "bogus:a:1:2", "tcp:onlyhost", 7400, None])
def test_connect_refuses_what_is_neither_an_address_nor_an_endpoint(bad):
    error = failure_result_of(connect(MemoryReactorClock(), [bad]), InvalidRequest).value
    assert "not a" in str(error)


def test_connect_through_an_endpoint_object(node):
    reactor = MemoryReactorClock()
    endpoint = MemoryEndpoint(node.factory)
    d = connect(reactor, endpoint, timeout=5.0)
    pump_all([endpoint])
    client = success_result_of(d)
    assert client.server["host"] == "h1"
    d = client.status()
    pump_all([endpoint])
    assert success_result_of(d)["host"] == {"id": "h1"}
    d = client.close()
    assert pump_all([endpoint], reactor, until=d)


# -- learning the cluster's hosts, and failing over to them -------------------------------


class CountingEndpoint(MemoryEndpoint):
    """A MemoryEndpoint that counts the connection attempts made to it."""

    attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return super().connect(factory)


def cluster_of(clock, count):
    """*count* Nodes whose status lists all of them: ``(nodes, {address: endpoint})``."""
    addresses = [f"127.0.0.1:{7400 + index}" for index in range(count)]
    listed = [{"id": f"h{index}", "address": address} for index, address in enumerate(addresses)]
    nodes = [Node(clock, f"h{index}", listed) for index in range(count)]
    endpoints = {
        address: CountingEndpoint(n.factory, IPv4Address("TCP", "127.0.0.1", 7400 + index))
        for index, (address, n) in enumerate(zip(addresses, nodes))
    }
    return nodes, endpoints


def answered_by(client, endpoints, clock):
    d = client.status()
    assert pump_all(endpoints.values(), clock, until=d)
    return success_result_of(d)["host"]["id"]


def go_away(endpoint):
    endpoint.refuse = True
    for pair in endpoint.open_connections():
        pair.close()


def test_the_client_learns_the_other_hosts_and_fails_over_to_them(clock):
    _nodes, endpoints = cluster_of(clock, 3)
    first, second, third = endpoints
    client = start_client(clock, [(first, endpoints[first])], endpoint_for=endpoints.__getitem__)
    pump_all(endpoints.values())
    assert client.server["host"] == "h0"
    go_away(endpoints[first])
    assert answered_by(client, endpoints, clock) == "h1"
    # The given address is not learned a second time: the next attempt went to the second.
    assert [e.attempts for e in endpoints.values()] == [1, 1, 0]
    go_away(endpoints[second])
    assert answered_by(client, endpoints, clock) == "h2"
    d = client.close()
    assert pump_all(endpoints.values(), clock, until=d)
    assert clock.getDelayedCalls() == []


def test_without_learning_the_client_knows_only_its_own_list(clock):
    _nodes, endpoints = cluster_of(clock, 2)
    first, _second = endpoints
    client = start_client(clock, [(first, endpoints[first])], timeout=2.0)
    pump_all(endpoints.values())
    go_away(endpoints[first])
    d = client.status()
    assert pump_all(endpoints.values(), clock, until=d)
    failure_result_of(d, Unavailable)
    d = client.close()
    assert pump_all(endpoints.values(), clock, until=d)


def test_the_client_learns_of_a_host_that_joined_after_it_connected(clock):
    nodes, endpoints = cluster_of(clock, 2)
    first, second = endpoints
    listed = nodes[0].hosts
    joined = listed.pop()  # the second host is not in the cluster yet
    client = start_client(clock, [(first, endpoints[first])], endpoint_for=endpoints.__getitem__)
    pump_all(endpoints.values())
    listed.append(joined)
    for _ in range(int(LEARN_INTERVAL / 0.5) + 1):
        clock.advance(0.5)
        pump_all(endpoints.values())
    assert endpoints[second].connections == []
    go_away(endpoints[first])
    assert answered_by(client, endpoints, clock) == "h1"
    d = client.close()
    assert pump_all(endpoints.values(), clock, until=d)


def test_a_node_that_cannot_list_the_hosts_leaves_the_client_working(node, clock):
    node.hold("status")  # its answer never comes: the client gives up on it quietly
    endpoint = MemoryEndpoint(node.factory)
    client = start_client(clock, [("127.0.0.1:7400", endpoint)], endpoint_for=lambda address: pytest.fail(address))
    pump_all([endpoint], clock, until=defer.Deferred(), limit=200)
    d = client.insert("user", {})
    assert pump_all([endpoint], clock, until=d)
    assert success_result_of(d) == LAYOUT.make(0, 1)
    d = client.close()
    assert pump_all([endpoint], clock, until=d)


@pytest.mark.parametrize(
    "status, addresses",
    [
        ({"hosts": [{"address": "10.0.0.1:7400"}, {"address": "[::1]:7401"}]}, ["10.0.0.1:7400", "[::1]:7401"]),
        ({"hosts": [{"address": None}, {"id": "x"}, "10.0.0.2:7400", {"address": "tls:h:1"}, {"address": 7}]}, []),
        ({"hosts": "10.0.0.1:7400"}, []),
        ("status", []),
        (None, []),
    ],
)
def test_only_well_formed_host_addresses_are_learned(status, addresses):
    assert host_addresses(status) == addresses
