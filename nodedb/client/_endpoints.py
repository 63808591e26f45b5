"""Where a client connects: the endpoints it is given, and the hosts it learns from the cluster."""

import ipaddress

from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nodedb import errors
from nodedb.wire.address import parse_address
from nodedb.wire.connection import CONNECT_TIMEOUT

#: How often a connected client asks the cluster again for its hosts' addresses.
LEARN_INTERVAL = 30.0
#: How long it waits for the answer.
LEARN_TIMEOUT = 5.0


def is_address(text):
    """True for a ``host:port`` (or ``[v6]:port``) address whose host is a name or an IP
    address; False for anything else, such as an endpoint description (``tls:host:port``)."""
    try:
        host, _port = parse_address(text)
    except errors.InvalidRequest:
        return False
    if ":" not in host:
        return True
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def address_endpoint(reactor, address, tls=None):
    """The endpoint that dials a ``host:port`` *address*; with *tls* (a
    :class:`~nodedb.security.tls.TLSContext`), it speaks TLS and checks the node's certificate
    against the host it dials."""
    host, port = parse_address(address)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    return endpoint if tls is None else tls.wrap_client(host, endpoint)


def client_endpoint(reactor, where, tls=None):
    """``(name, endpoint)`` for one place :func:`~nodedb.client.connect` was given.

    :param where: an ``IStreamClientEndpoint``, a ``host:port`` address (dialled with *tls*
        if given), or a Twisted client endpoint description (``tcp:host:port``,
        ``unix:/path``, ``tls:host:port``, ...), used as it is.
    :raise InvalidRequest: if *where* is none of these.
    """
    if IStreamClientEndpoint.providedBy(where):
        return repr(where), where
    if type(where) is not str:
        raise errors.InvalidRequest(f"not an address or an endpoint: {where!r}")
    if is_address(where):
        return where, address_endpoint(reactor, where, tls)
    try:
        return where, clientFromString(reactor, where)
    except (ValueError, TypeError, KeyError) as e:
        raise errors.InvalidRequest(f"not a HOST:PORT address or a client endpoint description: {where!r} ({e})") from None


def host_addresses(status):
    """The ``host:port`` addresses of the hosts a ``status`` reply lists, in its order;
    anything else in it is ignored."""
    hosts = status.get("hosts") if isinstance(status, dict) else None
    if not isinstance(hosts, list):
        return []
    addresses = [host.get("address") for host in hosts if isinstance(host, dict)]
    return [address for address in addresses if type(address) is str and is_address(address)]


class LearnedHosts:
    """The addresses of the cluster's hosts beyond those a client was given, so that it can
    still reach the cluster when every one of those fails: the hosts that joined since, or
    that it was never told about.

    It asks the node it is connected to (``status``) on each new connection and then every
    :data:`LEARN_INTERVAL` seconds; each answer replaces what it knew.

    :param clock: the reactor (or a ``Clock``).
    :param given: the names of the endpoints the client was given; they are not learned again.
    :param endpoint_for: ``endpoint_for(address)`` -> the endpoint that dials a learned
        ``host:port``.
    """

    _log = Logger()

    def __init__(self, clock, given, endpoint_for, interval=LEARN_INTERVAL):
        self.clock = clock
        self._given = set(given)
        self._endpoint_for = endpoint_for
        self._interval = interval
        self._learned = {}  # address -> endpoint, in the order the cluster lists them
        self._channel = None
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = clock

    def endpoints(self):
        """:return: ``[(address, endpoint), ...]`` of the hosts learned."""
        return list(self._learned.items())

    def connected(self, channel):
        """Learn from the node at the other end of *channel*, a new handshaken connection."""
        self._channel = channel
        self.refresh()
        if not self._refresher.running:
            self._refresher.start(self._interval, now=False)

    def stop(self):
        if self._refresher.running:
            self._refresher.stop()

    def refresh(self):
        channel = self._channel
        if channel is None or not channel.connected_:
            return
        d = channel.call("status", None, deadline=self.clock.seconds() + LEARN_TIMEOUT)
        d.addCallbacks(self._learn, self._not_now, errbackArgs=(channel.peer,))

    def _learn(self, status):
        known = self._learned
        addresses = [address for address in host_addresses(status) if address not in self._given]
        self._learned = {address: known[address] if address in known else self._endpoint_for(address) for address in addresses}

    def _not_now(self, reason, peer):
        # A node still starting, or a connection that dropped: the next one will tell.
        reason.trap(errors.NodeDBError)
        self._log.debug("{peer} did not list the cluster's hosts: {reason}", peer=peer, reason=reason.getErrorMessage())
