"""Limits that keep one client or peer from exhausting a node: how many connections it may
hold, how long they may sit idle or half-way through a frame, and (in :class:`Channel`) how
many of its requests are served at once.

:class:`Limits` is the settings (one field per ``twistd nodedb`` option); a
:class:`ConnectionGuard` applies them to the connections one listening port accepted. It
admits or refuses each new connection, and one timer of its own sweeps all of them once a
second for the timeouts; the in-flight limit is applied by each :class:`Channel` itself,
since it acts on every request.
"""

from dataclasses import dataclass

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: Seconds between two sweeps of every connection for the timeouts.
SWEEP_INTERVAL = 1.0
#: A refused address (or the total cap) is logged at most once in this many seconds.
WARN_EVERY = 60.0
#: A connection the node closed, that is still not gone this long after (its other end
#: reads nothing, so its last bytes cannot be sent), is aborted.
CLOSE_GRACE = 10.0
#: Open files this process wants beyond ``max_connections``: peers, the store, the admin site.
SPARE_FILES = 256


@dataclass(frozen=True)
class Limits:
    """What one connection, or one address, may take of a node. Defaults are the
    ``twistd nodedb`` defaults; see docs/running.md ("Limits") for why each is what it is."""

    #: Requests of a client connection served at once; at the limit the node stops reading
    #: from the connection until one of them is answered.
    max_in_flight: int = 256
    #: The same for a connection whose hello said ``role: peer``. It carries every request
    #: the other host forwards for its own clients, besides replication, voting and its
    #: heartbeats, so it needs much more room than one client.
    max_peer_in_flight: int = 4096
    #: Connections open at once from one IP address; more are closed as they arrive.
    max_connections_per_address: int = 64
    #: Connections open at once in all.
    max_connections: int = 4096
    #: Seconds a connection may receive nothing, with none of its requests in service,
    #: before it is closed.
    idle_timeout: float = 300.0
    #: Seconds a new connection has to send its ``hello``.
    handshake_timeout: float = 10.0
    #: Seconds a frame may take to arrive once its first bytes have.
    frame_timeout: float = 30.0

    @classmethod
    def from_config(cls, config):
        """The limits of a :class:`nodedb.config.NodeConfig`."""
        return cls(
            max_in_flight=config.max_in_flight,
            max_peer_in_flight=config.max_peer_in_flight,
            max_connections_per_address=config.max_connections_per_address,
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            handshake_timeout=config.handshake_timeout,
            frame_timeout=config.frame_timeout,
        )

    def in_flight_for(self, role):
        """The in-flight limit of a connection whose hello gave *role* (None before it)."""
        return self.max_peer_in_flight if role == "peer" else self.max_in_flight


