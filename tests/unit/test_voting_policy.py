"""The voting leader's policy and the cluster state, driven by hand."""

from nodedb.voting.policy import HostView, VotingSettings, assignment_decision, membership_decisions, next_config
from nodedb.voting.state import MAX_EPOCH, Assignment, ClusterState, sequence_range

SETTINGS = VotingSettings(remove_after=60.0, replace_voter_after=10.0, min_free_bytes=0)


def cluster(hosts=("a",), partitions=4, replicas=3):
    state = ClusterState()
    state.apply({"op": "bootstrap", "cluster": "c1", "partitions": partitions, "replicas": replicas, "host": hosts[0], "address": "a:1", "at": 0.0})
    for host in hosts[1:]:
        state.apply({"op": "accept", "host": host, "address": f"{host}:1", "at": 0.0})
    return state


def views(*hosts, down=(), since=0.0, cluster_id="c1"):
    return {h: HostView(h, f"{h}:1", cluster_id, h not in down, since if h in down else None, 10**12) for h in hosts}


def test_joiners_are_accepted_and_strangers_refused():
    state = cluster()
    seen = views("a", "b")
    seen["x"] = HostView("x", "x:1", "other-cluster", True, None, 10**12)
    seen["y"] = HostView("y", "a:1", "c1", True, None, 10**12)  # claims a's address
    decisions, refusals = membership_decisions(state, seen, 5.0, SETTINGS)
    assert decisions == [{"op": "accept", "host": "b", "address": "b:1", "at": 5.0}]
    assert [host for host, _ in refusals] == ["x", "y"]


def test_a_member_gone_past_the_threshold_is_removed():
    state = cluster(("a", "b"))
    decisions, _ = membership_decisions(state, views("a", "b", down={"b"}, since=10.0), 69.0, SETTINGS)
    assert decisions == []
    decisions, _ = membership_decisions(state, views("a", "b", down={"b"}, since=10.0), 70.0, SETTINGS)
    assert decisions == [{"op": "remove", "host": "b", "at": 70.0}]


def test_removing_a_primary_gives_its_partitions_a_new_epoch_and_id_range():
    state = cluster(("a", "b", "c"))
    state.apply(assignment_decision(state, views("a", "b", "c"), SETTINGS))
    assert all(len(a.replicas) == 3 and a.primary == "a" for a in state.assignments.values())
    state.apply({"op": "remove", "host": "a", "at": 1.0})
    for assignment in state.assignments.values():
        assert assignment.primary in ("b", "c") and assignment.epoch == 1
    assert sequence_range(1)[0] > sequence_range(0)[1]


def test_a_partition_out_of_epochs_takes_no_new_primary():
    state = cluster(("a", "b"))
    state.assignments[0] = Assignment(("a", "b"), MAX_EPOCH)
    state.apply({"op": "remove", "host": "a", "at": 1.0})
    assert state.assignments[0] == Assignment((), MAX_EPOCH)
    decision = assignment_decision(state, views("b"), SETTINGS)
    assert decision is None or "0" not in decision["map"]


def test_stale_or_malformed_assignments_change_nothing():
    state = cluster(("a", "b"))
    before = state.to_snapshot()
    for bad in (
        {"op": "assign", "map": {"0": [["b", "a"], 0]}},  # a new primary without a new epoch
        {"op": "assign", "map": {"0": [["a", "zz"], 0]}},  # not a member
        {"op": "assign", "map": {"0": [["a", "a"], 0]}},  # twice
        {"op": "assign", "map": "nonsense"},
        {"op": "conquer"},
        "not even a map",
    ):
        assert not state.apply(bad)
    assert {k: v for k, v in state.to_snapshot().items() if k != "decisions"} == {
        k: v for k, v in before.items() if k != "decisions"
    }


def test_voters_follow_the_number_of_members_not_of_healthy_ones():
    state = cluster(("a", "b", "c"))
    # Everyone a learner first, then voters one at a time up to three.
    assert next_config({"a"}, set(), state, views("a", "b", "c"), 0.0, SETTINGS, "a") == ({"a"}, {"b", "c"})
    assert next_config({"a"}, {"b", "c"}, state, views("a", "b", "c"), 0.0, SETTINGS, "a") == ({"a", "b"}, {"c"})
    # A voter that is down, with no healthy member to take its place, stays: quorum 2 of 3.
    down = views("a", "b", "c", down={"c"}, since=0.0)
    assert next_config({"a", "b", "c"}, set(), state, down, 100.0, SETTINGS, "a") is None


def test_a_long_gone_voter_is_replaced_by_a_healthy_learner():
    state = cluster(("a", "b", "c", "d"))
    down = views("a", "b", "c", "d", down={"c"}, since=0.0)
    assert next_config({"a", "b", "c"}, {"d"}, state, down, 5.0, SETTINGS, "a") is None  # not long enough
    assert next_config({"a", "b", "c"}, {"d"}, state, down, 11.0, SETTINGS, "a") == ({"a", "b"}, {"c", "d"})
    assert next_config({"a", "b"}, {"c", "d"}, state, down, 12.0, SETTINGS, "a") == ({"a", "b", "d"}, {"c"})


def synced_views(state, *hosts, syncing=()):
    """Views in which every host has caught up on its copies, except *syncing* hosts."""
    return {
        h: HostView(
            h,
            f"{h}:1",
            "c1",
            True,
            None,
            10**12,
            partitions=frozenset(state.replica_partitions(h)),
            syncing=frozenset(state.replica_partitions(h)) if h in syncing else frozenset(),
        )
        for h in hosts
    }


def test_followers_are_rebalanced_onto_a_new_host_but_primaries_stay():
    state = cluster(("a", "b", "c"), partitions=8)
    state.apply(assignment_decision(state, views("a", "b", "c"), SETTINGS))
    state.apply({"op": "accept", "host": "d", "address": "d:1", "at": 1.0})
    # The new host gets extra copies first; while it is still syncing nothing is dropped.
    state.apply(assignment_decision(state, synced_views(state, "a", "b", "c", "d"), SETTINGS))
    moving = [p for p, a in state.assignments.items() if len(a.replicas) == 4]
    assert moving and all(state.assignments[p].replicas[-1] == "d" for p in moving)
    assert assignment_decision(state, synced_views(state, "a", "b", "c", "d", syncing=("d",)), SETTINGS) is None
    for _ in range(10):
        decision = assignment_decision(state, synced_views(state, "a", "b", "c", "d"), SETTINGS)
        if decision is None:
            break
        state.apply(decision)
        assert all(len(a.replicas) >= 3 for a in state.assignments.values())
    followers = {h: 0 for h in "bcd"}
    for assignment in state.assignments.values():
        assert assignment.primary == "a"
        for host in assignment.replicas[1:]:
            followers[host] += 1
    assert max(followers.values()) - min(followers.values()) <= 1
