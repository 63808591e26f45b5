"""The behaviour every :class:`~nodedb.interfaces.IReliability` must show.

Subclass :class:`ReliabilityContract` in a pytest module and define ``make_reliability(clock)``
returning a provider with its default settings that reads time from *clock* (a
:class:`twisted.internet.task.Clock`). Thresholds are the provider's own: the tests only
require that enough timeouts make a host unavailable, that enough successes bring it back,
and that a host that falls silent becomes suspect.
"""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nodedb.interfaces import IReliability

#: More of a kind of evidence than any sane threshold needs.
_ENOUGH = 200
_DESCRIBED = {"unreliability", "available", "since", "phi", "rtt"}


class ReliabilityContract:
    def make_reliability(self, clock):
        raise NotImplementedError

    @pytest.fixture
    def clock(self):
        clock = Clock()
        clock.advance(1_700_000_000)
        return clock

    @pytest.fixture
    def reliability(self, clock):
        return self.make_reliability(clock)

    @staticmethod
    def make_unavailable(reliability, host_id):
        """Record timeouts until *host_id* is unavailable; :return: how many it took."""
        for count in range(1, _ENOUGH + 1):
            reliability.record_timeout(host_id)
            if not reliability.is_available(host_id):
                return count
        raise AssertionError(f"{_ENOUGH} timeouts did not make {host_id} unavailable")

    def test_provides_the_interface(self, reliability):
        assert verifyObject(IReliability, reliability)

    def test_settings_give_a_call_timeout_and_retries(self, reliability):
        assert reliability.settings.call_timeout > 0
        assert type(reliability.settings.retries) is int and reliability.settings.retries >= 0

    def test_a_host_never_seen_is_available_with_a_perfect_score(self, reliability):
        assert reliability.is_available("h")
        assert reliability.score("h") == 0
        described = reliability.describe("h")
        assert described.keys() >= _DESCRIBED
        assert described["available"] is True and described["unreliability"] == 0

    def test_timeouts_raise_the_score_until_the_host_is_unavailable(self, reliability):
        reliability.record_timeout("h")
        assert reliability.score("h") > 0
        self.make_unavailable(reliability, "h")
        described = reliability.describe("h")
        assert described["available"] is False and described["unreliability"] > 0
        assert reliability.is_available("other")  # one host's failures are its own

    def test_successes_bring_an_unavailable_host_back(self, reliability, clock):
        self.make_unavailable(reliability, "h")
        worst = reliability.score("h")
        for _ in range(_ENOUGH):
            clock.advance(1)
            reliability.record_success("h", 0.01)
            if reliability.is_available("h"):
                break
        assert reliability.is_available("h")
        assert reliability.score("h") < worst

    def test_describe_reports_the_round_trip_time_measured(self, reliability, clock):
        reliability.record_success("h", None)
        assert reliability.describe("h")["rtt"] is None
        reliability.record_success("h", 0.05)
        assert reliability.describe("h")["rtt"] == pytest.approx(0.05)

    def test_a_new_generation_forgets_the_previous_life(self, reliability):
        reliability.new_generation("h", 1)
        self.make_unavailable(reliability, "h")
        reliability.new_generation("h", 1)  # the same life: nothing is forgotten
        assert not reliability.is_available("h")
        reliability.new_generation("h", 2)
        assert reliability.is_available("h") and reliability.score("h") == 0

    def test_a_host_that_falls_silent_becomes_suspect(self, reliability, clock):
        for _ in range(30):
            reliability.record_success("h", 0.01)
            clock.advance(1)
        assert reliability.is_available("h")
        clock.advance(120)
        reliability.check()
        assert not reliability.is_available("h")
        assert reliability.describe("h")["available"] is False
