"""The ``map`` request's answer, from the agreed cluster state, and the client reading it."""

import pytest

from nodedb import errors
from nodedb.client._routing import PartitionMap
from nodedb.voting import client_map
from nodedb.voting.state import ClusterState


def test_the_map_names_each_partitions_replicas_primary_first():
    state = ClusterState()
    state.apply(
        {
            "op": "bootstrap",
            "cluster": "c1",
            "partitions": 3,
            "replicas": 2,
            "host": "x",
            "address": "10.0.0.1:7400",
            "at": 0.0,
            "members": {"y": "10.0.0.2:7400"},
            "map": {"0": [["x", "y"], 0], "1": [["y", "x"], 0], "2": [["y"], 0]},
        }
    )
    reply = client_map.describe(state, 12, 16)
    assert reply == {
        "version": 12,
        "cluster": "c1",
        "partition_bits": 16,
        "hosts": [["x", "10.0.0.1:7400"], ["y", "10.0.0.2:7400"]],
        "partitions": [[0, 1], [1, 0], [1]],
    }
    routing = PartitionMap.from_wire(reply)
    assert [routing.primary_of(p << 48 | 5) for p in range(3)] == ["x", "y", "y"]
    assert routing.primaries == ("x", "y")
    # A client that holds this version (or a newer one, from a host further along) gets
    # only the version.
    assert client_map.describe(state, 12, 16, since=12) == {"version": 12}
    assert client_map.describe(state, 12, 16, since=13) == {"version": 12}
    assert client_map.describe(state, 12, 16, since=11) == reply


def test_a_partition_without_replicas_has_no_primary():
    state = ClusterState()
    state.apply(
        {"op": "bootstrap", "cluster": "c1", "partitions": 2, "replicas": 1, "host": "x", "address": "10.0.0.1:7400", "at": 0.0}
    )
    state.apply({"op": "remove", "host": "x", "at": 1.0})
    reply = client_map.describe(state, 3, 16)
    assert reply["hosts"] == [] and reply["partitions"] == [[], []]
    assert PartitionMap.from_wire(reply).primary_of(1) is None


def test_a_host_still_joining_has_no_map():
    with pytest.raises(errors.Unavailable):
        client_map.describe(ClusterState(), 0, 16)


@pytest.mark.parametrize("since", [-1, "3", 1.5, True, [3]])
def test_since_is_a_version(since):
    with pytest.raises(errors.InvalidRequest):
        client_map.check_since(since)
    assert client_map.check_since(None) is None and client_map.check_since(0) == 0
