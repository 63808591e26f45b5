"""The pure reliability pieces: unreliability scores with hysteresis, and phi accrual."""

import random

from nodedb.reliability.state import PhiAccrualDetector, PhiSettings, ScoreSettings, UnreliabilityScore


def test_timeouts_make_a_peer_unavailable_and_successes_bring_it_back():
    settings = ScoreSettings(penalty=1.0, reward=0.5, unavailable_at=3.0, available_below=1.0)
    score = UnreliabilityScore(settings, now=0.0)
    score.record_timeout(1.0)
    score.record_timeout(2.0)
    assert score.available and score.score == 2.0
    score.record_timeout(3.0)
    assert not score.available and score.since == 3.0
    # Hysteresis: back below the unavailability threshold is not enough.
    score.record_success(4.0)
    score.record_success(5.0)
    assert not score.available and score.score == 2.0
    score.record_success(6.0)
    score.record_success(7.0)
    assert not score.available and score.score == 1.0  # not yet below available_below
    score.record_success(8.0)
    assert score.available and score.since == 8.0 and score.score == 0.5


def test_score_is_bounded_both_ways():
    score = UnreliabilityScore(ScoreSettings(maximum=5.0))
    for t in range(100):
        score.record_timeout(float(t))
    assert score.score == 5.0
    for t in range(100, 200):
        score.record_success(float(t))
    assert score.score == 0.0 and score.available


def test_phi_grows_with_silence_and_adapts_to_the_interval():
    detector = PhiAccrualDetector(PhiSettings(threshold=8.0))
    assert detector.phi(100.0) == 0.0  # nothing heard yet: no opinion
    for t in range(20):
        detector.heartbeat(float(t))
    assert detector.mean() == 1.0
    assert detector.phi(19.5) < detector.phi(21.0) < detector.phi(40.0)
    assert not detector.suspects(20.5)
    assert detector.suspects(19.0 + 8.0 * 2.31)  # phi = elapsed / (mean * ln 10)


def test_phi_tolerates_a_jittery_peer_that_a_fixed_timeout_would_not():
    rng = random.Random(3)
    detector = PhiAccrualDetector(PhiSettings(threshold=8.0))
    t = 0.0
    for _ in range(100):
        t += rng.uniform(0.5, 3.0)  # mean 1.75 s, sometimes 3 s apart
        detector.heartbeat(t)
    assert not detector.suspects(t + 3.0)
    assert detector.suspects(t + 40.0)
