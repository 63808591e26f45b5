"""The client that stays connected to a cluster: failover, retries, heartbeats."""

from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamClientEndpoint

from nodedb import errors
from nodedb.client._endpoints import LearnedHosts, address_endpoint, client_endpoint
from nodedb.client._operations import Operations
from nodedb.client._protocol import CLIENT_NAME, DEFAULT_TIMEOUT
from nodedb.client._routing import DirectRoutes
from nodedb.wire.channel import DEFAULT_MAX_FRAME, hello_request
from nodedb.wire.connection import PersistentConnection

#: First and longest pause between two tries of a request that was not applied.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
HEARTBEAT_INTERVAL = 1.0


def _no_report(rtt, reply):
    """Heartbeat results need no handling: the connection drops itself after misses."""


class Client(Operations):
    """A connection to a nodedb cluster; build it with :func:`connect`.

    :param connection: a :class:`~nodedb.wire.connection.PersistentConnection` to any host.
    :param heartbeat: seconds between pings on each connection; after three unanswered ones
        the client drops it (and moves *connection* to the next address): a host that froze,
        or was cut off, never closes the connection by itself. None: no heartbeat.
    :param learned: the :class:`~nodedb.client._endpoints.LearnedHosts` that feeds
        *connection*, stopped with the client (None: it learns no hosts).
    :param routes: the :class:`~nodedb.client._routing.DirectRoutes` that send requests
        straight to their partition's primary (None: every request goes through
        *connection*), closed with the client.
    """

    def __init__(self, connection, timeout=DEFAULT_TIMEOUT, heartbeat=HEARTBEAT_INTERVAL, learned=None, routes=None):
        self._connection = connection
        self._learned = learned
        self._routes = routes
        self.timeout = timeout
        self._heartbeat = None
        if heartbeat:
            self._heartbeat = task.LoopingCall(self._beat, heartbeat)
            self._heartbeat.clock = connection.clock
            self._heartbeat.start(heartbeat, now=False)

    @property
    def server(self):
        """What the node of the any-host connection said about itself in the handshake."""
        return self._connection.server

    @property
    def partition_map(self):
        """The :class:`~nodedb.client._routing.PartitionMap` the client routes requests by:
        None until the cluster gave one, and always None for a client that is not partition
        aware."""
        return None if self._routes is None else self._routes.map

    def _beat(self, interval):
        self._connection.beat(interval, _no_report)
        if self._routes is not None:
            for connection in self._routes.connections():
                connection.beat(interval, _no_report)

    def _send(self, op, arguments, idempotent):
        deadline = self._connection.clock.seconds() + self.timeout
        return self._try(op, arguments, idempotent, deadline, RETRY_FIRST)

    def _try(self, op, arguments, idempotent, deadline, pause):
        # Every try gets what is left of the request's timeout, not a new one.
        remaining = deadline - self._connection.clock.seconds()
        host, connection = (None, None) if self._routes is None else self._routes.connection_for(op, arguments)
        d = (connection or self._connection).call(op, arguments, remaining)
        d.addErrback(self._retry, op, arguments, idempotent, deadline, pause, host)
        return d

    def _retry(self, failure, op, arguments, idempotent, deadline, pause, host):
        if host is not None and failure.check(errors.Unavailable, errors.Timeout):
            self._routes.failed(host)  # its next tries go through the any-host connection
        failure.trap(errors.Unavailable)
        if not idempotent and failure.check(errors.ConnectionLost):
            return failure  # a write that may have been applied
        clock = self._connection.clock
        if clock.seconds() + pause >= deadline:
            return failure
        return task.deferLater(clock, pause, self._try, op, arguments, idempotent, deadline, min(pause * 2, RETRY_MAX))

    def close(self):
        """:return: a Deferred that fires once every connection is closed."""
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._learned is not None:
            self._learned.stop()
        closing = [] if self._routes is None else self._routes.stop()
        closing.append(self._connection.stop())
        return defer.DeferredList(closing).addCallback(lambda _results: None)


