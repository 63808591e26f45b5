"""Reliability as this host sees it: a score and a phi-accrual detector per peer.

Timeouts and failed calls raise a peer's unreliability score, successes lower it (the design
brief's scheme); heartbeats over the persistent connection feed a phi-accrual detector. A
peer is *available* while its score is under the threshold and the detector does not suspect
it. The two are compared in docs/network.md; the score decides by default because it reacts
to every kind of failure (refused, reset, slow), and phi catches the silent ones (a frozen
host whose connection stays up) without false alarms under jitter.
"""

from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import implementer

from nodedb import errors
from nodedb.interfaces import IReliability
from nodedb.reliability.state import PhiAccrualDetector, PhiSettings, ScoreSettings, UnreliabilityScore


@dataclass(frozen=True)
class ReliabilitySettings:
    """Thresholds and timing; documented in docs/network.md."""

    score: ScoreSettings = ScoreSettings()
    phi: PhiSettings = PhiSettings()
    #: Seconds a peer call may take before it counts as a timeout (``--peer-timeout``).
    call_timeout: float = 2.0
    #: How many more times an idempotent peer call is tried after a timeout
    #: (``--peer-retries``); every failed try counts against the peer.
    retries: int = 1


class _Peer:
    def __init__(self, settings, now):
        self.score = UnreliabilityScore(settings.score, now)
        self.detector = PhiAccrualDetector(settings.phi)
        self.rtt = None
        self.generation = None
        self.reported = True  # the availability last logged
        self.changed = now  # when that availability began


@implementer(IReliability)
class Reliability:
    """Per-peer availability from call outcomes and heartbeats.

    :param clock: anything with ``seconds()``.
    :param on_change: ``on_change(host_id, available)`` when a peer changes state.
    """

    _log = Logger()

    def __init__(self, clock, settings=ReliabilitySettings(), on_change=None):
        self.clock = clock
        self.settings = settings
        self.on_change = on_change
        self._peers = {}

    def _peer(self, host_id):
        peer = self._peers.get(host_id)
        if peer is None:
            peer = self._peers[host_id] = _Peer(self.settings, self.clock.seconds())
        return peer

    def _watch(self, host_id, peer):
        available = self._available(peer)
        if available != peer.reported:
            peer.reported = available
            peer.changed = self.clock.seconds()
            self._log.info(
                "host {host_id} is now {state} (unreliability {score:.1f})",
                host_id=host_id,
                state="available" if available else "unavailable",
                score=peer.score.score,
            )
            if self.on_change is not None:
                self.on_change(host_id, available)

    def _available(self, peer):
        return peer.score.available and not peer.detector.suspects(self.clock.seconds())

    def record_success(self, host_id, rtt):
        peer = self._peer(host_id)
        now = self.clock.seconds()
        peer.score.record_success(now)
        peer.detector.heartbeat(now)
        if rtt is not None:
            peer.rtt = rtt if peer.rtt is None else 0.8 * peer.rtt + 0.2 * rtt
        self._watch(host_id, peer)

    def record_timeout(self, host_id):
        peer = self._peer(host_id)
        peer.score.record_timeout(self.clock.seconds())
        self._watch(host_id, peer)

    def new_generation(self, host_id, generation):
        """A host restarted: forget what its previous life did."""
        peer = self._peers.get(host_id)
        if peer is not None and peer.generation is not None and generation > peer.generation:
            self._peers[host_id] = fresh = _Peer(self.settings, self.clock.seconds())
            fresh.generation, fresh.reported, fresh.changed = generation, peer.reported, peer.changed
            self._watch(host_id, fresh)
        else:
            self._peer(host_id).generation = generation

    def check(self):
        """Log peers whose availability changed with the passing of time (phi grows while
        a peer is silent)."""
        for host_id, peer in self._peers.items():
            self._watch(host_id, peer)

    def is_available(self, host_id):
        peer = self._peers.get(host_id)
        return True if peer is None else self._available(peer)

    def score(self, host_id):
        peer = self._peers.get(host_id)
        return 0.0 if peer is None else peer.score.score

    def describe(self, host_id):
        """What ``/status`` shows of a peer's reliability."""
        peer = self._peers.get(host_id)
        if peer is None:
            return {"unreliability": 0.0, "available": True, "since": None, "phi": 0.0, "rtt": None}
        self._watch(host_id, peer)  # so that "since" counts from a change phi alone made
        now = self.clock.seconds()
        return {
            "unreliability": round(peer.score.score, 2),
            "available": self._available(peer),
            "since": peer.changed,
            "phi": round(peer.detector.phi(now), 2),
            "rtt": peer.rtt,
        }


class ReportingTransport:
    """The peer transport as the services that call peers see it: a call that times out
    raises the peer's unreliability.

    Gossip records its own calls' outcomes and the heartbeats'; this wrapper covers the
    others (replication, voting, routing and relaying). Calls that were in flight together
    to a peer that went silent time out together: they count as one timeout per
    *burst_gap* seconds, so that the score measures how often the peer fails rather than
    how busy the link was. A successful call is not counted: heartbeats and gossip already
    report that the peer answers, and counting every reply would drown out the timeouts.

    :param transport: the :class:`~nodedb.interfaces.IPeerTransport` to wrap.
    :param reliability: the :class:`Reliability` to report to.
    :param host_at: ``host_at(address)`` -> the host id at *address*, or None.
    :param clock: anything with ``seconds()``.
    """

    def __init__(self, transport, reliability, host_at, clock, burst_gap=1.0):
        self.transport = transport
        self.reliability = reliability
        self.host_at = host_at
        self.clock = clock
        self.burst_gap = burst_gap
        self._last = {}  # host id -> when its last timeout was counted

    def call(self, address, op, arguments, timeout):
        return self.transport.call(address, op, arguments, timeout).addErrback(self._failed, address)

    def reachable(self, address):
        return self.transport.reachable(address)

    def _failed(self, failure, address):
        error = failure.value
        if isinstance(error, errors.Timeout) and not error.remote:
            host_id = self.host_at(address)
            now = self.clock.seconds()
            last = self._last.get(host_id)
            if host_id is not None and (last is None or now - last >= self.burst_gap):
                self._last[host_id] = now
                self.reliability.record_timeout(host_id)
        return failure

    def __getattr__(self, name):
        # Everything else (peer, forget, peer_addresses...) is the transport's own.
        return getattr(self.transport, name)
