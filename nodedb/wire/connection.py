"""A connection that stays up: Twisted's ClientService, a hello handshake, timed calls.

Clients use one over all the node addresses they were given and those they learned from the
cluster since (a :class:`RotatingEndpoint` moves on to the next address whenever a connection
attempt fails, so the client fails over by itself); hosts use one per peer. A call made while
the connection is down waits for it, but never past its own timeout.
"""

import random

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet import task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from nodedb import errors
from nodedb.wire.channel import DEFAULT_MAX_FRAME, Channel

#: How often calls are checked against their deadlines.
SWEEP_INTERVAL = 0.1
#: How long one TCP connection attempt may take.
CONNECT_TIMEOUT = 5.0
#: Heartbeats a peer may miss in a row before its connection is dropped and remade.
HEARTBEAT_MISSES = 3
#: How long a node may take to answer the hello that opens a connection.
HELLO_TIMEOUT = 3.0


class ChannelFactory(Factory):
    """Builds :class:`Channel` protocols that serve requests with *dispatch*; with *guard* (a
    :class:`~nodedb.wire.limits.ConnectionGuard`), each is held to the guard's limits."""

    noisy = False

    def __init__(self, dispatch=None, max_frame=DEFAULT_MAX_FRAME, guard=None):
        self.dispatch = dispatch
        self.max_frame = max_frame
        self.guard = guard

    #: Called with each channel once it is connected (None: nothing to do).
    on_connected = None

    def buildProtocol(self, addr):
        channel = Channel(self.dispatch, self.max_frame, on_made=self.on_connected, guard=self.guard)
        channel.factory = self
        return channel


@implementer(IStreamClientEndpoint)
class RotatingEndpoint:
    """Connects to each of several endpoints in turn, one per attempt."""

    def __init__(self, named_endpoints, on_failure, learned=None):
        """
        :param named_endpoints: ``[(address, endpoint), ...]``.
        :param on_failure: called with ``(address, reason)`` when an attempt fails.
        :param learned: ``learned()`` -> more ``[(address, endpoint), ...]`` to try after
            *named_endpoints*, as they are at the time of each attempt (None: no more).
        """
        self._given = list(named_endpoints)
        self._learned = learned
        self._on_failure = on_failure
        self._next = 0
        self.current = None

    def _endpoints(self):
        return self._given if self._learned is None else self._given + list(self._learned())

    def __len__(self):
        return len(self._endpoints())

    def connect(self, factory):
        endpoints = self._endpoints()
        self.current, endpoint = endpoints[self._next % len(endpoints)]
        self._next += 1
        return endpoint.connect(factory).addErrback(self._failed, self.current)

    def _failed(self, reason, address):
        self._on_failure(address, reason.getErrorMessage())
        return reason


