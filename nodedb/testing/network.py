"""Protocols joined in memory: bytes move only when a test pumps them.

This is the one place nodedb builds in-memory connections (the idea of Twisted's private
``twisted.test.iosim``, written on the public :class:`twisted.internet.testing.StringTransport`).

::

    pair = connect(server_protocol, client_protocol)
    client_protocol.transport.write(b"...")
    pair.pump()                      # deliver everything, both ways, until quiet

:class:`MemoryEndpoint` is a client endpoint whose connections reach a server factory in
memory, so that code built on endpoints (``ClientService``, :class:`nodedb.client.Client`)
runs unchanged in a synchronous test.
"""

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class MemoryConnection:
    """Two connected protocols and the transports between them.

    :ivar server: the server side protocol.
    :ivar client: the client side protocol.
    :ivar closed: True once both sides have been told the connection is lost.
    """

    def __init__(self, server, client, server_address, client_address):
        self.server = server
        self.client = client
        self.server_transport = StringTransport(hostAddress=server_address, peerAddress=client_address)
        self.client_transport = StringTransport(hostAddress=client_address, peerAddress=server_address)
        self.closed = False
        self._paused = False

    def make(self):
        """Tell both protocols they are connected (server first, as TCP accepts first)."""
        self.server.makeConnection(self.server_transport)
        self.client.makeConnection(self.client_transport)

    def pause(self):
        """Hold every byte in its transport until :meth:`resume` (a hung peer)."""
        self._paused = True

    def resume(self):
        self._paused = False

    def pump(self):
        """Deliver the bytes written on either side, repeatedly, until nothing moves; then, if
        either side asked to close, close the connection on both sides.

        :return: True if anything happened.
        """
        moved = False
        while not self._paused and not self.closed:
            progress = self._deliver(self.client_transport, self.server)
            progress = self._deliver(self.server_transport, self.client) or progress
            if progress:
                moved = True
                continue
            if self.server_transport.disconnecting or self.client_transport.disconnecting:
                self.close()
                moved = True
            break
        return moved

    @staticmethod
    def _deliver(transport, protocol):
        data = transport.value()
        if not data:
            return False
        transport.clear()
        protocol.dataReceived(data)
        return True

    def close(self, reason=None):
        """Drop the connection at once: both protocols see *reason* (a clean close by default);
        bytes not yet delivered are lost."""
        if self.closed:
            return
        self.closed = True
        reason = reason or Failure(error.ConnectionDone("closed in memory"))
        for transport in (self.server_transport, self.client_transport):
            transport.disconnecting = True
            transport.clear()
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)


def connect(server, client, server_address=None, client_address=None):
    """Connect the protocol instances *server* and *client* in memory.

    :return: the :class:`MemoryConnection`; nothing is delivered until it is pumped.
    """
    pair = MemoryConnection(
        server,
        client,
        server_address or IPv4Address("TCP", "127.0.0.1", 7400),
        client_address or IPv4Address("TCP", "127.0.0.1", 50000),
    )
    pair.make()
    return pair


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """A client endpoint that connects to *server_factory* in memory.

    :ivar connections: every :class:`MemoryConnection` made, oldest first.
    :ivar refuse: while True, connection attempts fail with ConnectionRefusedError.
    """

    def __init__(self, server_factory, address=None):
        self.server_factory = server_factory
        self.address = address or IPv4Address("TCP", "127.0.0.1", 7400)
        self.connections = []
        self.refuse = False
        self._next_port = 50000

    def connect(self, factory):
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError("refused in memory"))
        self._next_port += 1
        client_address = IPv4Address("TCP", "127.0.0.1", self._next_port)
        server = self.server_factory.buildProtocol(client_address)
        client = factory.buildProtocol(self.address)
        if server is None or client is None:
            return defer.fail(error.ConnectionRefusedError("no protocol"))
        pair = MemoryConnection(server, client, self.address, client_address)
        self.connections.append(pair)
        pair.make()
        return defer.succeed(client)

    def pump(self):
        """Pump every open connection until none moves.

        :return: True if anything happened.
        """
        moved = False
        while True:
            progress = False
            for pair in list(self.connections):
                progress = pair.pump() or progress
            if not progress:
                return moved
            moved = True

    def open_connections(self):
        return [pair for pair in self.connections if not pair.closed]


def memory_client(server_factories, clock, timeout=10.0):
    """A :class:`nodedb.client.Client` whose connections reach *server_factories* in memory.

    :param server_factories: the factory (or a list of factories, one per node, to fail over
        between) that builds the server side of each connection, such as
        ``ChannelFactory(api.dispatch)``.
    :param clock: the Clock that drives reconnection and call timeouts.
    :return: ``(client, endpoints)``; the client has started connecting: pump the endpoints
        (and advance the clock) to let it finish.
    """
    from nodedb.client._client import start_client

    if not isinstance(server_factories, (list, tuple)):
        server_factories = [server_factories]
    endpoints = [
        MemoryEndpoint(factory, IPv4Address("TCP", "127.0.0.1", 7400 + index)) for index, factory in enumerate(server_factories)
    ]
    named = [(f"127.0.0.1:{endpoint.address.port}", endpoint) for endpoint in endpoints]
    return start_client(clock, named, timeout=timeout), endpoints


def pump_all(endpoints, clock=None, until=None, step=0.05, limit=10_000):
    """Pump *endpoints* until nothing moves; with *clock*, also advance it by *step* between
    rounds until the Deferred *until* has fired (at most *limit* rounds).

    :return: True if *until* fired (always True without it).
    """
    fired = []
    if until is not None:
        until.addBoth(lambda result: fired.append(True) or result)
    for _ in range(limit):
        while any(endpoint.pump() for endpoint in endpoints):
            pass
        if until is None or fired:
            return True
        if clock is None:
            return False
        clock.advance(step)
    return bool(fired)
