"""A deterministic in-memory network for running many nodes' real code in one process.

Hosts listen and connect through :class:`SimServerEndpoint` and :class:`SimClientEndpoint`,
ordinary Twisted endpoints, so the production transport (ClientService, Channel, framing,
CBOR) runs unchanged on top. Every write is delivered as one unit after a delay drawn from a
seeded ``random.Random`` on a shared fake clock (:class:`SimClock`); a fault plan can
drop, delay, duplicate or reorder writes, cut links (both ways or one way), pause hosts (what
they are sent waits, as in a socket buffer under SIGSTOP), and crash them (every connection
is reset). The same seed and the same calls give the same run, so a failing test prints its
seed (see :func:`replay_hint`) and replays exactly.
"""

import heapq
import itertools
import os
import random
from dataclasses import dataclass

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from nodedb.wire.address import parse_address


_AFTER = 1e-9


@implementer(IReactorTime)
class SimClock:
    """A fake clock like :class:`twisted.internet.task.Clock`, for thousands of timers.

    ``Clock`` sorts its whole list of calls at every ``callLater``; with a thousand simulated
    hosts that sort is most of the run. This one keeps a heap, and :meth:`advance` runs each
    call at exactly the time it was due.
    """

    def __init__(self):
        self.now = 0.0
        self._heap = []
        self._order = itertools.count()

    def seconds(self):
        return self.now

    def callLater(self, delay, callable, *args, **kw):
        call = DelayedCall(self.now + delay, callable, args, kw, lambda call: None, self._push, seconds=self.seconds)
        self._push(call)
        return call

    def _push(self, call):
        heapq.heappush(self._heap, (call.time, next(self._order), call))

    def getDelayedCalls(self):
        return [call for _t, _o, call in self._heap if call.active()]

    def next_time(self):
        """When the next call is due, or None."""
        while self._heap:
            when, _order, call = self._heap[0]
            if call.cancelled or call.called or when != call.time:
                heapq.heappop(self._heap)
            elif call.delayed_time:
                heapq.heappop(self._heap)
                call.activate_delay()
                self._push(call)
            else:
                return when
        return None

    def advance(self, amount):
        """Run every call due within *amount* seconds, each at its own time."""
        end = self.now + amount
        while True:
            when = self.next_time()
            if when is None or when > end:
                break
            _when, _order, call = heapq.heappop(self._heap)
            # A call sees the clock a nanosecond past its due time. LoopingCall finds its next
            # run with a modulo of the time since it started; exactly on the boundary, float
            # noise could make that "now" again, and it would run twice at one moment.
            self.now = max(self.now, when + _AFTER)
            call.called = 1
            call.func(*call.args, **call.kw)
        self.now = end


@dataclass
class Faults:
    """Probabilities and delays applied to every write on the network."""

    drop: float = 0.0
    duplicate: float = 0.0
    #: Probability that a write is held back by an extra delay, letting later writes pass it.
    reorder: float = 0.0
    #: One-way delay bounds (seconds) when no latency is set for the pair of hosts.
    min_delay: float = 0.0005
    max_delay: float = 0.0015


def _address(text):
    host, port = parse_address(text)
    return IPv4Address("TCP", host, port)


class _SimTransport(StringTransport):
    """One end of a simulated connection: writes go to the network, not to a buffer."""

    def __init__(self, connection, side):
        local, remote = connection.ends[side], connection.ends[1 - side]
        super().__init__(hostAddress=_address(local), peerAddress=_address(remote))
        self.connection = connection
        self.side = side

    def write(self, data):
        if not self.disconnecting and data:
            self.connection.network._send(self.connection, self.side, bytes(data))

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self.connection.network._close(self.connection, error.ConnectionDone())

    def abortConnection(self):
        self.loseConnection()


class _Connection:
    def __init__(self, network, client_address, server_address):
        self.network = network
        self.ends = (client_address, server_address)  # side 0 is the client
        self.protocols = [None, None]
        self.transports = [None, None]
        self.open = True
        self.established = False  # both protocols told they are connected


