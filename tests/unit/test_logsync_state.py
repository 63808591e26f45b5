"""Replication progress of one partition, driven by hand."""

import pytest

from nodedb.logsync.state import FollowerLog, PrimaryProgress, StaleEpoch


def test_a_write_commits_once_a_majority_has_it():
    primary = PrimaryProgress(partition=3, epoch=1, followers=("b", "c"))
    primary.appended(1)
    assert primary.committed() == 0  # only the primary has it: one of three
    assert primary.to_send() == {"b": (1, 1), "c": (1, 1)}
    assert primary.to_send() == {}  # one batch in flight per follower
    primary.acknowledged("b", 1, 1)
    assert primary.committed() == 1
    assert primary.fully_replicated() == 0
    primary.acknowledged("c", 1, 1)
    assert primary.fully_replicated() == 1


def test_batches_are_bounded_and_follow_the_acknowledgements():
    primary = PrimaryProgress(3, 1, ("b",))
    for commit in range(1, 11):
        primary.appended(commit)
    assert primary.to_send(limit=4) == {"b": (1, 4)}
    primary.acknowledged("b", 1, 4)
    assert primary.to_send(limit=4) == {"b": (5, 8)}
    primary.lost("b")
    assert primary.to_send(limit=4) == {"b": (5, 8)}  # resent after a timeout


def test_a_follower_with_a_gap_makes_the_primary_back_up():
    primary = PrimaryProgress(3, 2, ("b",), last=10)
    primary.refused("b", 2, 8)  # what the primary believed of b when it took over
    follower = FollowerLog(3, epoch=2, last=5)
    assert primary.to_send() == {"b": (9, 10)}
    with pytest.raises(ValueError) as gap:
        follower.offer(2, 9, 2)
    primary.refused("b", 2, gap.value.args[0])
    assert primary.to_send() == {"b": (6, 10)}
    assert follower.offer(2, 6, 5) == (6, 10)


def test_a_follower_behind_the_truncated_log_gets_a_resync():
    primary = PrimaryProgress(3, 1, ("b",), last=100, truncated=50)
    primary.refused("b", 1, 20)
    assert primary.to_send() == {"b": "resync"}
    follower = FollowerLog(3)
    follower.reset(1, 100)
    primary.acknowledged("b", 1, 100)
    assert primary.committed() == 100


def test_duplicates_are_skipped_and_an_old_epoch_is_refused():
    follower = FollowerLog(3, epoch=2, last=7)
    assert follower.offer(2, 5, 3) == (8, 7)  # everything known: an empty range
    with pytest.raises(StaleEpoch):
        follower.offer(1, 8, 1)
    assert follower.offer(3, 8, 2) == (8, 9) and follower.epoch == 3


def test_acknowledgements_from_another_epoch_or_stranger_are_ignored():
    primary = PrimaryProgress(3, 2, ("b", "c"), last=5)
    primary.acknowledged("b", 1, 5)
    primary.acknowledged("z", 2, 5)
    assert primary.committed() == 0
