"""The voting leader's policy and the cluster state, driven by hand."""

import pytest

from nodedb.voting.policy import (
    HostView,
    VotingSettings,
    admission_decisions,
    assignment_decision,
    failover_assignment,
    failover_partitions,
    membership_decisions,
    next_config,
    primary_moves,
)
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


def set_map(state, replica_sets, epoch=0):
    """Set replica sets directly (decisions change them one replica at a time; these tests
    start from arbitrary ones)."""
    for partition, replicas in replica_sets.items():
        state.assignments[partition] = Assignment(tuple(replicas), epoch)


def fill(state, *hosts):
    """Apply the leader's assignment decisions, every copy catching up at once, until it has
    none (each adds at most one replica per partition)."""
    for _ in range(20):
        decision = assignment_decision(state, synced_views(state, *hosts), SETTINGS)
        if decision is None:
            return
        state.apply(decision)
    raise AssertionError("the assignments never settled")


def test_a_replica_set_grows_one_replica_per_decision_once_its_majority_caught_up():
    state = cluster(("a", "b", "c"))
    state.apply(assignment_decision(state, synced_views(state, "a", "b", "c"), SETTINGS))
    assert all(len(a.replicas) == 2 for a in state.assignments.values())
    # The second copy has not caught up: a third now would make a majority ({b, c}) that
    # lacks the writes the primary acknowledged alone.
    assert assignment_decision(state, synced_views(state, "a", "b", "c", syncing="bc"), SETTINGS) is None
    state.apply(assignment_decision(state, synced_views(state, "a", "b", "c"), SETTINGS))
    assert all(len(a.replicas) == 3 for a in state.assignments.values())


def test_a_set_whose_second_copy_has_not_caught_up_is_not_grown_by_rebalancing_either():
    # The chaos campaign's seed 174: every set was {a, b} with b behind (it had been killed);
    # the fill waited, but the rebalance "moved" b's follower copies to c by adding c first,
    # and a's death then left {b, c} (neither holding a's acknowledged writes) to elect from.
    state = cluster(("a", "b", "c"), partitions=8)
    set_map(state, {p: ("a", "b") for p in range(8)})
    assert assignment_decision(state, synced_views(state, "a", "b", "c", syncing="b"), SETTINGS) is None
    decision = assignment_decision(state, synced_views(state, "a", "b", "c"), SETTINGS)
    assert all(replicas == ["a", "b", "c"] for replicas, _epoch in decision["map"].values())


def test_the_state_refuses_a_replica_set_that_changes_by_more_than_one():
    state = cluster(("a", "b", "c"))
    assert not state.apply({"op": "assign", "map": {"0": [["a", "b", "c"], 0]}})
    assert state.apply({"op": "assign", "map": {"0": [["a", "b"], 0]}})
    assert not state.apply({"op": "assign", "map": {"0": [["a", "c"], 0]}})  # b out, c in


def test_a_member_gone_past_the_threshold_is_removed():
    state = cluster(("a", "b"))
    decisions, _ = membership_decisions(state, views("a", "b", down={"b"}, since=10.0), 69.0, SETTINGS)
    assert decisions == []
    decisions, _ = membership_decisions(state, views("a", "b", down={"b"}, since=10.0), 70.0, SETTINGS)
    assert decisions == [{"op": "remove", "host": "b", "at": 70.0}]


def test_removing_a_primary_gives_its_partitions_a_new_epoch_and_id_range():
    state = cluster(("a", "b", "c"))
    fill(state, "a", "b", "c")
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
    # Everyone a learner first; then the lone voter grows straight to three.
    assert next_config({"a"}, set(), state, views("a", "b", "c"), 0.0, SETTINGS, "a") == ({"a"}, {"b", "c"})
    assert next_config({"a"}, {"b", "c"}, state, views("a", "b", "c"), 0.0, SETTINGS, "a") == ({"a", "b", "c"}, set())
    # A voter that is down, with no healthy member to take its place, stays: quorum 2 of 3.
    down = views("a", "b", "c", down={"c"}, since=0.0)
    assert next_config({"a", "b", "c"}, set(), state, down, 100.0, SETTINGS, "a") is None


