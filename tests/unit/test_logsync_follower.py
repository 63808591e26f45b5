"""This host as a holder of copies (nodedb.logsync.follower): caught-up tracking, probes
answered without a write, and copies dropped after drop_after, with an explicit ``now``."""

from dataclasses import dataclass

import pytest

from nodedb.logsync.follower import Copies, Following, unchanged_state
from nodedb.storage import Append, Load, LogEntry


@dataclass
class State:
    partition: int = 0
    epoch: int = 2
    last_commit_id: int = 10
    last_epoch: int = 2
    followed: int = 2
    truncated: int = 0
    syncing: bool = False


# -- Following ---------------------------------------------------------------------------------


def test_a_copy_is_caught_up_once_it_reaches_the_primarys_end():
    following = Following()
    following.assign({0: 1, 3: 1})
    assert following.syncing() == [0, 3]
    following.answered(0, True, State(last_commit_id=4), 5)
    assert following.syncing() == [0, 3]
    following.answered(0, True, State(last_commit_id=5), 5)
    assert following.syncing() == [3]
    following.answered(0, True, State(last_commit_id=5), "5")  # malformed: no change
    assert following.syncing() == [3]


def test_a_refusal_a_resync_or_a_new_epoch_make_a_copy_syncing_again():
    following = Following()
    following.assign({0: 1, 1: 1, 2: 1})
    for partition in (0, 1, 2):
        following.answered(partition, True, State(), 10)
    assert following.syncing() == []
    following.answered(0, False, State(), 10)
    following.answered(1, True, State(syncing=True), 0)
    following.assign({0: 1, 1: 1, 2: 2})
    assert following.syncing() == [0, 1, 2]


def test_news_tells_each_change_once():
    following = Following()
    assert following.news() == []  # the first announcement
    assert following.news() is None
    following.assign({4: 1})
    assert following.news() == [4]
    assert following.news() is None
    following.answered(4, True, State(), 10)
    assert following.news() == []


# -- probes ------------------------------------------------------------------------------------


def probe(**changes):
    fields = {"partition": 0, "epoch": 2, "prev": (10, 2), "entries": [], "truncate": 0, "start": 10}
    fields.update(changes)
    return Append(**fields)


def state_of(state):
    def read(partition):
        assert partition == state.partition
        return state

    return read


def test_a_probe_at_the_end_of_a_followed_log_changes_nothing():
    state = State()
    assert unchanged_state([probe()], state_of(state)) is state
    assert unchanged_state([probe(start=99)], state_of(State(followed=1))) is not None  # not there yet


@pytest.mark.parametrize(
    "units, state",
    [
        ([probe(epoch=3)], State()),  # a newer epoch: promised on the way
        ([probe(prev=(9, 2))], State()),  # not at our end
        ([probe()], State(syncing=True)),
        ([probe(start=5)], State(followed=1)),  # records that we follow the epoch now
        ([probe(truncate=8)], State()),  # drops log entries
    ],
)
def test_a_probe_that_would_change_something_goes_to_storage(units, state):
    assert unchanged_state(units, state_of(state)) is None


def test_only_a_lone_append_without_entries_is_a_probe():
    entry = LogEntry(0, 11, 2, 1.0, 0, "doc", 1, b"x")
    never = state_of(None)
    assert unchanged_state([probe(entries=[entry])], never) is None
    assert unchanged_state([probe(), probe()], never) is None
    assert unchanged_state([Load(0, 2, [], None)], never) is None


# -- Copies ------------------------------------------------------------------------------------


def test_a_copy_no_longer_held_is_dropped_after_drop_after():
    copies = Copies(drop_after=60.0)
    assert copies.due(0.0) == []  # nothing counted yet
    copies.found({1, 2, 7})
    copies.assigned({1, 2})
    assert copies.due(10.0) == []  # 7 is an orphan from now on
    assert copies.due(69.9) == []
    assert copies.due(70.0) == [7]
    assert copies.due(200.0) == []  # forgotten
    assert copies.known == {1, 2}


def test_a_copy_held_again_in_time_is_kept():
    copies = Copies(drop_after=60.0)
    copies.found(set())
    copies.assigned({3, 4})
    copies.assigned({4})
    assert copies.due(0.0) == []
    copies.assigned({3, 4})
    assert copies.due(59.0) == []
    copies.assigned({4})
    assert copies.due(100.0) == []  # orphaned again at 100: the clock starts over
    assert copies.due(160.0) == [3]