class PersistentConnection:
    """One handshaken :class:`Channel`, re-established whenever it drops.

    ClientService keeps a TCP connection up; on each new connection this class sends
    ``hello`` and only then hands the channel to callers. (The handshake is not run as
    ClientService's ``prepareConnection``: a connection lost during that step trips an
    unhandled state in ClientService; after ``hello`` fails we simply drop the connection and
    ClientService reconnects.)

    :param clock: the reactor (or a Clock) for timers and reconnection.
    :param named_endpoints: ``[(address, endpoint), ...]`` to rotate over.
    :param hello: the arguments of the ``hello`` request that opens each connection.
    """

    _log = Logger()

    def __init__(
        self,
        clock,
        named_endpoints,
        hello,
        dispatch=None,
        max_frame=DEFAULT_MAX_FRAME,
        own_timers=True,
        rng=None,
        learned=None,
        on_greeted=None,
    ):
        """
        :param own_timers: check call deadlines with a timer of its own; a transport that
            keeps many connections passes False and calls :meth:`sweep` for all of them.
        :param rng: a ``random.Random`` for the reconnection jitter (seeded in the simulator).
        :param learned: ``learned()`` -> more ``[(address, endpoint), ...]`` to rotate over
            after *named_endpoints* (see :class:`RotatingEndpoint`).
        :param on_greeted: called with each channel once its hello is answered.
        """
        self.clock = clock
        self.hello = hello
        self.server = None  # the last hello reply
        self.last_error = None
        self._channel = None
        self._greeting = None  # the channel whose hello is under way
        self._failures = 0  # failed attempts (connect or hello) since the last success
        self._waiters = []  # (Deferred, give up after this many failures or None)
        self._on_greeted = on_greeted
        self._endpoint = RotatingEndpoint(named_endpoints, self._attempt_failed, learned)
        backoff = backoffPolicy(initialDelay=0.2, maxDelay=5.0, jitter=(rng or random.Random()).random)
        factory = ChannelFactory(dispatch, max_frame)
        factory.on_connected = self._greet
        self._service = ClientService(
            self._endpoint,
            factory,
            retryPolicy=lambda failures: self._retry_delay(failures, backoff),
            clock=clock,
        )
        self._missed = 0
        self._sweeper = None
        if own_timers:
            self._sweeper = LoopingCall(lambda: self.sweep(self.clock.seconds()))
            self._sweeper.clock = clock

    def _retry_delay(self, failures, backoff):
        """Every address is tried at once after a failure; only then does the backoff start."""
        immediate = len(self._endpoint)
        return 0.0 if failures < immediate else backoff(failures - immediate)

    @property
    def address(self):
        """The address of the current (or last tried) connection."""
        return self._endpoint.current

    @property
    def connected(self):
        """True while a handshaken connection is up."""
        channel = self._channel
        return channel is not None and channel.connected_

    def in_flight(self):
        """:return: how many calls on the current connection await a reply."""
        channel = self._channel
        return 0 if channel is None else channel.in_flight()

    @property
    def down(self):
        """True when the connection is known to be down: it was up and dropped, or attempts
        to make it failed, and no new one is up yet. A first connection still being made is
        not down: nothing is known about it yet."""
        return not self.connected and (self._channel is not None or self._failures > 0)

    def start(self):
        self._service.startService()
        if self._sweeper is not None:
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stop(self):
        """Close the connection and stop reconnecting.

        :return: a Deferred that fires once the connection is closed. The service is stopped
            on the next reactor turn, so that this may be called from any callback, even one
            that ClientService itself is running.
        """
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        waiters, self._waiters = self._waiters, []
        for d, _limit in waiters:
            d.errback(errors.Unavailable("connection closed"))
        return task.deferLater(self.clock, 0, self._service.stopService)

    def _attempt_failed(self, address, message):
        self.last_error = f"{address}: {message}"
        self._failures += 1
        give_up = [d for d, limit in self._waiters if limit is not None and self._failures >= limit]
        self._waiters = [(d, limit) for d, limit in self._waiters if d not in give_up]
        for d in give_up:
            d.errback(errors.Unavailable(f"cannot reach a node ({self.last_error})"))

    def _greet(self, channel):
        self._greeting = channel
        d = channel.greet(self.hello, deadline=self.clock.seconds() + HELLO_TIMEOUT)
        d.addCallbacks(self._greeted, self._refused, (channel,), None, (channel,))

    def _greeted(self, reply, channel):
        if not channel.connected_:
            return
        self.server = reply
        self._channel = channel
        self._failures = 0
        if self._on_greeted is not None:
            self._on_greeted(channel)
        waiters, self._waiters = self._waiters, []
        for d, _limit in waiters:
            d.callback(channel)

    def _refused(self, reason, channel):
        self._attempt_failed(self._endpoint.current, reason.getErrorMessage())
        if not reason.check(errors.Unavailable, errors.Timeout):
            self._log.warn(
                "{address} refused the handshake: {reason}", address=self._endpoint.current, reason=reason.getErrorMessage()
            )
        channel.transport.loseConnection()

    def when_connected(self, attempts=None):
        """:return: a Deferred that fires with the handshaken channel; with *attempts*, it
        fails with Unavailable once that many attempts in a row have failed."""
        channel = self._channel
        if channel is not None and channel.connected_:
            return defer.succeed(channel)
        d = defer.Deferred(lambda d: self._forget(d))
        self._waiters.append((d, None if attempts is None else self._failures + attempts))
        return d

    def _forget(self, waiter):
        self._waiters = [(d, limit) for d, limit in self._waiters if d is not waiter]

    def call(self, op, arguments, timeout):
        """Send *op*; wait for a connection if there is none, but at most *timeout* seconds
        overall.

        :return: a Deferred of the reply value (see :meth:`Channel.call`).
        """
        deadline = self.clock.seconds() + timeout
        channel = self._channel
        if channel is not None and channel.connected_:
            return channel.call(op, arguments, deadline)
        d = self.when_connected()
        d.addTimeout(timeout, self.clock)
        d.addCallbacks(lambda channel: channel.call(op, arguments, deadline), self._unreachable)
        return d

    def _unreachable(self, reason):
        reason.trap(defer.TimeoutError, defer.CancelledError)
        raise errors.Unavailable(f"cannot reach a node ({self.last_error or 'no answer in time'})")

    def beat(self, interval, report, op="ping"):
        """Send *op* to the peer and ``report(rtt, reply)`` (``None, None`` if it does not
        answer within *interval*).

        A peer that misses :data:`HEARTBEAT_MISSES` pings in a row gets its connection
        dropped (TCP may never notice a host that froze or vanished), and ClientService
        reconnects.
        """
        channel = self._channel
        if channel is None or not channel.connected_:
            report(None, None)
            return
        sent = self.clock.seconds()

        def answered(reply):
            self._missed = 0
            report(self.clock.seconds() - sent, reply)

        def missed(reason):
            report(None, None)
            self._missed += 1
            if self._missed >= HEARTBEAT_MISSES and channel.connected_:
                self._missed = 0
                channel.transport.abortConnection()

        channel.call(op, None, deadline=sent + interval).addCallbacks(answered, missed)

    def sweep(self, now):
        """Fail the calls whose deadline passed before *now* with Timeout."""
        for channel in (self._channel, self._greeting):
            if channel is not None:
                channel.expire(now)