def connect(
    reactor,
    addresses,
    timeout=DEFAULT_TIMEOUT,
    max_frame=DEFAULT_MAX_FRAME,
    heartbeat=HEARTBEAT_INTERVAL,
    tls=None,
    learn_hosts=True,
    partition_aware=True,
):
    """Connect to a nodedb cluster through any of *addresses*.

    :param addresses: one or a list of: ``"host:port"`` addresses, Twisted client endpoint
        descriptions (``"tcp:host:port"``, ``"unix:/path"``, ``"tls:host:port"``, ...) and
        ``IStreamClientEndpoint`` objects. A text of the form HOST:PORT, where HOST is a name or
        an IP address, is an address; any other text is an endpoint description.
    :param tls: for a cluster that runs with ``--tls``: a TLS directory (``ca.pem``,
        ``cert.pem``, ``key.pem``, as ``nodedb ca client`` writes it) or a
        :class:`~nodedb.security.tls.TLSContext`, used for the ``host:port`` addresses given
        and learned (endpoints are used as they are). The node's certificate must be signed by
        that CA and name the address dialled; this client presents its own certificate.
    :param timeout: seconds each request may take, waiting for a connection included.
    :param heartbeat: seconds between pings that detect a node that stopped answering.
    :param learn_hosts: ask the cluster for its hosts' addresses, on each new connection and
        every 30 seconds, and try them (as ``host:port``, with *tls*) after the given ones.
        False also turns *partition_aware* off: both dial the addresses the hosts advertise.
    :param partition_aware: send each request on one element straight to its partition's
        primary, over a connection of its own to each primary, as the cluster's partition
        map names them (see :mod:`nodedb.client._routing`); False: every request goes
        through the one connection, and the host there forwards it.
    :return: a Deferred that fires with a :class:`Client` once a node has answered the
        handshake, or fails with :class:`~nodedb.errors.Unavailable` if none of the given
        addresses answers (each is tried once), or InvalidRequest for a malformed address.
    """
    if isinstance(addresses, str) or IStreamClientEndpoint.providedBy(addresses):
        addresses = [addresses]
    try:
        context = _tls_context(tls)
        named = [client_endpoint(reactor, where, context) for where in addresses]
    except errors.NodeDBError as e:
        return defer.fail(e)
    if not named:
        return defer.fail(errors.InvalidRequest("no address to connect to"))
    endpoint_for = (lambda address: address_endpoint(reactor, address, context)) if learn_hosts else None
    client = start_client(reactor, named, endpoint_for, timeout, heartbeat, max_frame, partition_aware=partition_aware)
    connection = client._connection
    d = connection.when_connected(attempts=len(named))
    d.addTimeout(timeout, reactor)

    def failed(reason):
        client.close()
        if reason.check(defer.TimeoutError):
            raise errors.Unavailable(f"cannot reach a node ({connection.last_error or 'no answer in time'})")
        return reason

    return d.addCallbacks(lambda _channel: client, failed)


def start_client(
    clock,
    named_endpoints,
    endpoint_for=None,
    timeout=DEFAULT_TIMEOUT,
    heartbeat=HEARTBEAT_INTERVAL,
    max_frame=DEFAULT_MAX_FRAME,
    client_name=CLIENT_NAME,
    rng=None,
    partition_aware=True,
):
    """A :class:`Client` that has started connecting to the first of *named_endpoints*
    (``[(name, endpoint), ...]``) that answers; :func:`connect` and the test networks build
    theirs with it.

    :param endpoint_for: ``endpoint_for(address)`` -> the endpoint that dials a ``host:port``
        learned from the cluster (None: learn no hosts, and send every request through the
        one connection).
    :param rng: a ``random.Random`` for the reconnection jitter.
    :param partition_aware: with *endpoint_for*, send requests straight to their partition's
        primary (:class:`~nodedb.client._routing.DirectRoutes`).
    """
    hello = hello_request("client", client=client_name)
    learned = routes = None
    greeted = []  # what to do on each new any-host connection

    def on_greeted(channel):
        for call in greeted:
            call(channel)

    if endpoint_for is not None:
        learned = LearnedHosts(clock, [name for name, _endpoint in named_endpoints], endpoint_for)
        greeted.append(learned.connected)
    connection = PersistentConnection(
        clock,
        named_endpoints,
        hello,
        max_frame=max_frame,
        rng=rng,
        learned=None if learned is None else learned.endpoints,
        on_greeted=on_greeted,
    )
    if endpoint_for is not None and partition_aware:

        def connect_host(address, on_host_greeted):
            direct = PersistentConnection(
                clock, [(address, endpoint_for(address))], hello, max_frame=max_frame, rng=rng, on_greeted=on_host_greeted
            )
            direct.start()
            return direct

        routes = DirectRoutes(clock, connection, connect_host)
        greeted.append(routes.connected)
    connection.start()
    return Client(connection, timeout, heartbeat, learned, routes)


def _tls_context(tls):
    if tls is None:
        return None
    from nodedb.security.tls import TLSContext, TLSError

    if isinstance(tls, TLSContext):
        return tls
    try:
        return TLSContext(tls)
    except TLSError as e:
        raise errors.InvalidRequest(f"tls: {e}") from None