def test_a_lone_voter_waits_for_two_healthy_members_rather_than_make_two_voters():
    state = cluster(("a", "b", "c"))
    one_down = views("a", "b", "c", down={"c"}, since=0.0)
    assert next_config({"a"}, {"b", "c"}, state, one_down, 1.0, SETTINGS, "a") is None
    # Two members: one voter is what the count allows (two would tolerate no more failures).
    pair = cluster(("a", "b"))
    assert next_config({"a"}, {"b"}, pair, views("a", "b"), 1.0, SETTINGS, "a") is None
    # Five members: straight from one to five.
    five = cluster(tuple("abcde"))
    assert next_config({"a"}, set("bcde"), five, views(*"abcde"), 1.0, SETTINGS, "a") == (set("abcde"), set())
    # Three voters grow to five one at a time (four tolerates one failure, as three does).
    assert next_config(set("abc"), set("de"), five, views(*"abcde"), 1.0, SETTINGS, "a") == (set("abcd"), {"e"})


def test_a_member_is_admitted_once_a_voter_where_wanted_and_caught_up():
    state = cluster(("a", "b", "c"))
    assert state.admitted("a") and not state.admitted("b") and not state.admitted("c")
    # Not yet: b and c hold no copies while partitions lack replicas, and they are learners.
    assert admission_decisions(state, {"a"}, set("abcd"), synced_views(state, "a", "b", "c"), SETTINGS) == []
    fill(state, "a", "b", "c")
    assert admission_decisions(state, {"a"}, set("abcd"), synced_views(state, "a", "b", "c"), SETTINGS) == []
    # Voters, but c has not caught up.
    decisions = admission_decisions(state, set("abc"), set("abcd"), synced_views(state, "a", "b", "c", syncing="c"), SETTINGS)
    assert decisions == [{"op": "admit", "host": "b"}]
    for decision in admission_decisions(state, set("abc"), set("abcd"), synced_views(state, "a", "b", "c"), SETTINGS):
        assert state.apply(decision)
    assert all(state.admitted(h) for h in "abc")
    assert admission_decisions(state, set("abc"), set("abcd"), synced_views(state, "a", "b", "c"), SETTINGS) == []
    # A fourth host is admitted at once: three voters are what four members want, and no
    # partition lacks a replica (it gets copies by rebalancing later).
    state.apply({"op": "accept", "host": "d", "address": "d:1", "at": 1.0})
    assert admission_decisions(state, set("abc"), set("abcd"), synced_views(state, *"abcd"), SETTINGS) == [{"op": "admit", "host": "d"}]
    # Not while its Raft log lacks committed decisions: it would not hold the agreed state.
    assert admission_decisions(state, set("abc"), set("abc"), synced_views(state, *"abcd"), SETTINGS) == []


def test_admission_survives_a_snapshot_and_a_new_address():
    state = cluster(("a", "b"))
    state.apply({"op": "admit", "host": "b"})
    state.apply({"op": "accept", "host": "b", "address": "b:2", "at": 3.0})
    restored = ClusterState.from_snapshot(state.to_snapshot())
    assert restored.admitted("b") and restored.members["b"]["address"] == "b:2"
    assert not restored.apply({"op": "admit", "host": "zz"})
    # Members recorded before admission existed count as admitted.
    legacy = state.to_snapshot()
    legacy["members"] = {h: {"address": m["address"], "accepted": m["accepted"]} for h, m in legacy["members"].items()}
    assert ClusterState.from_snapshot(legacy).admitted("b")


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
    fill(state, "a", "b", "c")
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


# -- failover ----------------------------------------------------------------------------------


def replicated(hosts=("a", "b", "c"), partitions=4, replicas=3, primary="a"):
    """A cluster whose every partition has *hosts* as its replica set, *primary* first."""
    state = cluster(tuple(dict.fromkeys((primary, *hosts))), partitions=partitions, replicas=replicas)
    order = [primary, *[h for h in hosts if h != primary]]
    for size in range(2, len(order) + 1):  # one replica at a time, as decisions go
        assert state.apply({"op": "assign", "map": {str(p): [order[:size], 0] for p in range(partitions)}})
    return state


