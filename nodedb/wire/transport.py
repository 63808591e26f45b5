"""The peer transport: the node's listening port, and one persistent connection per peer.

It is built from two endpoint factories, so the same code runs on TCP (:func:`tcp_transport`),
on Unix sockets between the hosts of one machine (:func:`unix_transport`) and on the
simulator's in-memory network (:mod:`nodedb.testing.simulation`).
"""

import os
import random

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, UNIXServerEndpoint, serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from nodedb.interfaces import IPeerTransport
from nodedb.wire.address import parse_address
from nodedb.wire.channel import DEFAULT_MAX_FRAME
from nodedb.wire.connection import CONNECT_TIMEOUT, SWEEP_INTERVAL, ChannelFactory, PersistentConnection
from nodedb.wire.limits import ConnectionGuard, Limits, raise_open_files_limit


@implementer(IPeerTransport)
class PeerTransport(Service):
    """Serves requests on one server endpoint; calls peers over persistent connections.

    :param clock: the reactor (or the simulator's Clock).
    :param server_endpoint: the ``IStreamServerEndpoint`` to listen on.
    :param client_endpoint: ``client_endpoint(address)`` -> ``IStreamClientEndpoint``.
    :param hello: ``hello()`` -> the arguments of the handshake this host sends to peers.
    :param on_heartbeat: ``on_heartbeat(address, rtt, reply)`` after each heartbeat to a peer
        (``rtt`` and ``reply`` are None when it timed out).
    :param heartbeat_op: the request each heartbeat sends (``ping`` by default; the node uses
        ``gossip.ping``, whose reply carries the peer's current coordinate).
    :param rng: a ``random.Random`` for reconnection jitter (seeded in the simulator).
    :param limits: the :class:`~nodedb.wire.limits.Limits` every accepted connection is held
        to (the defaults if None); :attr:`guard` applies them.
    """

    _log = Logger()

    def __init__(
        self,
        clock,
        server_endpoint,
        client_endpoint,
        hello,
        max_frame=DEFAULT_MAX_FRAME,
        heartbeat_interval=1.0,
        on_heartbeat=None,
        rng=None,
        heartbeat_op="ping",
        limits=None,
    ):
        self.clock = clock
        self.server_endpoint = server_endpoint
        self.client_endpoint = client_endpoint
        self.hello = hello
        self.max_frame = max_frame
        self.heartbeat_interval = heartbeat_interval
        self.on_heartbeat = on_heartbeat
        self.heartbeat_op = heartbeat_op
        self.rng = rng or random.Random()
        self.guard = ConnectionGuard(clock, limits or Limits())
        self._factory = ChannelFactory(None, max_frame, guard=self.guard)
        self._port = None
        self._peers = {}
        # One timer each for all peers, rather than timers per connection.
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock

    def serve(self, dispatch):
        self._factory.dispatch = dispatch

    def listen(self):
        def listening(port):
            self._port = port
            return port

        return self.server_endpoint.listen(self._factory).addCallback(listening)

    def peer(self, address):
        """The persistent connection to *address*, made on first use."""
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = PersistentConnection(
                self.clock,
                [(address, self.client_endpoint(address))],
                self.hello(),
                self._factory.dispatch,
                self.max_frame,
                own_timers=False,
                rng=random.Random(self.rng.random()),
            )
            peer.start()
        return peer

    def peer_addresses(self):
        """:return: the addresses this transport keeps connections to."""
        return sorted(self._peers)

    def call(self, address, op, arguments, timeout):
        # Every remote call has a deadline: one without would wait forever on a host that
        # froze with its connection up.
        if timeout is None or not timeout > 0:
            raise ValueError(f"a call of {op!r} needs a positive timeout, not {timeout!r}")
        return self.peer(address).call(op, arguments, timeout)

    def reachable(self, address):
        """:return: False when the connection to *address* is known to be down (it dropped,
        or attempts to make it fail), else True (it is up, or not tried yet)."""
        peer = self._peers.get(address)
        return peer is None or not peer.down

    def startService(self):
        super().startService()
        self._sweeper.start(SWEEP_INTERVAL, now=False)
        self.guard.start()
        if self.heartbeat_interval:
            self._heartbeat.start(self.heartbeat_interval, now=False)

    def _sweep(self):
        now = self.clock.seconds()
        # A failed call's errback may open or close a connection: iterate over a copy.
        for peer in list(self._peers.values()):
            peer.sweep(now)

    def _beat(self):
        for address, peer in list(self._peers.items()):
            peer.beat(
                self.heartbeat_interval,
                lambda rtt, reply, address=address: self._report(address, rtt, reply),
                self.heartbeat_op,
            )

    def _report(self, address, rtt, reply):
        if self.on_heartbeat is not None:
            self.on_heartbeat(address, rtt, reply)

    def forget(self, address):
        """Close the connection to *address* (a host that left or moved)."""
        peer = self._peers.pop(address, None)
        return peer.stop() if peer is not None else defer.succeed(None)

    def stopService(self):
        super().stopService()
        for loop in (self._sweeper, self._heartbeat):
            if loop.running:
                loop.stop()
        self.guard.stop()
        stopping = [peer.stop() for peer in self._peers.values()]
        self._peers.clear()
        if self._port is not None:
            stopping.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        return defer.gatherResults(stopping, consumeErrors=True)


def tcp_transport(reactor, listen, hello, tls=None, client_cert=True, **options):
    """A :class:`PeerTransport` on TCP: *listen* is a Twisted server endpoint description.

    :param tls: a :class:`~nodedb.security.tls.TLSContext`: every connection, in and out, is
        TLS, and a peer's certificate must name the address dialled.
    :param client_cert: with *tls*, whether connections made to this host must present a
        certificate signed by the cluster CA.
    """

    def client_endpoint(address):
        host, port = parse_address(address)
        endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        return endpoint if tls is None else tls.wrap_client(host, endpoint)

    # A soft limit of 1024 open files would refuse connections long before --max-connections.
    raise_open_files_limit(options.get("limits") or Limits())
    server = serverFromString(reactor, listen)
    if tls is not None:
        server = tls.wrap_server(server, client_cert)
    return PeerTransport(reactor, server, client_endpoint, hello, **options)


#: File mode of a Unix transport's socket: the user and group the node runs as may connect.
SOCKET_MODE = 0o660


def socket_path(socket_dir, address):
    """The Unix socket at which the host of *address* (``host:port``) listens in
    *socket_dir*: ``127.0.0.1:7400`` listens at ``socket_dir/127.0.0.1_7400.sock``."""
    return os.path.join(socket_dir, address.replace(":", "_") + ".sock")


def unix_transport(reactor, socket_dir, address, hello, **options):
    """A :class:`PeerTransport` on Unix sockets, for hosts that share one machine: this one
    listens at ``socket_path(socket_dir, address)`` and reaches each peer at its own path.

    The socket's file mode (:data:`SOCKET_MODE`) is what keeps other users out: there is no
    TLS. A lock file next to the socket (``.sock.lock``) holds it for this process, and a
    socket left by a process that died is removed when the next one listens.
    """

    def client_endpoint(peer):
        return UNIXClientEndpoint(reactor, socket_path(socket_dir, peer), timeout=CONNECT_TIMEOUT)

    raise_open_files_limit(options.get("limits") or Limits())
    server = UNIXServerEndpoint(reactor, socket_path(socket_dir, address), mode=SOCKET_MODE, wantPID=True)
    return PeerTransport(reactor, server, client_endpoint, hello, **options)
