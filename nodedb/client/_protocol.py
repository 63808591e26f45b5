"""nodedb's client protocol for Twisted programs that make their own connections."""

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall

from nodedb.client._operations import Operations
from nodedb.wire.channel import DEFAULT_MAX_FRAME, Channel, hello_request
from nodedb.wire.connection import HELLO_TIMEOUT, SWEEP_INTERVAL

DEFAULT_TIMEOUT = 10.0
#: What the client's hello says it is.
CLIENT_NAME = "nodedb-python"


class NodeDBProtocol(Operations, Channel):
    """One connection to one nodedb node, over any stream endpoint (``tcp:``, ``unix:``,
    ``tls:``, or one of your own): build it with :class:`NodeDBClientFactory`.

    On connecting it sends the ``hello`` handshake; :meth:`when_ready` fires once the node has
    answered, and requests made before that wait for it. The operations are those of
    :class:`~nodedb.client.Client` (``insert``, ``get``, ``update``, ``delete``, ``scan``,
    ``transaction``, ``status``, ``recover``), each failing with Timeout after the factory's
    *timeout*. It never reconnects nor retries: when its connection drops, the requests in
    flight fail with :class:`~nodedb.errors.ConnectionLost` (an Unavailable). For a client that
    fails over between nodes and retries what was certainly not applied, use
    :func:`~nodedb.client.connect`.

    :ivar server: what the node said about itself in the handshake (None until then).
    """

    def __init__(self, clock, timeout=DEFAULT_TIMEOUT, max_frame=DEFAULT_MAX_FRAME, client_name=CLIENT_NAME):
        super().__init__(max_frame=max_frame)
        self.clock = clock
        self.timeout = timeout
        self.server = None
        self._hello = hello_request("client", client=client_name)
        self._refusal = None  # the Failure of a handshake that did not succeed
        self._ready_waiters = []
        self._closed_waiters = []
        self._sweeper = LoopingCall(lambda: self.expire(self.clock.seconds()))
        self._sweeper.clock = clock

    def connectionMade(self):
        super().connectionMade()
        self._sweeper.start(SWEEP_INTERVAL, now=False)
        d = self.greet(self._hello, deadline=self.clock.seconds() + HELLO_TIMEOUT)
        d.addCallbacks(self._greeted, self._refused)

    def _greeted(self, reply):
        self.server = reply
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def _refused(self, reason):
        self._refusal = reason
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(reason)
        self.close()

    def connectionLost(self, reason):
        # The hello in flight fails first (in Channel.connectionLost), so ready waiters hear why.
        super().connectionLost(reason)
        if self._sweeper.running:
            self._sweeper.stop()
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def when_ready(self):
        """:return: a Deferred that fires with this protocol once the node has answered the
        handshake, or fails with why it did not (ProtocolError, Timeout, ConnectionLost)."""
        if self.server is not None:
            return defer.succeed(self)
        if self._refusal is not None:
            return defer.fail(self._refusal)
        d = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _send(self, op, arguments, idempotent):
        deadline = self.clock.seconds() + self.timeout
        if self.server is not None:
            return self.call(op, arguments, deadline)
        return self.when_ready().addCallback(lambda _ready: self.call(op, arguments, deadline))

    def close(self, reason=None):
        """Close the connection (after a ``ProtocolError`` frame saying *reason*, if given).

        :return: a Deferred that fires once it is closed.
        """
        if not self.connected_:
            return defer.succeed(None)
        d = defer.Deferred()
        self._closed_waiters.append(d)
        super().close(reason)
        return d


class NodeDBClientFactory(Factory):
    """Builds a :class:`NodeDBProtocol` for each connection an endpoint makes::

        endpoint = clientFromString(reactor, "unix:/run/nodedb/client.sock")
        node = await endpoint.connect(NodeDBClientFactory(reactor))
        await node.when_ready()

    :param clock: the reactor (or a ``Clock``) for request timeouts.
    :param timeout: seconds each request may take.
    :param max_frame: the largest reply accepted, in bytes.
    :param client_name: what the handshake says this client is.
    """

    protocol = NodeDBProtocol
    noisy = False

    def __init__(self, clock, timeout=DEFAULT_TIMEOUT, max_frame=DEFAULT_MAX_FRAME, client_name=CLIENT_NAME):
        self.clock = clock
        self.timeout = timeout
        self.max_frame = max_frame
        self.client_name = client_name

    def buildProtocol(self, addr):
        protocol = self.protocol(self.clock, self.timeout, self.max_frame, self.client_name)
        protocol.factory = self
        return protocol
