"""The behaviour every :class:`nodedb.interfaces.IPeerTransport` must show, as pytest tests.

A transport's test module subclasses :class:`PeerTransportContract` and says how to build
one that listens on an address of its own::

    from twisted.internet import reactor
    from nodedb.testing.transport_contract import PeerTransportContract

    class TestMyTransport(PeerTransportContract):
        def make_transport(self, hello, on_heartbeat, heartbeat_interval, heartbeat_op):
            return MyTransport(reactor, "tcp:0:interface=127.0.0.1", hello, ...)

Each test starts two or three transports (as children of a parent service, as a node does),
lets them call each other, and stops them at the end. Tests are coroutines run by
pytest-twisted inside the running reactor, over real connections; the timeouts they wait
for are fractions of a second. The other hooks, :meth:`~PeerTransportContract.address_of`
and :meth:`~PeerTransportContract.unused_address`, suit TCP transports; override them for
transports whose addresses are not the ``host:port`` of their listening port.

See docs/plugins.md.
"""

import socket

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from nodedb import errors
from nodedb.interfaces import IPeerTransport
from nodedb.testing import failure_of
from nodedb.wire.address import format_address

#: The request the transports under test send as their heartbeat.
HEARTBEAT_OP = "contract.ping"
#: How long a test waits for something that should happen at once (seconds).
PATIENCE = 5.0


class Host:
    """One transport under test and what was done to it: the requests it served (each a
    ``(request, channel)`` pair) and the heartbeats it reported."""

    def __init__(self, name):
        self.name = name
        self.transport = None
        self.address = None
        self.parent = MultiService()
        self.served = []
        self.heartbeats = []
        #: op -> ``handler(request)``; a test adds its own.
        self.handlers = {
            "hello": lambda request: {"host": name},
            "echo": lambda request: {k: v for k, v in request.items() if k not in ("id", "op")},
            HEARTBEAT_OP: lambda request: {"pong": name},
        }

    def hello(self):
        return {"role": "peer", "host": self.name}

    def dispatch(self, request, channel):
        self.served.append((request, channel))
        handler = self.handlers.get(request.get("op"))
        if handler is None:
            raise errors.InvalidRequest(f"unknown op {request.get('op')!r}")
        return handler(request)

    def served_ops(self):
        return [request["op"] for request, _channel in self.served if request["op"] != HEARTBEAT_OP]


async def wait_for(condition, what, patience=PATIENCE):
    """Let the reactor run until ``condition()`` is true.

    :raise AssertionError: naming *what*, if *patience* seconds pass first.
    """
    from twisted.internet import reactor

    deadline = reactor.seconds() + patience
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"waited {patience} s for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