@implementer(IStreamServerEndpoint)
class SimServerEndpoint:
    def __init__(self, network, address):
        self.network = network
        self.address = address

    def listen(self, factory):
        return defer.succeed(self.network._listen(self.address, factory))


@implementer(IStreamClientEndpoint)
class SimClientEndpoint:
    def __init__(self, network, source, destination):
        self.network = network
        self.source = source
        self.destination = destination

    def connect(self, factory):
        return self.network._connect(self.source, self.destination, factory)


class _Port:
    def __init__(self, network, address, factory):
        self.network = network
        self.address = address
        self.factory = factory

    def getHost(self):
        return _address(self.address)

    def stopListening(self):
        if self.network._listeners.get(self.address) is self:
            del self.network._listeners[self.address]
        return defer.succeed(None)


class SimNetwork:
    """Hosts, links and faults of one simulated network.

    :param seed: seeds every random choice the network makes.
    :param clock: the shared clock (a new :class:`SimClock` by default; a
        :class:`twisted.internet.task.Clock` works too, more slowly).
    """

    def __init__(self, seed, clock=None):
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock if clock is not None else SimClock()
        self.faults = Faults()
        self.latency = {}  # frozenset({host_a, host_b}) -> one-way delay in seconds
        self.delivered = 0
        self.dropped = 0
        self._listeners = {}  # address -> _Port
        self._connections = {}  # ordered, so that a crash closes them in a replayable order
        self._cut = set()  # (from host, to host): writes that way are lost
        self._paused = {}  # host -> (unsent writes, undelivered writes) until it resumes
        self._down = set()  # hosts that crashed and have not restarted

    # -- endpoints --------------------------------------------------------------------------

    def server_endpoint(self, address):
        return SimServerEndpoint(self, address)

    def client_endpoint(self, source, destination):
        return SimClientEndpoint(self, source, destination)

    @staticmethod
    def host_of(address):
        return parse_address(address)[0]

    def _listen(self, address, factory):
        if address in self._listeners:
            raise error.CannotListenError(address, 0, "address in use")
        port = self._listeners[address] = _Port(self, address, factory)
        factory.doStart()
        return port

    def _connect(self, source, destination, factory):
        src, dst = self.host_of(source), self.host_of(destination)
        port = self._listeners.get(destination)
        if src in self._down or port is None or dst in self._down:
            return self._later(error.ConnectionRefusedError(destination))
        if (src, dst) in self._cut or (dst, src) in self._cut:
            return self._later(error.TimeoutError(destination))
        connection = _Connection(self, f"{src}:{self.rng.randint(30000, 60000)}", destination)
        client = factory.buildProtocol(_address(destination))
        server = port.factory.buildProtocol(_address(connection.ends[0]))
        if client is None or server is None:
            return self._later(error.ConnectionRefusedError(destination))
        connection.protocols = [client, server]
        connection.transports = [_SimTransport(connection, 0), _SimTransport(connection, 1)]
        self._connections[connection] = None
        d = defer.Deferred()

        def established():
            if not connection.open:
                d.errback(error.ConnectionLost())
                return
            connection.established = True
            server.makeConnection(connection.transports[1])
            client.makeConnection(connection.transports[0])
            d.callback(client)

        self.clock.callLater(self._delay(src, dst), established)
        return d

    def _later(self, failure_value):
        d = defer.Deferred()
        self.clock.callLater(self.faults.min_delay, d.errback, failure_value)
        return d

    # -- delivery ---------------------------------------------------------------------------

    def _delay(self, src, dst):
        base = self.latency.get(frozenset((src, dst)))
        if base is None:
            return self.rng.uniform(self.faults.min_delay, self.faults.max_delay)
        return base * self.rng.uniform(0.95, 1.05)

    def _send(self, connection, side, data):
        src = self.host_of(connection.ends[side])
        dst = self.host_of(connection.ends[1 - side])
        if src in self._paused:
            # A paused process sends nothing: its writes sit in its own buffer.
            self._paused[src][0].append((connection, side, data))
            return
        if (src, dst) in self._cut or self.rng.random() < self.faults.drop:
            self.dropped += 1
            return
        delay = self._delay(src, dst)
        if self.rng.random() < self.faults.reorder:
            delay += self.rng.uniform(0, 10 * self.faults.max_delay)
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self.clock.callLater(delay, self._deliver, connection, 1 - side, data)

    def _deliver(self, connection, side, data):
        if not connection.open:
            return
        dst = self.host_of(connection.ends[side])
        if dst in self._paused:
            self._paused[dst][1].append((connection, side, data))
            return
        self.delivered += 1
        connection.protocols[side].dataReceived(data)

    def _close(self, connection, reason, delay=None):
        if not connection.open:
            return
        connection.open = False
        self._connections.pop(connection, None)
        for transport in connection.transports:
            transport.disconnecting = True

        def lost():
            # A connection closed before it was established fails its connect attempt (see
            # _connect); its protocols never heard of it, as with TCP.
            if connection.established:
                for protocol in connection.protocols:
                    protocol.connectionLost(reason)

        self.clock.callLater(self.faults.min_delay if delay is None else delay, lost)

    # -- faults -----------------------------------------------------------------------------

    def set_latency(self, host_a, host_b, one_way_seconds):
        self.latency[frozenset((host_a, host_b))] = one_way_seconds

    def partition(self, group_a, group_b, one_way=False):
        """Cut every link from *group_a* to *group_b* (and back, unless *one_way*)."""
        for a in group_a:
            for b in group_b:
                self._cut.add((a, b))
                if not one_way:
                    self._cut.add((b, a))

    def heal(self):
        self._cut.clear()

    def pause(self, host):
        """Freeze *host*: it neither sends nor receives, but its connections stay up."""
        self._paused.setdefault(host, ([], []))

    def resume(self, host):
        unsent, undelivered = self._paused.pop(host, ([], []))
        for connection, side, data in undelivered:
            self.clock.callLater(0, self._deliver, connection, side, data)
        for connection, side, data in unsent:
            self._send(connection, side, data)

    def crash(self, host):
        """Reset every connection of *host* and refuse new ones until :meth:`restart`; the
        caller discards the host's in-memory state (its storage may survive)."""
        self._down.add(host)
        self._paused.pop(host, None)
        for connection in list(self._connections):
            if host in (self.host_of(end) for end in connection.ends):
                self._close(connection, error.ConnectionLost("peer crashed"))
        for address in [a for a in self._listeners if self.host_of(a) == host]:
            del self._listeners[address]

    def restart(self, host):
        self._down.discard(host)

    # -- running ----------------------------------------------------------------------------

    def run(self, seconds):
        """Advance the shared clock by *seconds*; every event runs at the exact time it was
        due (a plain ``Clock.advance(step)`` would run them all at the end of the step, and
        measured round trips would come out as multiples of the step)."""
        if isinstance(self.clock, SimClock):
            self.clock.advance(seconds)
            return
        end = self.clock.seconds() + seconds
        calls = self.clock.calls
        while calls and calls[0].getTime() <= end:
            self.clock.advance(max(0.0, calls[0].getTime() - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))

    def run_until(self, condition, timeout, check_every=0.05):
        """Run until ``condition()`` holds, checking it every *check_every* simulated seconds.

        :return: the simulated seconds it took.
        :raise AssertionError: naming the seed, if *timeout* simulated seconds pass first.
        """
        start = self.clock.seconds()
        while not condition():
            if self.clock.seconds() - start >= timeout:
                raise AssertionError(f"condition not reached in {timeout}s of simulated time; {replay_hint(self.seed)}")
            self.run(check_every)
        return self.clock.seconds() - start


def seeds(count=3):
    """The seeds a simulated test runs with: ``NODEDB_SEED`` alone when it is set (to replay
    a failure), else 1..*count*."""
    chosen = os.environ.get("NODEDB_SEED")
    if chosen is not None:
        return [int(chosen)]
    return list(range(1, count + 1))


def replay_hint(seed):
    return f"replay with seed {seed} (NODEDB_SEED={seed})"
