"""A partition's primary role (nodedb.logsync.lead): its lifecycle, the writes, reads and
handoff waiting on it, and their deadlines, driven by hand with an explicit ``now``: no
reactor, no clock."""

import re
from pathlib import Path

import pytest

from nodedb import errors
from nodedb.logsync import lead as lead_module
from nodedb.logsync.lead import (
    FENCED,
    HANDED_OVER,
    HANDING_OVER,
    LEADING,
    NEWER_EPOCH,
    PROMISING,
    STRANGER,
    Lead,
    Settled,
)
from nodedb.logsync.state import APPEND, RESYNC_PAGE

HOLD = 3.0  # handoff_timeout


class Waiter:
    """Stands for a Deferred: the lead never fires it, it only hands it back."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Waiter({self.name})"


def leading(followers=("b", "c"), last=0):
    lead = Lead(0, 1, followers)
    lead.promised(last)
    return lead


def accept(lead, follower, last, sequence=1):
    assert lead.answered(follower, APPEND, sequence, True, last, 1, 1, False, None) is None


def waiters(settled):
    return [s.waiter for s in settled]


def errors_of(settled):
    return [type(s.error) for s in settled]


# -- the lifecycle -----------------------------------------------------------------------------


def test_a_lead_takes_writes_only_once_its_promise_is_durable():
    lead = Lead(3, 2, ("b", "c"))
    assert lead.phase == PROMISING
    assert not lead.ready and not lead.takes_writes and not lead.fenced
    assert lead.progress is None
    lead.promised(17)
    assert lead.phase == LEADING and lead.ready and lead.takes_writes
    assert lead.start == 17
    assert (lead.progress.partition, lead.progress.epoch, lead.progress.last) == (3, 2, 17)
    assert set(lead.progress.progress) == {"b", "c"}


@pytest.mark.parametrize("phase", [PROMISING, LEADING, HANDING_OVER, HANDED_OVER])
def test_a_lead_can_be_fenced_in_every_phase_once(phase):
    lead = Lead(0, 1, ("b", "c"))
    if phase != PROMISING:
        lead.promised(0)
    if phase in (HANDING_OVER, HANDED_OVER):
        lead.hand_over("b", Waiter("handoff"), 0.0, HOLD)
    if phase == HANDED_OVER:
        accept(lead, "b", 0)
        lead.settle(0.5)
    assert lead.phase == phase
    assert lead.fence(10.0) is True
    assert lead.phase == FENCED and lead.fenced and not lead.ready and not lead.takes_writes
    assert lead.asked == 10.0
    assert lead.fence(11.0) is False  # not news: the election was asked for already
    assert lead.asked == 10.0


def test_a_promise_that_lands_after_the_lead_was_fenced_leaves_it_fenced():
    lead = Lead(0, 1, ("b",))
    lead.fence(1.0)
    lead.promised(5)
    assert lead.phase == FENCED and not lead.ready
    assert lead.progress.last == 5  # shown in /status


def test_a_fenced_lead_asks_again_for_its_election_every_retry_period():
    lead = leading()
    assert not lead.ask_again(100.0, 2.0)  # not fenced
    lead.fence(10.0)
    assert not lead.ask_again(11.9, 2.0)
    assert lead.ask_again(12.0, 2.0)
    assert not lead.ask_again(13.0, 2.0)
    assert lead.ask_again(14.5, 2.0)


def test_a_handoff_holds_writes_until_the_follower_has_everything_and_then_until_its_deadline():
    lead = leading(last=2)
    handoff = Waiter("handoff")
    lead.hand_over("b", handoff, 10.0, HOLD)
    assert lead.phase == HANDING_OVER and lead.ready and not lead.takes_writes
    assert lead.handing_over_to == "b"
    assert lead.settle(10.1) == []  # b has not confirmed our end yet
    accept(lead, "c", 2)
    assert lead.settle(10.15) == []  # c is not the one taking over
    accept(lead, "b", 2)
    assert lead.settle(10.2) == [Settled(handoff, {"last": 2})]
    assert lead.phase == HANDED_OVER and not lead.takes_writes
    assert lead.handoff.deadline == pytest.approx(13.2)  # held from when it caught up
    assert lead.expire_handoff(13.1) == []
    assert lead.expire_handoff(13.2) == []  # nothing left to fire ...
    assert lead.phase == LEADING and lead.takes_writes  # ... but writes resume
    assert lead.handing_over_to is None


def test_a_handoff_that_does_not_finish_in_time_fails_and_writes_resume():
    lead = leading()
    handoff = Waiter("handoff")
    lead.hand_over("c", handoff, 10.0, HOLD)
    assert lead.expire_handoff(12.9) == []
    [failed] = lead.expire_handoff(13.0)
    assert failed.waiter is handoff and isinstance(failed.error, errors.Unavailable)
    assert lead.phase == LEADING and lead.handoff is None


def test_a_handoff_waits_for_outstanding_writes_and_commits_still_landing():
    lead = leading()
    lead.begin()
    lead.progress.appended(1)
    write = Waiter("write")
    lead.wait_write(1, 20.0, write)
    handoff = Waiter("handoff")
    lead.hand_over("b", handoff, 10.0, HOLD)
    accept(lead, "c", 1)  # a majority: the write is acknowledged, b still lacks it
    assert waiters(lead.settle(10.1)) == [write]
    accept(lead, "b", 1)
    assert lead.settle(10.2) == []  # a commit is still on its way to storage
    assert lead.landed() is True  # so settle again
    assert waiters(lead.settle(10.3)) == [handoff]
    assert lead.landed() is False  # nothing was landing any more


def test_only_a_leading_lead_can_start_a_handoff():
    lead = Lead(0, 1, ("b", "c"))
    with pytest.raises(errors.Unavailable, match="not the primary"):
        lead.hand_over("b", Waiter("h"), 0.0, HOLD)
    lead.promised(0)
    lead.hand_over("b", Waiter("h"), 0.0, HOLD)
    with pytest.raises(errors.Unavailable, match="already being handed over"):
        lead.hand_over("c", Waiter("h2"), 0.0, HOLD)
    assert lead.handing_over_to == "b"
    lead.fence(1.0)
    with pytest.raises(errors.Unavailable, match="not the primary"):
        lead.hand_over("c", Waiter("h3"), 1.0, HOLD)


def test_a_fenced_lead_keeps_its_handoff_until_the_deadline_and_never_completes_it():
    lead = leading()
    handoff = Waiter("handoff")
    lead.hand_over("b", handoff, 10.0, HOLD)
    lead.fence(11.0)
    accept(lead, "b", 0)
    assert lead.settle(11.5) == []
    assert lead.handing_over_to == "b"
    [failed] = lead.expire_handoff(13.0)
    assert failed.waiter is handoff and isinstance(failed.error, errors.Unavailable)
    assert lead.phase == FENCED and lead.handoff is None


# -- writes and reads --------------------------------------------------------------------------


def test_writes_are_released_in_commit_order_once_on_a_majority():
    lead = leading(("b", "c", "d", "e"))
    lead.progress.appended(3)
    w1, w2, w3 = Waiter(1), Waiter(2), Waiter(3)
    lead.wait_write(3, 20.0, w3)
    lead.wait_write(1, 20.0, w1)
    lead.wait_write(2, 20.0, w2)
    accept(lead, "b", 2)
    assert lead.settle(0.0) == []  # two of five
    accept(lead, "c", 3)
    assert waiters(lead.settle(0.0)) == [w1, w2]
    accept(lead, "d", 3)
    assert waiters(lead.settle(0.0)) == [w3]


def test_two_writes_of_one_commit_id_are_both_kept():
    lead = leading()
    lead.progress.appended(1)
    first, second = Waiter("first"), Waiter("second")
    lead.wait_write(1, 20.0, first)
    lead.wait_write(1, 20.0, second)
    accept(lead, "b", 1)
    assert waiters(lead.settle(0.0)) == [first, second]


def test_a_read_waits_for_a_newer_confirmation_and_for_what_the_store_held():
    lead = leading()
    read = Waiter("read")
    lead.wait_read({"b": 4, "c": 4}, 2, 20.0, read)
    lead.progress.appended(2)
    accept(lead, "b", 2, sequence=4)  # sent before the read: no confirmation
    assert lead.settle(0.0) == []
    accept(lead, "c", 1, sequence=5)  # confirmed, but entry 2 is on b and us only ...
    assert waiters(lead.settle(0.0)) == [read]  # ... which is a majority


def test_writes_time_out_and_reads_become_unavailable_at_their_deadlines():
    lead = leading()
    lead.progress.appended(2)
    early, late, read = Waiter("early"), Waiter("late"), Waiter("read")
    lead.wait_write(1, 10.0, early)
    lead.wait_write(2, 12.0, late)
    lead.wait_read({"b": 0, "c": 0}, 0, 10.0, read)
    assert lead.expire(9.9) == []
    expired = lead.expire(10.0)
    assert waiters(expired) == [early, read]
    assert errors_of(expired) == [errors.Timeout, errors.Unavailable]
    assert waiters(lead.expire(12.0)) == [late]
    assert lead.writes == [] and lead.reads == []


def test_abandon_fails_every_write_as_unknown_and_every_read_as_retryable():
    lead = leading()
    lead.progress.appended(1)
    write, read = Waiter("write"), Waiter("read")
    lead.wait_write(1, 10.0, write)
    lead.wait_read({}, 0, 10.0, read)
    abandoned = lead.abandon()
    assert waiters(abandoned) == [write, read]
    assert errors_of(abandoned) == [errors.Timeout, errors.Unavailable]
    assert "changed primary" in str(abandoned[0].error)
    assert lead.abandon() == []
    lead.wait_write(1, 10.0, write)
    stopping = errors.Timeout("the node stopped")
    assert lead.abandon(stopping) == [Settled(write, error=stopping)]


def test_landed_counts_down_only_what_began():
    lead = leading()
    assert lead.landed() is False
    lead.begin()
    lead.begin()
    assert lead.landed() is False  # no handoff waits for it
    assert lead.landing == 1


# -- answers and lost messages -----------------------------------------------------------------


def test_answers_of_strangers_and_of_newer_epochs_are_told_apart():
    lead = leading()
    assert lead.answered("x", APPEND, 1, True, 0, 0, 1, False, None) == STRANGER
    assert lead.answered("b", APPEND, 1, False, 0, 0, 2, False, None) == NEWER_EPOCH
    assert lead.answered("b", APPEND, 1, False, 0, 0, "2", False, lambda c: 0) is None  # not an epoch


def test_a_lost_message_probes_again_or_rewinds_the_resync():
    lead = leading(last=5)
    lead.progress.sent("b", 5)
    lead.progress.appended(9)
    lead.progress.sent("b", 9)
    lead.lost("b", APPEND)
    assert lead.progress.progress["b"].next == 10  # a probe at our end
    resync = lead.progress.start_resync("c", 9, 1, ["doc"])
    lead.progress.page_sent("c")
    resync.reset_sent = True
    lead.lost("c", RESYNC_PAGE)
    assert lead.progress.progress["c"].in_flight is False and resync.reset_sent is False
    Lead(0, 1, ("b",)).lost("b", APPEND)  # no progress yet: nothing to do


def test_changing_followers_keeps_what_is_known_of_those_that_stay():
    lead = Lead(0, 1, ("b", "c"))
    assert lead.change_followers(("b", "d")) is False  # no progress yet
    lead.promised(4)
    accept(lead, "b", 4)
    assert lead.change_followers(("b", "e")) is True
    assert lead.followers == ("b", "e")
    assert set(lead.progress.progress) == {"b", "e"}
    assert lead.progress.progress["b"].match == 4


def test_status_shows_progress_once_the_promise_is_durable():
    lead = Lead(0, 1, ("b",))
    assert lead.status() == {"epoch": 1, "ready": False, "fenced": False}
    lead.promised(3)
    accept(lead, "b", 3)
    assert lead.status() == {
        "epoch": 1, "ready": True, "fenced": False, "last": 3, "committed": 3,
        "followers": {"b": {"match": 3, "resync": None}},
    }


# -- the drawing -------------------------------------------------------------------------------


def test_the_drawing_of_the_lifecycle_matches_the_machine():
    """docs/state-machines/logsync-lead.dot has exactly the machine's transitions."""
    automaton = lead_module._LIFECYCLE.__automat_automaton__
    machine = {(old.name, symbol, new.name) for old, symbol, new, _outputs in automaton.allTransitions()}
    dot = Path(__file__).parents[2] / "docs" / "state-machines" / "logsync-lead.dot"
    drawn = set(re.findall(r'"([^"]+)" -> "([^"]+)" \[label="([^"]+)"\]', dot.read_text()))
    assert {(old, symbol, new) for old, new, symbol in drawn} == machine