def test_a_partition_fails_over_once_its_primary_was_unavailable_long_enough():
    state = replicated()
    seen = views("a", "b", "c", down={"a"}, since=10.0)
    assert failover_partitions(state, seen, 10.4, SETTINGS) == set()
    assert failover_partitions(state, seen, 10.5, SETTINGS) == {0, 1, 2, 3}
    assert failover_partitions(state, seen, 500.0, SETTINGS) == {0, 1, 2, 3}


def test_no_failover_while_the_primary_is_available_or_only_a_follower_is_down():
    state = replicated()
    assert failover_partitions(state, views("a", "b", "c"), 100.0, SETTINGS) == set()
    assert failover_partitions(state, views("a", "b", "c", down={"b", "c"}, since=0.0), 100.0, SETTINGS) == set()
    # Unavailable, but with no time it became so: not counted as down long enough.
    seen = views("a", "b", "c")
    seen["a"] = HostView("a", "a:1", "c1", False, None, 10**12)
    assert failover_partitions(state, seen, 100.0, SETTINGS) == set()
    # A primary the leader has no view of at all is not failed over on that account.
    assert failover_partitions(state, views("b", "c"), 100.0, SETTINGS) == set()


def test_only_the_partitions_of_the_down_primary_fail_over():
    state = replicated()
    assert state.apply({"op": "assign", "map": {"1": [["b", "a", "c"], 1], "3": [["c", "a", "b"], 1]}})
    seen = views("a", "b", "c", down={"a"}, since=0.0)
    assert failover_partitions(state, seen, 1.0, SETTINGS) == {0, 2}


def test_a_partition_with_one_replica_never_fails_over():
    state = cluster(("a", "b"), replicas=1)
    assert all(len(a.replicas) == 1 for a in state.assignments.values())
    seen = views("a", "b", down={"a"}, since=0.0)
    assert failover_partitions(state, seen, 1000.0, SETTINGS) == set()
    assert failover_partitions(state, seen, 1000.0, SETTINGS, wanted={0: 0, 1: 0}) == set()


def test_a_primary_that_asked_for_an_election_of_its_epoch_gets_one():
    state = replicated()
    assert state.apply({"op": "assign", "map": {"2": [["a", "b", "c"], 3]}})
    seen = views("a", "b", "c")
    assert failover_partitions(state, seen, 0.0, SETTINGS, wanted={0: 0, 2: 3}) == {0, 2}
    # A wish for an epoch the partition has left (or not reached) is stale.
    assert failover_partitions(state, seen, 0.0, SETTINGS, wanted={0: 1, 2: 2}) == set()


def test_a_partition_out_of_epochs_does_not_fail_over():
    state = replicated()
    state.assignments[0] = Assignment(("a", "b", "c"), MAX_EPOCH)
    seen = views("a", "b", "c", down={"a"}, since=0.0)
    assert failover_partitions(state, seen, 100.0, SETTINGS, wanted={0: MAX_EPOCH}) == {1, 2, 3}


def test_failover_assignment_puts_the_new_primary_first_keeps_the_old_one_and_raises_the_epoch():
    old = Assignment(("a", "b", "c"), 4)
    assert failover_assignment(old, "c") == Assignment(("c", "a", "b"), 5)
    assert failover_assignment(old, "b") == Assignment(("b", "a", "c"), 5)
    assert failover_assignment(old, "a") == Assignment(("a", "b", "c"), 5)  # re-elected: a new epoch still
    assert failover_assignment(Assignment(("a", "b"), 0), "b") == Assignment(("b", "a"), 1)


def test_a_failover_assignment_is_accepted_by_the_cluster_state():
    state = replicated()
    new = failover_assignment(state.assignments[0], "b")
    assert state.apply({"op": "assign", "map": {"0": new.to_data()}})
    assert state.assignments[0] == Assignment(("b", "a", "c"), 1)


def test_a_host_that_leads_a_replicated_partition_is_not_removed_until_it_failed_over():
    state = replicated()
    seen = views("a", "b", "c", down={"a"}, since=0.0)
    decisions, _ = membership_decisions(state, seen, 1000.0, SETTINGS)
    assert decisions == []
    # Once every partition it led has failed over, it goes.
    changes = {str(p): failover_assignment(state.assignments[p], "b").to_data() for p in range(2)}
    assert state.apply({"op": "assign", "map": changes})
    assert membership_decisions(state, seen, 1000.0, SETTINGS)[0] == []  # still leads 2 and 3
    changes = {str(p): failover_assignment(state.assignments[p], "c").to_data() for p in (2, 3)}
    assert state.apply({"op": "assign", "map": changes})
    decisions, _ = membership_decisions(state, seen, 1000.0, SETTINGS)
    assert decisions == [{"op": "remove", "host": "a", "at": 1000.0}]


