"""Pure reliability state: unreliability scores and a phi-accrual failure detector.

Nothing here reads a clock: every method takes ``now`` (seconds) from the caller.

*Unreliability score* (the design brief's): every timeout adds :attr:`ScoreSettings.penalty`,
every success takes away :attr:`ScoreSettings.reward` (never below zero). Once the score
reaches :attr:`ScoreSettings.unavailable_at` the peer counts as unavailable, and it counts as
available again only once the score is back below :attr:`ScoreSettings.available_below`
(hysteresis, so a peer on the edge does not flap). The time of the last change of state is
kept, for "unavailable since".

*Phi accrual* (Hayashibara et al., as used by Cassandra and Akka): the intervals between
heartbeats from a peer are kept in a sliding window; phi is ``-log10`` of the probability that
a heartbeat is still to come after the time already waited, under an exponential (or normal)
fit of that window. Phi grows smoothly with silence and adapts to a peer's normal jitter.
"""

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreSettings:
    """How timeouts and successes move a peer's unreliability score."""

    penalty: float = 1.0
    reward: float = 0.5
    unavailable_at: float = 3.0
    available_below: float = 1.0
    maximum: float = 10.0


class UnreliabilityScore:
    """One peer's score, and whether (and since when) it counts as available."""

    def __init__(self, settings=ScoreSettings(), now=0.0):
        self.settings = settings
        self.score = 0.0
        self.available = True
        self.since = now

    def record_timeout(self, now):
        self.score = min(self.settings.maximum, self.score + self.settings.penalty)
        if self.available and self.score >= self.settings.unavailable_at:
            self.available, self.since = False, now

    def record_success(self, now):
        self.score = max(0.0, self.score - self.settings.reward)
        if not self.available and self.score < self.settings.available_below:
            self.available, self.since = True, now


@dataclass(frozen=True)
class PhiSettings:
    """The phi-accrual detector's parameters (defaults as in Cassandra/Akka)."""

    threshold: float = 8.0
    window: int = 100
    min_interval: float = 0.1
    #: Added to the mean interval so that a peer which just started is not suspected early.
    acceptable_pause: float = 0.0
    #: Before this many intervals are known, ``first_interval`` stands in for the mean.
    first_interval: float = 1.0


class PhiAccrualDetector:
    """Suspicion of one peer from the arrival times of its heartbeats."""

    def __init__(self, settings=PhiSettings()):
        self.settings = settings
        self.intervals = deque(maxlen=settings.window)
        self.last = None

    def heartbeat(self, now):
        if self.last is not None:
            self.intervals.append(max(self.settings.min_interval, now - self.last))
        self.last = now

    def mean(self):
        if not self.intervals:
            return self.settings.first_interval
        return sum(self.intervals) / len(self.intervals)

    def phi(self, now):
        """``-log10 P(a heartbeat arrives later than now)`` under an exponential fit."""
        if self.last is None:
            return 0.0
        elapsed = max(0.0, now - self.last)
        mean = self.mean() + self.settings.acceptable_pause
        # P(later) = exp(-elapsed / mean), so phi = elapsed / (mean * ln 10).
        return elapsed / (mean * math.log(10))

    def suspects(self, now):
        return self.phi(now) >= self.settings.threshold