class ConnectionGuard:
    """Admits, counts and times out the connections of one listening port.

    A :class:`~nodedb.wire.channel.Channel` built with a guard calls :meth:`admit` when it is
    connected and :meth:`release` when it is lost; :meth:`sweep` (run every
    :data:`SWEEP_INTERVAL` seconds between :meth:`start` and :meth:`stop`) closes the ones
    past a timeout.

    :param clock: the reactor, or a Clock.
    :ivar refused: connections refused so far, by the limit that refused them.
    :ivar closed: connections closed so far, by the timeout that closed them.
    :ivar held: how many times a connection reached its in-flight limit, so that the node
        stopped reading from it for a while.
    """

    _log = Logger()

    def __init__(self, clock, limits=None):
        self.clock = clock
        self.limits = limits or Limits()
        self.refused = {"per_address": 0, "total": 0}
        self.closed = {"idle": 0, "handshake": 0, "frame_timeout": 0}
        self.held = 0
        self._open = {}  # channel -> its remote IP address (None for a UNIX socket)
        self._per_address = {}  # IP address -> connections open from it
        self._warned = {}  # address (or None for the total cap) -> [time warned, refusals since]
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock

    # -- admission --------------------------------------------------------------------------

    def admit(self, channel):
        """Count a new connection in, if the limits allow it.

        :return: None if *channel* is admitted, else why it is refused (for the reply).
        """
        limits = self.limits
        address = _ip_of(channel.transport.getPeer())
        if len(self._open) >= limits.max_connections:
            return self._refuse("total", None, address, limits.max_connections, "this node has too many connections")
        if address is not None and self._per_address.get(address, 0) >= limits.max_connections_per_address:
            return self._refuse(
                "per_address", address, address, limits.max_connections_per_address, f"too many connections from {address}"
            )
        self._open[channel] = address
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1
        return None

    def release(self, channel):
        """Count a connection out once it is lost (admitted or not)."""
        if channel not in self._open:
            return
        address = self._open.pop(channel)
        if address is not None:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]

    def _refuse(self, kind, key, address, limit, reason):
        self.refused[kind] += 1
        now = self.clock.seconds()
        warned = self._warned.get(key)
        if warned is not None and now - warned[0] < WARN_EVERY:
            warned[1] += 1
            return reason
        self._warned[key] = [now, 0]
        self._log.warn(
            "refusing a connection from {address}: {reason} (limit {limit}, --{option}); "
            "more refusals {scope} are logged once a minute",
            address=address,
            reason=reason,
            limit=limit,
            option="max-connections" if kind == "total" else "max-connections-per-address",
            scope="for this limit" if kind == "total" else "of this address",
            kind=kind,
        )
        return reason

    # -- timeouts ---------------------------------------------------------------------------

    def start(self):
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stop(self):
        if self._sweeper.running:
            self._sweeper.stop()

    def sweep(self):
        """Close every connection past a timeout; abort those that were closed and are not
        gone after :data:`CLOSE_GRACE` seconds."""
        now = self.clock.seconds()
        limits = self.limits
        for channel in list(self._open):
            transport = channel.transport
            if transport is None:
                continue
            if transport.disconnecting or channel.closing_since is not None:
                if channel.closing_since is None:
                    channel.note_closing(now)
                elif now - channel.closing_since >= CLOSE_GRACE:
                    channel.abort(now)
                continue
            if not channel.greeted:
                if now - channel.made_at >= limits.handshake_timeout:
                    self._expire(channel, "handshake", f"no hello within {limits.handshake_timeout:g} s")
            elif channel.partial_since is not None and now - channel.partial_since >= limits.frame_timeout:
                self._expire(channel, "frame_timeout", f"a frame not completed within {limits.frame_timeout:g} s")
            elif channel.serving == 0 and now - channel.last_heard >= limits.idle_timeout:
                self._expire(channel, "idle", None)
        self._forget_warnings(now)

    def _expire(self, channel, kind, reason):
        self.closed[kind] += 1
        if reason is None:
            # An idle connection is not misbehaving: no error, no warning.
            self._log.info(
                "closing {peer}: idle for {timeout:g} s", peer=channel.peer, timeout=self.limits.idle_timeout, kind=kind
            )
        else:
            self._log.warn("closing {peer}: {reason}", peer=channel.peer, reason=reason, kind=kind)
        channel.close(reason)

    def _forget_warnings(self, now):
        for key, (when, more) in list(self._warned.items()):
            if now - when < WARN_EVERY:
                continue
            del self._warned[key]
            if more:
                self._log.warn(
                    "refused {count} more connections {scope} in the last minute",
                    count=more,
                    scope="for --max-connections" if key is None else f"from {key}",
                    address=key,
                )

    # -- what it shows ----------------------------------------------------------------------

    def open_count(self):
        return len(self._open)

    def status(self):
        """The ``connections`` part of ``/status``."""
        roles = {"client": 0, "peer": 0, "unknown": 0}
        held_now = 0
        for channel in self._open:
            roles[channel.role if channel.role in roles else "unknown"] += 1
            held_now += bool(channel.held)
        limits = self.limits
        return {
            "open": len(self._open),
            "clients": roles["client"],
            "peers": roles["peer"],
            "handshaking": roles["unknown"],
            "addresses": len(self._per_address),
            "held": held_now,
            "held_total": self.held,
            "refused": dict(self.refused),
            "closed": dict(self.closed),
            "limits": {
                "max_in_flight": limits.max_in_flight,
                "max_peer_in_flight": limits.max_peer_in_flight,
                "max_connections_per_address": limits.max_connections_per_address,
                "max_connections": limits.max_connections,
                "idle_timeout": limits.idle_timeout,
                "handshake_timeout": limits.handshake_timeout,
                "frame_timeout": limits.frame_timeout,
            },
        }


def _ip_of(address):
    """The IP address text of a transport's peer; None for a UNIX socket and the like (those
    are local, and share only the total cap)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) and host else None


def raise_open_files_limit(limits, resource_module=None):
    """Raise this process's soft limit of open files to what *limits* need
    (``max_connections`` + :data:`SPARE_FILES`), as far as the hard limit allows: the usual
    soft limit of 1024 would otherwise refuse connections well below ``--max-connections``.

    :return: the soft limit now in force (None where there is no such limit).
    """
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:  # not on a Unix
            return None
    wanted = limits.max_connections + SPARE_FILES
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if soft == resource_module.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource_module.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        ConnectionGuard._log.warn(
            "this process may open only {soft} files, fewer than --max-connections ({max_connections}) "
            "+ {spare}: raise the limit (ulimit -n, or LimitNOFILE= under systemd) or lower --max-connections",
            soft=soft,
            max_connections=limits.max_connections,
            spare=SPARE_FILES,
        )
    return soft