def test_a_follower_and_a_lone_primary_are_removed_as_usual():
    state = replicated()
    decisions, _ = membership_decisions(state, views("a", "b", "c", down={"c"}, since=0.0), 1000.0, SETTINGS)
    assert decisions == [{"op": "remove", "host": "c", "at": 1000.0}]
    # A host that leads only partitions it holds alone has nothing to fail over to.
    alone = cluster(("a", "b"), replicas=1)
    decisions, _ = membership_decisions(alone, views("a", "b", down={"a"}, since=0.0), 1000.0, SETTINGS)
    assert decisions == [{"op": "remove", "host": "a", "at": 1000.0}]


# -- planned primary moves ---------------------------------------------------------------------


def moves_settings(per_round):
    return VotingSettings(remove_after=60.0, replace_voter_after=10.0, min_free_bytes=0, moves_per_round=per_round)


def led_after(state, moves):
    counts = {h: 0 for h in state.members}
    for partition, assignment in state.assignments.items():
        counts[moves.get(partition, assignment.primary)] += 1
    return counts


def apply_moves(state, moves):
    changes = {str(p): failover_assignment(state.assignments[p], host).to_data() for p, host in moves.items()}
    if changes:
        assert state.apply({"op": "assign", "map": changes})


def test_primaries_move_from_the_busiest_host_to_in_sync_followers():
    state = replicated(partitions=8)
    moves = primary_moves(state, synced_views(state, "a", "b", "c"), moves_settings(4))
    assert moves == {0: "b", 1: "c", 2: "b", 3: "c"}


def test_at_most_moves_per_round_and_no_more_than_evens_out():
    state = replicated(partitions=8)
    seen = synced_views(state, "a", "b", "c")
    assert primary_moves(state, seen, moves_settings(1)) == {0: "b"}
    moves = primary_moves(state, seen, moves_settings(100))
    assert all(host in ("b", "c") for host in moves.values())
    counts = led_after(state, moves)
    assert sum(counts.values()) == 8 and max(counts.values()) - min(counts.values()) <= 1
    # Done: once applied, nothing more moves.
    apply_moves(state, moves)
    assert primary_moves(state, synced_views(state, "a", "b", "c"), moves_settings(100)) == {}


def test_rounds_of_moves_converge_and_then_stop():
    state = replicated(partitions=9)
    for _ in range(10):
        moves = primary_moves(state, synced_views(state, "a", "b", "c"), moves_settings(2))
        assert len(moves) <= 2
        if not moves:
            break
        apply_moves(state, moves)
    else:
        raise AssertionError("primary moves did not settle")
    assert sorted(state.primary_partitions(h).__len__() for h in "abc") == [3, 3, 3]


def test_no_move_when_balanced_within_one():
    state = replicated(partitions=4)
    apply_moves(state, {1: "b", 2: "c"})  # a leads 2, b 1, c 1
    assert primary_moves(state, synced_views(state, "a", "b", "c"), moves_settings(10)) == {}
    # Two apart is not balanced: a leads 2, b and c none.
    state = replicated(partitions=2)
    assert primary_moves(state, synced_views(state, "a", "b", "c"), moves_settings(10)) == {0: "b"}


def test_no_move_of_a_partition_with_a_syncing_follower():
    state = replicated(partitions=8)
    seen = synced_views(state, "a", "b", "c")
    seen["b"] = HostView("b", "b:1", "c1", True, None, 10**12, partitions=frozenset(range(8)), syncing=frozenset({0, 1}))
    seen["c"] = HostView("c", "c:1", "c1", True, None, 10**12, partitions=frozenset(range(1, 8)))  # no copy of 0 yet
    moves = primary_moves(state, seen, moves_settings(4))
    assert 0 not in moves and 1 not in moves
    assert moves == {2: "b", 3: "c", 4: "b", 5: "c"}