class PeerTransportContract:
    """Tests every peer transport must pass; subclass it and define :meth:`make_transport`."""

    #: Seconds between heartbeats of the transports under test.
    heartbeat_interval = 0.1

    def make_transport(self, hello, on_heartbeat, heartbeat_interval, heartbeat_op):
        """:return: a new, unstarted transport that listens on an address of its own (files,
        if any, under ``self.tmp_path``), with the arguments a node gives its transport
        plugin (:meth:`nodedb.interfaces.IPeerTransportPlugin.make_transport`)."""
        raise NotImplementedError("a transport contract test class must define make_transport()")

    def address_of(self, transport, port):
        """:return: the address at which other transports reach *transport*, listening on
        *port* (what its ``listen()`` fired with); by default the port's ``host:port``."""
        address = port.getHost()
        return format_address(address.host, address.port)

    def unused_address(self):
        """:return: an address at which nothing listens; by default a loopback TCP port that
        was free a moment ago."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return format_address(*probe.getsockname())

    @pytest.fixture
    def hosts(self, tmp_path):
        """Starts :class:`Host` objects for a test (``await self.start(name)``), and stops
        every one still running at the end."""
        self.tmp_path = tmp_path
        self._hosts = []
        yield self
        for host in reversed(self._hosts):
            if host.parent.running:
                pytest_twisted.blockon(defer.maybeDeferred(host.parent.stopService))

    async def start(self, name):
        """A :class:`Host` whose transport serves, listens and runs under a parent service."""
        host = Host(name)
        host.transport = self.make_transport(
            host.hello,
            lambda address, rtt, reply: host.heartbeats.append((address, rtt, reply)),
            self.heartbeat_interval,
            HEARTBEAT_OP,
        )
        host.transport.setName("transport")
        host.transport.serve(host.dispatch)
        host.transport.setServiceParent(host.parent)
        host.parent.startService()
        self._hosts.append(host)
        host.address = self.address_of(host.transport, await host.transport.listen())
        return host

    # -- the interface ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_provides_the_interface(self, hosts):
        a = await self.start("a")
        assert verifyObject(IPeerTransport, a.transport)
        assert a.transport.running and a.parent.getServiceNamed("transport") is a.transport
        assert a.transport.guard is None or isinstance(a.transport.guard.status(), dict)

    # -- calls ------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_a_call_is_served_by_the_other_end_and_answered(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        reply = await a.transport.call(b.address, "echo", {"x": [1, 2], "text": "é"}, PATIENCE)
        assert reply == {"x": [1, 2], "text": "é"}
        request, _channel = b.served[-1]
        assert (request["op"], request["x"], request["text"]) == ("echo", [1, 2], "é")

    @pytest_twisted.ensureDeferred
    async def test_a_connection_opens_with_hello_and_its_handshake(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        assert b.served_ops() == ["hello", "echo", "echo"]
        hello, first_channel = b.served[0]
        assert {k: hello[k] for k in a.hello()} == a.hello()
        assert all(channel is first_channel for _request, channel in b.served), "one connection, kept up"

    @pytest_twisted.ensureDeferred
    async def test_calls_go_both_ways(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        assert await a.transport.call(b.address, "echo", {"to": "b"}, PATIENCE) == {"to": "b"}
        assert await b.transport.call(a.address, "echo", {"to": "a"}, PATIENCE) == {"to": "a"}

    @pytest_twisted.ensureDeferred
    async def test_a_deferred_reply_is_waited_for_and_calls_are_answered_each_with_its_own(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        pending = []

        def later(request):
            d = defer.Deferred()
            pending.append((d, request["n"]))
            return d

        b.handlers["later"] = later
        calls = [a.transport.call(b.address, "later", {"n": n}, PATIENCE) for n in range(5)]
        await wait_for(lambda: len(pending) == 5, "five calls to arrive")
        for d, n in reversed(pending):  # answered in the opposite order
            d.callback(n * 10)
        assert await defer.gatherResults(calls) == [0, 10, 20, 30, 40]

    @pytest_twisted.ensureDeferred
    async def test_the_error_a_handler_raises_reaches_the_caller(self, hosts):
        a, b = await self.start("a"), await self.start("b")

        def missing(request):
            raise errors.NotFound("no such thing")

        b.handlers["missing"] = missing
        b.handlers["clash"] = lambda request: defer.fail(errors.Conflict("version 3 is not 2"))
        error = await failure_of(a.transport.call(b.address, "missing", {}, PATIENCE), errors.NotFound)
        assert error.message == "no such thing" and error.remote
        error = await failure_of(a.transport.call(b.address, "clash", {}, PATIENCE), errors.Conflict)
        assert error.message == "version 3 is not 2" and error.remote

    @pytest_twisted.ensureDeferred
    async def test_a_call_not_answered_in_time_is_a_timeout(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.transport.call(b.address, "echo", {}, PATIENCE)  # connected
        unanswered = defer.Deferred()
        b.handlers["hang"] = lambda request: unanswered
        error = await failure_of(a.transport.call(b.address, "hang", {}, 0.3), errors.Timeout)
        assert not error.remote
        unanswered.callback("too late")  # the late reply is dropped
        assert await a.transport.call(b.address, "echo", {"still": "up"}, PATIENCE) == {"still": "up"}

    @pytest.mark.parametrize("timeout", [None, 0, -1.0])
    @pytest_twisted.ensureDeferred
    async def test_every_call_needs_a_positive_timeout(self, hosts, timeout):
        a, b = await self.start("a"), await self.start("b")
        with pytest.raises(ValueError):
            a.transport.call(b.address, "echo", {}, timeout)
        assert b.served == [], "nothing was sent"

    # -- reachability -----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_a_host_nobody_listens_at_is_unavailable_and_unreachable(self, hosts):
        a = await self.start("a")
        nowhere = self.unused_address()
        assert a.transport.reachable(nowhere), "not tried yet: nothing is known"
        error = await failure_of(a.transport.call(nowhere, "echo", {}, 0.5), errors.Unavailable)
        assert not error.remote
        assert not a.transport.reachable(nowhere)

    @pytest_twisted.ensureDeferred
    async def test_a_host_is_reachable_once_called(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        assert a.transport.reachable(b.address)
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        assert a.transport.reachable(b.address)
        assert a.transport.peer_addresses() == [b.address]

    @pytest_twisted.ensureDeferred
    async def test_a_stopped_transport_no_longer_listens(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.parent.stopService()
        assert not a.transport.running
        await failure_of(b.transport.call(a.address, "echo", {}, 0.5), errors.Unavailable)

    # -- connections ------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_forget_closes_the_connection_and_the_next_call_opens_another(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        await a.transport.forget(b.address)
        assert a.transport.peer_addresses() == []
        await a.transport.forget(b.address)  # forgetting twice is harmless
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        assert b.served_ops() == ["hello", "echo", "hello", "echo"]
        assert b.served[0][1] is not b.served[2][1], "a new connection"

    @pytest_twisted.ensureDeferred
    async def test_peers_are_listed_by_address(self, hosts):
        a, b, c = await self.start("a"), await self.start("b"), await self.start("c")
        await defer.gatherResults([a.transport.call(x.address, "echo", {}, PATIENCE) for x in (c, b)])
        assert a.transport.peer_addresses() == sorted([b.address, c.address])

    # -- heartbeats -------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_connected_peers_get_heartbeats_and_the_replies_are_reported(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        await wait_for(lambda: any(reply for _address, _rtt, reply in a.heartbeats), "a heartbeat answered")
        answered = [(address, rtt, reply) for address, rtt, reply in a.heartbeats if reply is not None]
        address, rtt, reply = answered[0]
        assert (address, reply) == (b.address, {"pong": "b"})
        assert 0 <= rtt < PATIENCE
        assert HEARTBEAT_OP in [request["op"] for request, _channel in b.served]
        assert {address for address, _rtt, _reply in a.heartbeats} == {b.address}, "only peers are beaten"

    @pytest_twisted.ensureDeferred
    async def test_an_unanswered_heartbeat_is_reported_without_a_reply(self, hosts):
        a, b = await self.start("a"), await self.start("b")
        await a.transport.call(b.address, "echo", {}, PATIENCE)
        b.handlers[HEARTBEAT_OP] = lambda request: defer.Deferred()  # never answered
        del a.heartbeats[:]
        await wait_for(lambda: (b.address, None, None) in a.heartbeats, "a heartbeat reported missed")
