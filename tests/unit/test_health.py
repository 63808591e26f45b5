"""nodedb.health: the verdict, the problems and the fault tolerance, from hand-built views."""

import pytest

from nodedb.health import assess
from nodedb.voting.policy import HostView
from nodedb.voting.state import Assignment, ClusterState

MAX_VOTERS = 5


def cluster(hosts, partitions=8, replicas=3):
    """A cluster whose every partition has every one of *hosts* (up to *replicas*) as
    replicas, primaries spread round-robin."""
    state = ClusterState()
    state.apply({"op": "bootstrap", "cluster": "c1", "partitions": partitions, "replicas": replicas, "host": hosts[0], "address": "a:1", "at": 0.0})
    for host in hosts[1:]:
        state.apply({"op": "accept", "host": host, "address": f"{host}:1", "at": 0.0})
    size = min(replicas, len(hosts))
    for partition in range(partitions):
        replicas_of = [hosts[(partition + i) % len(hosts)] for i in range(size)]
        state.assignments[partition] = Assignment(tuple(replicas_of), 1)
    return state


def views(state, down=(), syncing=None):
    """Every member's view: available unless in *down*, holding its partitions caught up
    except those *syncing* lists for it."""
    syncing = syncing or {}
    return {
        host: HostView(
            host,
            f"{host}:1",
            "c1",
            available=host not in down,
            partitions=frozenset(state.replica_partitions(host)),
            syncing=frozenset(syncing.get(host, ())),
        )
        for host in state.members
    }


def health(state, seen, leader="a", voters=None):
    return assess(state, leader, sorted(state.members) if voters is None else voters, seen, MAX_VOTERS)


def test_a_lone_node_is_healthy_but_can_lose_nothing():
    state = cluster(["a"])
    report = health(state, views(state))
    assert report == {
        "healthy": True,
        "problems": [],
        "leader": "a",
        "voters": {"have": 1, "want": 1},
        "partitions": 8,
        "partitions_without_primary": {"count": 0, "first": []},
        "under_replicated": {"count": 0, "first": []},
        "fault_tolerance": 0,
    }


def test_three_live_hosts_can_lose_one():
    state = cluster(["a", "b", "c"])
    report = health(state, views(state))
    assert report["healthy"] and report["problems"] == []
    assert report["voters"] == {"have": 3, "want": 3}
    assert report["fault_tolerance"] == 1


def test_five_live_hosts_with_three_replicas_can_still_lose_only_one():
    state = cluster(["a", "b", "c", "d", "e"])
    report = health(state, views(state))
    assert report["healthy"] and report["voters"] == {"have": 5, "want": 5}
    assert report["fault_tolerance"] == 1  # Voting could lose 2, a replica set only 1


def test_five_replicas_on_five_hosts_can_lose_two():
    state = cluster(["a", "b", "c", "d", "e"], replicas=5)
    assert health(state, views(state))["fault_tolerance"] == 2


def test_one_host_down_of_three_after_failover_is_healthy_with_no_margin():
    state = cluster(["a", "b", "c"])
    for partition, assignment in state.assignments.items():  # c's partitions failed over
        if assignment.primary == "c":
            rest = [h for h in assignment.replicas if h != "c"]
            state.assignments[partition] = Assignment((rest[0], "c", *rest[1:]), assignment.epoch + 1)
    report = health(state, views(state, down={"c"}))
    assert report["healthy"]
    assert report["voters"] == {"have": 2, "want": 3}
    assert report["fault_tolerance"] == 0
    assert report["under_replicated"] == {"count": 8, "first": [0, 1, 2, 3, 4]}
    assert report["problems"] == ["8 partitions under-replicated (2 of 3 copies live and caught up)"]


def test_a_primary_that_is_down_before_failover_makes_it_unhealthy():
    state = cluster(["a", "b", "c"], partitions=6)
    report = health(state, views(state, down={"c"}))
    assert not report["healthy"]
    # Partitions 2 and 5 are led by c.
    assert report["partitions_without_primary"] == {"count": 2, "first": [2, 5]}
    assert report["problems"] == [
        "2 partitions have no live primary: 2, 5",
        "4 partitions under-replicated (2 of 3 copies live and caught up)",
    ]
    assert report["fault_tolerance"] == 0