def test_no_move_to_or_with_an_unavailable_follower():
    state = cluster(("a", "b", "c", "d"), partitions=8)
    set_map(state, {p: ("a", "b", "c") if p < 4 else ("a", "c", "d") for p in range(8)})
    seen = synced_views(state, "a", "b", "c", "d")
    seen["b"] = HostView("b", "b:1", "c1", False, 5.0, 10**12, partitions=frozenset(range(4)))
    moves = primary_moves(state, seen, moves_settings(100))
    assert moves and set(moves) <= {4, 5, 6, 7}
    assert "b" not in moves.values()


def test_no_move_away_from_an_unavailable_primary():
    state = replicated(partitions=8)
    seen = synced_views(state, "a", "b", "c")
    seen["a"] = HostView("a", "a:1", "c1", False, 5.0, 10**12, partitions=frozenset(range(8)))
    assert primary_moves(state, seen, moves_settings(100)) == {}


def test_no_move_of_a_partition_whose_replica_set_is_being_changed():
    state = cluster(("a", "b", "c", "d"), partitions=8)
    changes = {p: ("a", "b", "c") for p in range(8)}
    changes[0] = ("a", "b", "c", "d")  # a follower move under way: one replica too many
    changes[1] = ("a", "b")  # still filling up
    set_map(state, changes)
    seen = synced_views(state, "a", "b", "c", "d")
    moves = primary_moves(state, seen, moves_settings(100))
    assert moves and 0 not in moves and 1 not in moves


def test_a_faster_follower_takes_more_primaries():
    state = replicated(partitions=8)
    seen = synced_views(state, "a", "b", "c")
    seen["b"] = HostView("b", "b:1", "c1", True, None, 10**12, cpu_rating=3.0, partitions=frozenset(range(8)))
    moves = primary_moves(state, seen, moves_settings(100))
    counts = led_after(state, moves)
    assert counts["b"] > counts["c"]


def settle(state, seen, per_round=4, rounds=20):
    for _ in range(rounds):
        moves = primary_moves(state, seen, moves_settings(per_round))
        if not moves:
            return
        apply_moves(state, moves)
    raise AssertionError("primary moves did not settle")


def worthwhile_moves(state, seen):
    """``(partition, follower)`` that the move rule itself (a follower leading at least two
    fewer, and lighter by CPU-weighted count even after taking one more) would accept."""
    led = {h: len(state.primary_partitions(h)) for h in seen}

    def weight(host, extra=0):
        return (led[host] + extra) / max(seen[host].cpu_rating, 0.1)

    found = []
    for partition, assignment in sorted(state.assignments.items()):
        for follower in assignment.replicas[1:]:
            if led[assignment.primary] - led[follower] > 1 and weight(follower, 1) < weight(assignment.primary):
                found.append((partition, follower))
    return found


def with_cpu(seen, host, rating):
    view = seen[host]
    return {**seen, host: HostView(host, view.address, view.cluster_id, True, None, view.free_bytes, cpu_rating=rating,
                                   partitions=view.partitions, syncing=view.syncing)}


def test_a_slow_follower_does_not_keep_a_fast_one_from_taking_primaries():
    state = replicated(partitions=8)
    seen = with_cpu(synced_views(state, "a", "b", "c"), "b", 0.1)
    settle(state, seen)
    assert len(state.primary_partitions("c")) >= 3
    assert worthwhile_moves(state, seen) == []


def test_moves_stop_only_when_no_follower_would_even_things_out():
    state = replicated(partitions=8)
    seen = with_cpu(synced_views(state, "a", "b", "c"), "b", 3.0)
    settle(state, seen)
    assert worthwhile_moves(state, seen) == []


def test_no_follower_move_in_a_replica_set_with_a_host_that_is_down():
    state = cluster(("a", "b", "c"), partitions=8)
    fill(state, "a", "b", "c")
    state.apply({"op": "accept", "host": "d", "address": "d:1", "at": 1.0})
    seen = synced_views(state, "a", "b", "c", "d")
    seen["c"] = HostView("c", "c:1", "c1", False, 5.0, 10**12, partitions=frozenset(range(8)))
    # Every set holds c, which is down: a newcomer would be needed for a majority until it
    # caught up, and the move could not finish. Nothing moves until c is back or removed.
    assert assignment_decision(state, seen, SETTINGS) is None
