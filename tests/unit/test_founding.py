"""Founding a cluster: alone, or with every host --bootstrap-expect names."""

from nodedb.voting.formation import bootstrap_decision, initial_map
from nodedb.voting.state import ClusterState

IDENTITY = {"host_id": "a", "cluster_id": "c1", "partitions": 8, "replicas": 3}


def test_alone_the_founder_holds_everything_at_once():
    decision = bootstrap_decision(IDENTITY, "a:1", 5.0, {}, expect=1)
    state = ClusterState()
    assert state.apply(decision)
    assert list(state.members) == ["a"] and state.admitted("a")
    assert all(a.replicas == ("a",) for a in state.assignments.values())


def test_the_founder_waits_for_the_expected_hosts_then_places_copies_on_all():
    assert bootstrap_decision(IDENTITY, "a:1", 5.0, {"b": "b:1"}, expect=3) is None
    decision = bootstrap_decision(IDENTITY, "a:1", 5.0, {"a": "a:1", "b": "b:1", "c": "c:1"}, expect=3)
    state = ClusterState()
    assert state.apply(decision)
    assert set(state.members) == {"a", "b", "c"}
    assert state.admitted("a") and not state.admitted("b") and not state.admitted("c")
    assert all(len(set(a.replicas)) == 3 and a.epoch == 0 for a in state.assignments.values())
    assert sorted(state.load().values()) == [8, 8, 8]


def test_the_initial_map_spreads_primaries_and_caps_copies_at_the_replication_factor():
    placed = initial_map(["e", "d", "c", "b", "a"], partitions=10, replicas=3)
    primaries = [replicas[0] for replicas, _epoch in placed.values()]
    assert sorted(primaries) == sorted("abcde" * 2)
    assert all(len(set(replicas)) == 3 for replicas, _epoch in placed.values())
    assert all(len(r) == 2 for r, _e in initial_map(["a", "b"], partitions=4, replicas=3).values())


def test_a_bootstrap_with_a_map_that_misses_a_partition_or_names_a_stranger_changes_nothing():
    decision = bootstrap_decision(IDENTITY, "a:1", 5.0, {"b": "b:1", "c": "c:1"}, expect=3)
    for broken in ({**decision["map"], "9": [["a"], 0]}, {**decision["map"], "0": [["a", "zz"], 0]}):
        state = ClusterState()
        assert not state.apply({**decision, "map": broken})
        assert state.cluster_id is None and not state.members
