"""A host's identity (nodedb.identity): founding, restarting, joining through a seed, the
partitions it holds, the founding decision, and the judgement of a peer's handshake. On a
memory store and a Clock; every Deferred has fired when it is looked at."""

import random
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nodedb import errors
from nodedb.config import ConfigError, NodeConfig
from nodedb.identity import Identity
from nodedb.ids import IdLayout
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb.voting.state import Assignment, ClusterState


def store(meta=None):
    storage = MemoryStorage()
    storage.open()
    storage.set_meta(meta or {})
    return storage


def load(storage, clock=None, **config):
    config = NodeConfig(data_dir="/d", **config)
    return defer.ensureDeferred(Identity.load(storage, config, random.Random(7), clock or Clock()))


def test_an_empty_store_without_seeds_founds_a_cluster_written_only_once_saved():
    storage, clock = store(), Clock()
    clock.advance(100)
    identity = success_result_of(load(storage, clock, partitions=4, replicas=2))
    assert identity.joined and len(identity.host_id) == 12 and len(identity.cluster_id) == 16
    assert (identity.partitions, identity.replicas, identity.created) == (4, 2, 100)
    assert identity.held == [0, 1, 2, 3] and identity.expect == 1 and identity.generation == 1
    assert storage.get_meta("cluster_id") is None and storage.get_meta("generation") == 1
    success_result_of(defer.ensureDeferred(identity.save_new()))
    assert storage.get_meta("cluster_id") == identity.cluster_id

    again = success_result_of(load(storage, partitions=9))  # --partitions is read only when founding
    assert again.fields() == identity.fields() and again.generation == 2


def test_a_founder_waiting_for_other_hosts_holds_nothing_yet():
    identity = success_result_of(load(store(), bootstrap_expect=3))
    assert identity.held == [] and identity.expect == 3


def test_a_host_with_seeds_gets_a_host_id_at_once_and_its_cluster_when_it_joins():
    storage, clock = store(), Clock()
    identity = success_result_of(load(storage, clock, seeds=["127.0.0.1:7400"]))
    assert not identity.joined and storage.get_meta("host_id") == identity.host_id
    clock.advance(5)
    cluster = {"id": "c1", "partitions": 8, "replicas": 3, "partition_bits": 16}
    success_result_of(defer.ensureDeferred(identity.adopt(cluster, clock.seconds())))
    assert identity.joined and identity.describe_cluster() == cluster
    assert {key: storage.get_meta(key) for key in ("cluster_id", "partitions", "created", "held")} == {
        "cluster_id": "c1",
        "partitions": 8,
        "created": 5,
        "held": [],
    }
    assert success_result_of(load(storage, seeds=["127.0.0.1:7400"])).host_id == identity.host_id


@pytest.mark.parametrize(
    "cluster, why",
    [
        ({"id": "c1", "partitions": "8", "replicas": 3, "partition_bits": 16}, "described its cluster badly"),
        ({"id": "c1", "partitions": 8, "replicas": 3, "partition_bits": 12}, "another id layout"),
    ],
)
def test_a_seed_that_describes_a_cluster_this_host_cannot_join_stops_it(cluster, why):
    storage = store()
    identity = success_result_of(load(storage, seeds=["127.0.0.1:7400"]))
    failure = failure_result_of(defer.ensureDeferred(identity.adopt(cluster, 0)), ConfigError)
    assert why in str(failure.value)
    assert not identity.joined and storage.get_meta("cluster_id") is None


def test_a_host_a_recovery_removed_does_not_start_on_its_old_data():
    storage = store()
    identity = success_result_of(load(storage))
    identity.remove("host x was removed", "/d")
    failure = failure_result_of(load(storage), ConfigError)
    assert "host x was removed; this host does not start on its old data" in str(failure.value)


def test_a_store_of_another_id_layout_does_not_start():
    storage = MemoryStorage(layout=IdLayout(12))
    storage.open()
    storage.set_meta({"host_id": "h", "cluster_id": "c", "partitions": 4, "partition_bits": 16})
    failure_result_of(load(storage), ConfigError)


def test_the_partitions_held_follow_the_agreed_map_and_are_written_when_they_change():
    storage = store()
    identity = success_result_of(load(storage))
    state = ClusterState()
    state.assignments = {0: Assignment(("x", identity.host_id)), 1: Assignment((identity.host_id,), 2)}
    identity.hold(state)
    assert identity.held == [1] and storage.get_meta("held") == [1]
    storage.set_meta({"held": "untouched"})
    identity.hold(state)
    assert storage.get_meta("held") == "untouched"


def test_only_a_founder_makes_the_founding_decision():
    clock = Clock()
    founder = success_result_of(load(store(), clock, partitions=2))
    bootstrap = founder.founding(lambda: "127.0.0.1:7400", clock, lambda cluster_id: {})
    decision = bootstrap()
    assert decision["op"] == "bootstrap" and decision["cluster"] == founder.cluster_id
    assert decision["host"] == founder.host_id and decision["address"] == "127.0.0.1:7400"
    joiner = success_result_of(load(store(), seeds=["127.0.0.1:7400"]))
    assert joiner.founding(lambda: "", clock, dict) is None
    older = success_result_of(load(store({"host_id": "h", "cluster_id": "c", "partitions": 2, "partition_bits": 16})))
    assert older.expect is None and older.held == [0, 1]  # from before --bootstrap-expect
    assert older.founding(lambda: "", clock, dict) is not None


def test_a_peer_of_another_cluster_is_refused_at_the_handshake():
    identity = success_result_of(load(store()))
    channel = SimpleNamespace(peer="10.0.0.2:5000", transport=None)
    for cluster in (identity.cluster_id, "", None):
        identity.admit_peer({"host": "b", "cluster": cluster}, channel, tls=False)
    with pytest.raises(errors.ProtocolError, match=f"belongs to cluster {identity.cluster_id}, not other"):
        identity.admit_peer({"host": "b", "cluster": "other"}, channel, tls=False)
