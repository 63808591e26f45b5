"""The TCP peer transport: the node's listening port, and persistent connections to peers."""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from zope.interface import implementer

from nodedb.interfaces import IPeerTransport
from nodedb.wire.channel import DEFAULT_MAX_FRAME, hello_request
from nodedb.wire.connection import ChannelFactory, PersistentConnection, tcp_endpoints


@implementer(IPeerTransport)
class TCPTransport(Service):
    """Listens on a Twisted endpoint string; keeps one connection per peer it calls.

    :param reactor: the reactor to listen and connect with.
    :param listen: the server endpoint description (``--listen``).
    :param host_id: this host's id, sent in the handshake to peers.
    """

    _log = Logger()

    def __init__(self, reactor, listen, host_id, max_frame=DEFAULT_MAX_FRAME):
        self.reactor = reactor
        self.description = listen
        self.host_id = host_id
        self.max_frame = max_frame
        self._factory = ChannelFactory(None, max_frame)
        self._port = None
        self._peers = {}

    def serve(self, dispatch):
        self._factory.dispatch = dispatch

    def listen(self):
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self._factory)

        def listening(port):
            self._port = port
            self._log.info("serving requests on {endpoint}", endpoint=self.description)
            return port

        return d.addCallback(listening)

    def call(self, address, op, arguments, timeout):
        peer = self._peers.get(address)
        if peer is None:
            hello = hello_request("peer", host=self.host_id)
            peer = self._peers[address] = PersistentConnection(
                self.reactor, tcp_endpoints(self.reactor, [address]), hello, self._factory.dispatch, self.max_frame
            )
            peer.start()
        return peer.call(op, arguments, timeout)

    def stopService(self):
        super().stopService()
        stopping = [peer.stop() for peer in self._peers.values()]
        self._peers.clear()
        if self._port is not None:
            stopping.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        return defer.gatherResults(stopping, consumeErrors=True)
