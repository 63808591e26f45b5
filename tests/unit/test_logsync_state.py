"""The primary's replication bookkeeping (nodedb.logsync.state): pure functions, no I/O."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb.logsync.state import (
    APPEND,
    NEEDS_RESYNC,
    RESYNC_PAGE,
    RESYNCED,
    PrimaryProgress,
    choose_primary,
    majority,
)

# -- quorums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 8))
def test_any_two_majorities_intersect_and_a_majority_is_the_smallest_such_size(n):
    assert 2 * majority(n) > n
    assert 2 * (majority(n) - 1) <= n
    assert 1 <= majority(n) <= n


@pytest.mark.parametrize("n", range(1, 8))
def test_majorities_of_replica_sets_one_replica_apart_meet(n):
    """A write acknowledged by a majority of one replica set is seen by any majority of the
    next set, which differs by one replica added or removed (brute force over the sets)."""
    old = set(range(n))
    for new in (old | {n}, *(old - {r} for r in old if n > 1)):
        for acked in itertools.combinations(sorted(old), majority(len(old))):
            for answers in itertools.combinations(sorted(new), majority(len(new))):
                assert set(acked) & set(answers), (old, new, acked, answers)


def test_majorities_of_sets_two_replicas_apart_may_miss_each_other():
    # Why sets change one replica at a time: {0} -> {0, 1, 2} would let {1, 2} elect a
    # primary without the write only 0 had.
    assert not {0} & {1, 2} and majority(1) == 1 and majority(3) == 2


# -- choosing a new primary ------------------------------------------------------------------


def test_the_highest_followed_epoch_wins_before_the_longest_log():
    answers = {"a": (1, 90, False), "b": (2, 10, False), "c": (2, 9, False)}
    assert choose_primary(answers) == "b"


def test_the_longest_log_wins_within_the_same_followed_epoch():
    answers = {"a": (3, 5, False), "b": (3, 7, False), "c": (3, 6, False)}
    assert choose_primary(answers) == "b"
    assert choose_primary(answers, prefer="a") == "b"  # prefer only breaks ties


def test_a_replica_in_a_full_resync_is_never_chosen():
    answers = {"a": (9, 900, True), "b": (1, 1, False)}
    assert choose_primary(answers) == "b"
    assert choose_primary(answers, prefer="a") == "b"


def test_ties_go_to_the_preferred_host_else_the_smallest_id():
    answers = {"c": (2, 5, False), "b": (2, 5, False), "d": (2, 5, False), "a": (2, 4, False)}
    assert choose_primary(answers) == "b"
    assert choose_primary(answers, prefer="d") == "d"
    assert choose_primary(answers, prefer="a") == "b"  # not among the best
    assert choose_primary(answers, prefer="zz") == "b"  # did not answer


def test_no_eligible_answer_chooses_nobody():
    assert choose_primary({}) is None
    assert choose_primary({"a": (1, 1, True), "b": (2, 2, True)}) is None
    assert choose_primary({"a": (1, 1, True)}, prefer="a") is None


# -- PrimaryProgress: committed ---------------------------------------------------------------


def test_a_replica_set_of_one_commits_what_it_has():
    progress = PrimaryProgress(0, 1, (), last=4)
    assert progress.committed() == 4
    progress.appended(9)
    assert progress.committed() == 9
    progress.appended(3)  # never backwards
    assert progress.last == 9 and progress.committed() == 9
    assert progress.fully_replicated() == 9


def test_three_replicas_commit_once_one_follower_has_it():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=0)
    progress.appended(10)
    assert progress.committed() == 0
    progress.accepted("b", 4, 1)
    assert progress.committed() == 4
    progress.accepted("c", 7, 1)
    assert progress.committed() == 7
    progress.accepted("b", 10, 2)
    assert progress.committed() == 10
    assert progress.fully_replicated() == 7


def test_five_replicas_commit_once_two_followers_have_it():
    progress = PrimaryProgress(0, 1, ("b", "c", "d", "e"), last=0)
    progress.appended(10)
    progress.accepted("b", 10, 1)
    assert progress.committed() == 0  # the primary and b: 2 of 5
    progress.accepted("c", 6, 1)
    assert progress.committed() == 6
    progress.accepted("d", 8, 1)
    assert progress.committed() == 8
    progress.accepted("e", 10, 1)
    assert progress.committed() == 10
    assert progress.fully_replicated() == 6


def test_the_primary_counts_only_with_what_it_has_durably():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=5)
    progress.accepted("b", 5, 1)
    progress.accepted("c", 5, 1)
    assert progress.committed() == 5
    progress.appended(8)  # only on the primary
    assert progress.committed() == 5


# -- PrimaryProgress: accepted ----------------------------------------------------------------


def test_accepted_caps_at_our_last_and_records_the_message():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=5)
    progress.accepted("b", 50, 3)
    state = progress.progress["b"]
    assert (state.match, state.next, state.confirmed) == (5, 6, 3)
    # An older message answered late neither lowers the match nor the confirmation.
    progress.accepted("b", 2, 1)
    assert (state.match, state.next, state.confirmed) == (5, 6, 3)


def test_accepted_from_a_stranger_is_ignored():
    progress = PrimaryProgress(0, 1, ("b",), last=5)
    progress.accepted("x", 5, 9)
    assert set(progress.progress) == {"b"}
    assert progress.committed() == 0


def test_a_new_follower_is_assumed_at_our_end_but_matches_nothing():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=7)
    for state in progress.progress.values():
        assert (state.match, state.next, state.resync, state.confirmed) == (0, 8, None, 0)


# -- PrimaryProgress: position after a refusal ------------------------------------------------


def our_log(epochs, truncated=0):
    """``epoch_at`` of a primary whose entry *i* (1-based) has ``epochs[i - 1]``."""

    def epoch_at(commit_id):
        if commit_id == 0 and truncated == 0:
            return 0
        if commit_id < truncated or commit_id > len(epochs):
            return None
        return epochs[commit_id - 1] if commit_id else 0

    return epoch_at


def test_a_follower_whose_log_is_a_prefix_continues_from_its_end():
    progress = PrimaryProgress(0, 3, ("b", "c"), last=6)
    log = our_log([1, 1, 2, 2, 3, 3])
    assert progress.position("b", 4, 2, log) is False
    assert (progress.progress["b"].next, progress.progress["b"].match) == (5, 0)
    assert progress.position("c", 0, 0, log) is False  # empty log: from the start
    assert progress.progress["c"].next == 1


def test_a_refusal_lowers_a_match_past_the_followers_end():
    progress = PrimaryProgress(0, 3, ("b", "c"), last=6)
    progress.accepted("b", 6, 1)
    assert progress.position("b", 4, 2, our_log([1, 1, 2, 2, 3, 3])) is False
    assert (progress.progress["b"].next, progress.progress["b"].match) == (5, 4)


def test_a_follower_that_diverged_needs_a_full_resync():
    progress = PrimaryProgress(0, 3, ("b",), last=6)
    # Its entry 4 was written in epoch 1 (an old primary's unacknowledged write); ours in 2.
    assert progress.position("b", 4, 1, our_log([1, 1, 2, 2, 3, 3])) is True
    assert progress.progress["b"].resync is None  # the caller starts it


def test_a_follower_ahead_of_us_needs_a_full_resync():
    progress = PrimaryProgress(0, 3, ("b",), last=6)
    # Even if an epoch_at that does not check bounds claims the same epoch there.
    assert progress.position("b", 7, 3, lambda commit_id: 3) is True


def test_a_follower_behind_our_truncation_needs_a_full_resync():
    progress = PrimaryProgress(0, 3, ("b",), last=6)
    assert progress.position("b", 2, 1, our_log([1, 1, 2, 2, 3, 3], truncated=4)) is True


def test_position_is_ignored_during_a_resync_and_for_strangers():
    progress = PrimaryProgress(0, 3, ("b",), last=6)
    progress.start_resync("b", 6, 3, ["doc"])
    assert progress.position("b", 99, 1, our_log([1] * 6)) is False
    assert progress.position("x", 99, 1, our_log([1] * 6)) is False
    assert progress.progress["b"].resync is not None


# -- PrimaryProgress: full resync --------------------------------------------------------------


def test_a_resync_holds_truncation_at_its_base_and_counts_for_commit_only_when_done():
    progress = PrimaryProgress(0, 2, ("b", "c"), last=10)
    progress.accepted("c", 10, 1)
    resync = progress.start_resync("b", 10, 2, ["doc", "user"])
    assert (resync.base, resync.base_epoch, resync.types) == (10, 2, ("doc", "user"))
    assert progress.progress["b"].match == 0
    assert progress.fully_replicated() == 10  # b will get everything after its base from the log
    progress.appended(15)
    progress.accepted("c", 15, 2)
    assert progress.fully_replicated() == 10
    # Pages accepted during the resync confirm the message, but match nothing yet.
    progress.accepted("b", 0, 2)
    assert progress.progress["b"].match == 0 and progress.progress["b"].confirmed == 2
    progress.resynced("b")
    state = progress.progress["b"]
    assert (state.resync, state.match, state.next) == (None, 10, 11)
    assert progress.fully_replicated() == 10
    progress.accepted("b", 15, 3)
    assert progress.fully_replicated() == 15 and progress.committed() == 15


def test_a_resync_forgets_what_the_follower_held():
    progress = PrimaryProgress(0, 2, ("b", "c"), last=10)
    progress.accepted("b", 10, 1)
    assert progress.committed() == 10
    progress.start_resync("b", 10, 2, ["doc"])  # the reset drops its copy
    assert progress.progress["b"].match == 0
    assert progress.committed() == 0


def test_a_resyncing_follower_does_not_count_for_commit():
    progress = PrimaryProgress(0, 2, ("b", "c"), last=10)
    progress.start_resync("b", 10, 2, ["doc"])
    progress.accepted("b", 10, 1)  # ignored for match while the copy is under way
    assert progress.committed() == 0
    progress.accepted("c", 10, 1)
    assert progress.committed() == 10


def test_resync_checkpoint_and_rewind():
    progress = PrimaryProgress(0, 2, ("b",), last=10)
    resync = progress.start_resync("b", 10, 2, ["doc", "user"])
    resync.reset_sent, resync.after, resync.copied = True, 41, 2
    resync.checkpoint()
    resync.type_index, resync.after, resync.copied, resync.done_sent = 1, 7, 9, True
    resync.rewind()
    assert (resync.type_index, resync.after, resync.reset_sent, resync.copied, resync.done_sent) == (0, 41, True, 2, False)


# -- PrimaryProgress: read confirmations -------------------------------------------------------


def test_confirmed_since_needs_a_majority_of_newer_confirmations():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=0)
    sent = {"b": 3, "c": 5}
    assert not progress.confirmed_since(sent)
    progress.accepted("b", 0, 3)  # the message already sent when the read arrived
    assert not progress.confirmed_since(sent)
    progress.accepted("c", 0, 5)
    assert not progress.confirmed_since(sent)
    progress.accepted("c", 0, 6)
    assert progress.confirmed_since(sent)


def test_confirmed_since_with_five_replicas():
    progress = PrimaryProgress(0, 1, ("b", "c", "d", "e"), last=0)
    sent = {"b": 1, "c": 1, "d": 1, "e": 1}
    progress.accepted("b", 0, 2)
    assert not progress.confirmed_since(sent)
    progress.accepted("e", 0, 2)
    assert progress.confirmed_since(sent)


def test_confirmed_since_counts_neither_strangers_nor_followers_missing_from_sent():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=0)
    progress.accepted("c", 0, 9)
    assert not progress.confirmed_since({"b": 0, "x": 0})  # c was not noted; x is not a follower
    assert progress.confirmed_since({"c": 0})


def test_a_replica_set_of_one_is_always_confirmed():
    assert PrimaryProgress(0, 1, (), last=3).confirmed_since({})


# -- PrimaryProgress: answers ------------------------------------------------------------------


def never(commit_id):
    raise AssertionError("epoch_at needs not be asked")


def test_an_accepted_append_moves_the_match_and_confirms_the_message():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=4)
    assert progress.answered("b", APPEND, 2, True, 4, 1, False, never) is None
    state = progress.progress["b"]
    assert (state.match, state.next, state.confirmed) == (4, 5, 2)
    assert progress.committed() == 4


def test_a_refused_append_from_a_prefix_continues_and_a_diverged_one_needs_a_resync():
    progress = PrimaryProgress(0, 3, ("b", "c"), last=6)
    log = our_log([1, 1, 2, 2, 3, 3])
    assert progress.answered("b", APPEND, 1, False, 4, 2, False, log) is None
    assert progress.progress["b"].next == 5
    assert progress.answered("c", APPEND, 1, False, 4, 1, False, log) == NEEDS_RESYNC
    # A malformed position says nothing: no resync, nothing moves.
    assert progress.answered("c", APPEND, 1, False, "4", 1, False, never) is None
    assert progress.progress["c"].next == 7


def test_a_follower_still_in_an_old_resync_needs_a_new_one():
    progress = PrimaryProgress(0, 3, ("b",), last=6)
    assert progress.answered("b", APPEND, 1, False, 0, 0, True, never) == NEEDS_RESYNC


def test_pages_checkpoint_until_the_last_one_completes_the_resync():
    progress = PrimaryProgress(0, 2, ("b", "c"), last=10)
    resync = progress.start_resync("b", 10, 2, ["doc"])
    progress.page_sent("b")
    resync.reset_sent, resync.after, resync.copied = True, 5, 3
    assert progress.answered("b", RESYNC_PAGE, 1, True, 0, 0, True, never) is None
    assert progress.progress["b"].in_flight is False
    assert resync.acked == (0, 5, True, 3)
    progress.page_sent("b")
    resync.done_sent = True
    assert progress.answered("b", RESYNC_PAGE, 2, True, 10, 2, False, never) == RESYNCED
    state = progress.progress["b"]
    assert (state.resync, state.match, state.next, state.confirmed, state.in_flight) == (None, 10, 11, 2, False)


def test_a_refused_page_needs_a_resync_from_the_start():
    progress = PrimaryProgress(0, 2, ("b",), last=10)
    progress.start_resync("b", 10, 2, ["doc"])
    progress.page_sent("b")
    assert progress.answered("b", RESYNC_PAGE, 1, False, 0, 0, True, never) == NEEDS_RESYNC
    assert progress.progress["b"].in_flight is False


def test_a_lost_page_is_sent_again_from_the_last_confirmed_one():
    progress = PrimaryProgress(0, 2, ("b",), last=10)
    resync = progress.start_resync("b", 10, 2, ["doc", "user"])
    resync.reset_sent, resync.after = True, 7
    resync.checkpoint()
    progress.page_sent("b")
    resync.type_index, resync.after, resync.done_sent = 1, -1, True
    progress.page_lost("b")
    assert progress.progress["b"].in_flight is False
    assert (resync.type_index, resync.after, resync.done_sent) == (0, 7, False)
    progress.page_lost("x")  # a stranger: nothing to do


def test_answers_from_strangers_change_nothing():
    progress = PrimaryProgress(0, 1, ("b",), last=4)
    assert progress.answered("x", APPEND, 1, True, 4, 1, False, never) is None
    assert progress.answered("x", RESYNC_PAGE, 1, False, 0, 0, True, never) is None
    assert set(progress.progress) == {"b"} and progress.committed() == 0


def test_waiting_and_has_more():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=3)
    assert progress.waiting("b") == 0 and not progress.has_more("b")
    progress.appended(7)
    assert progress.waiting("b") == 4 and progress.has_more("b")
    progress.sent("b", 7)
    assert progress.waiting("b") == 0 and not progress.has_more("b")
    progress.start_resync("c", 7, 1, ["doc"])
    assert progress.has_more("c")
    assert progress.waiting("x") == 0 and not progress.has_more("x")


def test_with_followers_keeps_those_that_stay_and_adds_new_ones_at_our_end():
    progress = PrimaryProgress(0, 1, ("b", "c"), last=8)
    progress.accepted("b", 8, 3)
    changed = progress.with_followers(("b", "d"))
    assert changed.followers == ("b", "d") and changed.last == 8
    assert changed.progress["b"] is progress.progress["b"]
    assert (changed.progress["d"].match, changed.progress["d"].next) == (0, 9)
    assert "c" not in changed.progress
    assert changed.committed() == 8


# -- properties --------------------------------------------------------------------------------

FOLLOWERS = ("b", "c", "d", "e", "f", "g")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 40)),
        st.tuples(st.just("accept"), st.integers(0, 5), st.integers(0, 50), st.integers(0, 20)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(followers=st.integers(0, 6), start=st.integers(0, 10), steps=steps)
def test_committed_is_what_a_majority_holds_and_never_decreases(followers, start, steps):
    names = FOLLOWERS[:followers]
    progress = PrimaryProgress(0, 1, names, last=start)
    last = start
    match = {name: 0 for name in names}  # the model: what each follower is known to hold
    previous = progress.committed()
    for step in steps:
        if step[0] == "append":
            last = max(last, step[1])
            progress.appended(step[1])
        else:
            _, index, reported, sequence = step
            if not names:
                continue
            name = names[index % len(names)]
            match[name] = max(match[name], min(reported, last))
            progress.accepted(name, reported, sequence)
        committed = progress.committed()
        holders = [last, *match.values()]
        # A majority of the replica set holds everything up to committed ...
        assert sum(1 for held in holders if held >= committed) >= majority(len(holders))
        # ... and no more than that is on a majority.
        assert sum(1 for held in holders if held > committed) < majority(len(holders))
        assert committed <= last
        assert committed >= previous
        assert progress.fully_replicated() == min(holders) <= committed
        for name in names:
            assert progress.progress[name].match <= last
        previous = committed
