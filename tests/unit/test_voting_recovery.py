"""Recovery from a lost majority, its pure parts driven by hand: the plan, the decision it
commits, how the cluster state applies it, and the fence that keeps removed hosts out."""

from types import SimpleNamespace

import pytest
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.voting.policy import membership_decisions
from nodedb.voting.recovery import Fence, plan_recovery, recover_decision, removal_reason
from nodedb.voting.state import Assignment, ClusterState

from test_voting_policy import SETTINGS, cluster, set_map, views


def three_hosts_two_gone():
    state = cluster(("a", "b", "c"), partitions=4)
    set_map(state, {0: "abc", 1: "bca", 2: "cab", 3: "ab"}, epoch=2)
    return state, views("a", "b", "c", down=("a", "b"))


def test_a_lost_majority_plans_new_primaries_from_the_live_copies():
    state, seen = three_hosts_two_gone()
    plan = plan_recovery(state, {"a", "b", "c"}, seen, "c")
    assert plan.needed and plan.voting_lost
    assert plan.live == {"c"} and plan.dead == ("a", "b")
    assert plan.short == {0, 1, 2, 3}
    assert plan.elections == {0: (3, ("c",)), 1: (3, ("c",)), 2: (3, ("c",)), 3: (3, ())}


def test_a_live_majority_has_nothing_to_recover():
    state, _ = three_hosts_two_gone()
    set_map(state, {3: "bc"}, epoch=2)
    plan = plan_recovery(state, {"a", "b", "c"}, views("a", "b", "c", down=("a",)), "c")
    assert not plan.needed and not plan.short
    # Partition 0 lost its primary but keeps a live majority: a recovery would elect among
    # them (the normal failover does it as well).
    assert plan.elections == {0: (3, ("b", "c"))}


def test_partitions_short_of_a_majority_need_recovery_even_with_live_voting():
    state, _ = three_hosts_two_gone()
    state.apply({"op": "accept", "host": "d", "address": "d:1", "at": 0.0})
    set_map(state, {0: "abd"}, epoch=0)
    seen = views("a", "b", "c", "d", down=("a", "b"))
    plan = plan_recovery(state, {"c", "d", "a"}, seen, "c")
    assert plan.needed and not plan.voting_lost and 0 in plan.short


def test_only_a_member_recovers():
    state, seen = three_hosts_two_gone()
    with pytest.raises(errors.InvalidRequest, match="not a member"):
        plan_recovery(state, {"a", "b", "c"}, seen, "stranger")
    with pytest.raises(errors.InvalidRequest, match="not a member"):
        plan_recovery(ClusterState(), set(), {}, "c")


def test_the_decision_removes_fences_and_reassigns_at_a_new_epoch():
    state, seen = three_hosts_two_gone()
    plan = plan_recovery(state, {"a", "b", "c"}, seen, "c")
    decision = recover_decision(plan, {0: "c", 1: "c", 2: "c"}, at=7.0)
    assert state.apply(decision)
    assert set(state.members) == {"c"} and set(state.removed) == {"a", "b"}
    assert state.assignments == {p: Assignment(("c",), 3) for p in (0, 1, 2)} | {3: Assignment((), 3)}
    assert state.recoveries == 1
    assert state.fenced == {h: {"recovery": 1, "by": "c", "at": 7.0} for h in ("a", "b")}
    assert ClusterState.from_snapshot(state.to_snapshot()).fenced == state.fenced
    # The survivors' policy never takes a fenced host back, even under its old id.
    decisions, refusals = membership_decisions(state, views("a", "c"), 8.0, SETTINGS)
    assert decisions == [] and [h for h, _ in refusals] == ["a"]
    assert not state.apply({"op": "accept", "host": "a", "address": "a:1", "at": 9.0})


def test_a_reassignment_older_than_the_map_is_ignored():
    state, seen = three_hosts_two_gone()
    plan = plan_recovery(state, {"a", "b", "c"}, seen, "c")
    set_map(state, {0: "c"}, epoch=5)  # the map moved on meanwhile
    state.apply(recover_decision(plan, {0: "c"}, at=1.0))
    assert state.assignments[0] == Assignment(("c",), 5)


def channel(role="peer", host=None):
    return SimpleNamespace(role=role, peer_host=host)


def test_the_recovered_cluster_refuses_the_removed_hosts_peer_requests():
    state, seen = three_hosts_two_gone()
    state.apply(recover_decision(plan_recovery(state, {"a", "b", "c"}, seen, "c"), {}, at=1.0))
    fence = Fence(lambda: state, on_fenced=None)
    with pytest.raises(errors.Fenced, match="host a was removed .* by recovery 1 through host c: wipe"):
        fence.admit("raft.message", channel(host="a"))
    fence.admit("raft.message", channel(host="d"))
    fence.admit("get", channel(role="client"))
    assert removal_reason(None, "a") is None


def test_a_removed_host_stops_serving_once_refused():
    learned = []
    fence = Fence(lambda: None, learned.append)
    remote = errors.Fenced("host a was removed")
    remote.remote = True
    for refusal in (Failure(errors.Fenced("said here, not by a peer")), Failure(errors.Unavailable("x")), Failure(remote)):
        fence._refused(refusal)
    fence._refused(Failure(remote))
    assert learned == ["host a was removed"]
    with pytest.raises(errors.Unavailable, match="host a was removed") as refused:
        fence.admit("insert", channel(role="client"))
    assert not isinstance(refused.value, errors.Fenced)  # so peers do not take it for their own removal
    fence.admit("status", channel(role="client"))