def test_a_majority_down_is_unhealthy():
    state = cluster(["a", "b", "c"], partitions=3)
    report = health(state, views(state, down={"b", "c"}))
    assert not report["healthy"]
    assert report["voters"] == {"have": 1, "want": 3}
    assert report["problems"] == [
        "voting has 1 of 3 live voters, needs 2",
        "2 partitions have no live primary: 1, 2",
        "partition 0 has no live majority (1 of 3 copies live and caught up)",
    ]
    assert report["under_replicated"]["count"] == 3
    assert report["fault_tolerance"] == 0


def test_no_leader_or_a_dead_one_is_unhealthy():
    state = cluster(["a", "b", "c"])
    report = health(state, views(state), leader=None)
    assert not report["healthy"] and report["problems"] == ["no Voting leader"]
    assert report["leader"] is None and report["fault_tolerance"] == 0
    report = health(state, views(state, down={"b"}), leader="b")
    assert "the Voting leader b is down" in report["problems"]
    assert not report["healthy"]


def test_a_syncing_replica_is_not_a_copy_yet():
    state = cluster(["a", "b", "c"], partitions=3)
    report = health(state, views(state, syncing={"c": [0, 1]}))
    assert report["healthy"]
    assert report["under_replicated"] == {"count": 2, "first": [0, 1]}
    assert report["problems"] == ["2 partitions under-replicated (2 of 3 copies live and caught up)"]
    assert report["fault_tolerance"] == 0
    assert health(state, views(state, syncing={"c": [0]}))["problems"] == [
        "partition 0 is under-replicated (2 of 3 copies live and caught up)"
    ]
    report = health(state, views(state, syncing={"b": [0], "c": [0]}))
    assert not report["healthy"]
    assert report["problems"][0] == "partition 0 has no live majority (1 of 3 copies live and caught up)"


def test_a_replica_not_yet_listed_by_its_host_is_not_a_copy_yet():
    state = cluster(["a", "b", "c"], partitions=1)
    seen = views(state)
    seen["c"] = HostView("c", "c:1", "c1", partitions=frozenset())
    assert health(state, seen)["under_replicated"]["count"] == 1


def test_a_replica_set_still_growing_is_under_replicated():
    state = cluster(["a", "b"], partitions=2)
    state.apply({"op": "accept", "host": "c", "address": "c:1", "at": 0.0})
    report = health(state, views(state), voters=["a"])
    assert report["healthy"]
    assert report["voters"] == {"have": 1, "want": 3}
    assert report["problems"] == [
        "voting has 1 voter, wants 3",
        "2 partitions under-replicated (2 of 3 copies live and caught up)",
    ]
    assert report["fault_tolerance"] == 0


def test_a_partition_out_of_epochs_has_no_primary():
    state = cluster(["a"], partitions=2)
    state.assignments[1] = Assignment((), 7)
    report = health(state, views(state))
    assert not report["healthy"]
    assert report["problems"] == ["partition 1 has no live primary"]


def test_many_partitions_make_one_short_line_each():
    state = cluster(["a", "b", "c"], partitions=64)
    report = health(state, views(state, down={"a", "b"}), leader="c")
    assert report["partitions_without_primary"]["count"] == 43
    assert report["partitions_without_primary"]["first"] == [0, 1, 3, 4, 6]
    assert "43 partitions have no live primary: 0, 1, 3, 4, 6, ..." in report["problems"]
    assert len(report["problems"]) == 3


def test_a_host_that_knows_no_cluster_yet_is_unhealthy():
    report = assess(ClusterState(), None, [], {}, MAX_VOTERS)
    assert not report["healthy"]
    assert report["problems"][0] == "this host has not learned the cluster state yet"
    assert report["partitions"] == 0 and report["fault_tolerance"] == 0


@pytest.mark.parametrize("down, tolerance", [((), 1), (("e",), 1), (("d", "e"), 0)])
def test_fault_tolerance_never_goes_negative_and_follows_the_weakest_majority(down, tolerance):
    state = cluster(["a", "b", "c", "d", "e"], partitions=1)  # partition 0 on a, b, c
    report = health(state, views(state, down=set(down)))
    assert report["healthy"]
    assert report["fault_tolerance"] == tolerance
