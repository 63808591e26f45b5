"""nodedb.client.Client against a node's RequestAPI over in-memory connections, under a Clock."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nodedb.client import Client, Page
from nodedb.errors import Conflict, InvalidRequest, NotFound, Timeout, Unavailable
from nodedb.ids import IdAllocator, IdLayout
from nodedb.query.api import RequestAPI
from nodedb.query.local import LocalQuery
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.testing.network import memory_client, pump_all
from nodedb.wire.connection import ChannelFactory

LAYOUT = IdLayout()


class Node:
    """The request-serving part of a node, on a MemoryStorage."""

    def __init__(self, clock, name="h1"):
        self.storage = MemoryStorage()
        success_result_of(self.storage.open())
        self.query = LocalQuery(self.storage, IdAllocator(LAYOUT, {0: 0, 1: 0}), clock, status=lambda: {"host": {"id": name}, "hosts": []})
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
