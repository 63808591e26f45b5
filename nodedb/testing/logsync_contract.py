"""The behaviour every :class:`~nodedb.interfaces.ILogSync` must show.

Subclass :class:`LogSyncContract` in a pytest module and define ``make_logsync(host,
on_syncing)``: an unstarted provider for *host* (a :class:`~nodedb.testing.peers.PeerHost`)
that ships the commit logs of ``host.storage``, calls peers through ``host.transport`` at
``host.address_of(host_id)``, and calls ``on_syncing(partitions)`` when the partitions it
follows but has not caught up on change.

The suite runs two hosts, ``a`` and ``b``, on a map of four partitions: 0 led by ``a`` and
copied on ``b``, 1 the other way round, 2 on ``a`` alone and 3 on ``b`` alone, all at epoch 1.
"""

from dataclasses import dataclass, field

import pytest
from zope.interface.verify import verifyObject

from nodedb import codec, errors
from nodedb.interfaces import ILogSync
from nodedb.storage import Insert
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.testing.peers import LAYOUT, OnPeerNetwork
from nodedb.voting.state import ClusterState

EPOCH = 1
MAP = {"0": [["a", "b"], EPOCH], "1": [["b", "a"], EPOCH], "2": [["a"], EPOCH], "3": [["b"], EPOCH]}


def cluster_state(address_of):
    """The agreed state of the suite's map (see the module docstring)."""
    state = ClusterState()
    state.apply(
        {
            "op": "bootstrap",
            "cluster": "c1",
            "partitions": len(MAP),
            "replicas": 2,
            "host": "a",
            "address": address_of("a"),
            "at": 0.0,
            "members": {"b": address_of("b")},
            "map": MAP,
        }
    )
    assert state.assignments[0].replicas == ("a", "b")
    return state


@dataclass
class Replica:
    host: object
    logsync: object
    reported: list = field(default_factory=list)  # what on_syncing was told, in order

    def write(self, partition, sequence):
        """Commit one insert into *partition* at the epoch :meth:`ILogSync.begin` gives, as a
        local write does; :return: ``(results, epochs)`` for :meth:`ILogSync.acknowledge`."""
        epochs = self.logsync.begin([partition])
        element = Insert("doc", LAYOUT.make(partition, sequence), codec.encode({"n": sequence}))
        results = success_result_of(self.host.storage.commit([element], self.host.clock.seconds(), epochs))
        return results, epochs


class LogSyncContract(OnPeerNetwork):
    def make_logsync(self, host, on_syncing):
        raise NotImplementedError

    @pytest.fixture
    def replicas(self, peers):
        """``(a, b)``: each host's :class:`Replica`, started, before the map is given."""
        members = []
        for host_id in ("a", "b"):
            host = peers.add_host(host_id)
            replica = Replica(host, None)
            replica.logsync = peers.start(self.make_logsync(host, replica.reported.append), host)
            members.append(replica)
        return tuple(members)

    @pytest.fixture
    def serving(self, replicas, peers):
        """:meth:`replicas` once both have taken up the roles the map gives them, and each
        has caught up on what it follows."""
        a, b = replicas
        state = cluster_state(a.host.address_of)
        for replica in replicas:
            replica.logsync.update(state)
        roles = ((a, 0), (a, 2), (b, 1), (b, 3))
        peers.run_until(lambda: all(r.logsync.is_primary(p) for r, p in roles), timeout=10)
        peers.run_until(lambda: a.logsync.syncing() == b.logsync.syncing() == [], timeout=10)
        return replicas

    def test_provides_the_interface(self, replicas):
        for replica in replicas:
            assert verifyObject(ILogSync, replica.logsync)

    def test_update_takes_up_the_roles_the_map_gives(self, serving):
        a, b = serving
        assert not a.logsync.is_primary(1) and not b.logsync.is_primary(0)
        assert a.logsync.epochs([0, 2]) == {0: EPOCH, 2: EPOCH}
        with pytest.raises(errors.Unavailable):
            a.logsync.epochs([0, 1])

    def test_a_write_is_acknowledged_once_a_majority_has_it(self, serving, peers):
        a, b = serving
        results, epochs = a.write(0, 1)
        acknowledged = a.logsync.acknowledge(results, epochs)
        peers.run_until(lambda: acknowledged.called, timeout=10)
        success_result_of(acknowledged)
        [(element, version)] = results
        assert b.host.storage.get("doc", element) == (codec.encode({"n": 1}), version)

    def test_a_replica_set_of_one_acknowledges_at_once(self, serving):
        a, _b = serving
        results, epochs = a.write(2, 1)
        assert a.logsync.acknowledge(results, epochs) is None

    def test_reads_wait_for_the_read_barrier_of_the_primary(self, serving, peers):
        a, b = serving
        barrier = a.logsync.read_barrier([0])
        if barrier is not None:
            peers.run_until(lambda: barrier.called, timeout=10)
            success_result_of(barrier)
        assert a.logsync.read_barrier([2]) is None  # a replica set of one
        with pytest.raises(errors.Unavailable):
            b.logsync.read_barrier([0])

    def test_a_follower_reports_what_it_has_not_caught_up_on(self, replicas, peers):
        a, b = replicas
        state = cluster_state(a.host.address_of)
        a.logsync.update(state)
        peers.run_until(lambda: a.logsync.is_primary(0), timeout=10)
        acknowledged = [a.logsync.acknowledge(*a.write(0, sequence)) for sequence in range(1, 4)]
        b.logsync.update(state)
        assert b.logsync.syncing() == [0]  # it follows 0, and has nothing of it yet
        peers.run_until(lambda: b.logsync.syncing() == [], timeout=10)
        assert b.reported[0] == [0] and b.reported[-1] == []
        assert len(b.host.storage.scan("doc", -1, 10)) == 3
        peers.run_until(lambda: all(d.called for d in acknowledged), timeout=10)
        for d in acknowledged:
            success_result_of(d)

    def test_a_handoff_waits_for_commits_under_way_then_for_the_follower(self, serving, peers):
        a, _b = serving
        first = a.logsync.acknowledge(*a.write(0, 1))
        epochs = a.logsync.begin([0])
        handoff = a.logsync.handoff(0, EPOCH, "b")
        with pytest.raises(errors.Unavailable):
            a.logsync.epochs([0])  # no new writes while it is handed over
        peers.run(1.0)
        no_result(handoff)  # a commit began and has not landed
        a.logsync.landed(epochs)
        peers.run_until(lambda: handoff.called, timeout=10)
        assert success_result_of(handoff) == {"last": a.host.storage.partition_state(0).last_commit_id}
        success_result_of(first)

    def test_a_handoff_needs_the_primary_at_that_epoch(self, serving):
        a, _b = serving
        failure_result_of(a.logsync.handoff(1, EPOCH, "b"), errors.Unavailable)
        failure_result_of(a.logsync.handoff(0, EPOCH + 1, "b"), errors.Unavailable)

    def test_elect_picks_a_primary_among_a_majority(self, serving, peers):
        a, _b = serving
        elected = a.logsync.elect({0: (EPOCH + 1, ("a", "b"))}, prefer={0: "b"})
        peers.run_until(lambda: elected.called, timeout=10)
        assert success_result_of(elected) == {0: "b"}
        # Without b, one of two replicas is no majority.
        alone = a.logsync.elect({0: (EPOCH + 2, ("a", "b"))}, skip={"b"})
        peers.run_until(lambda: alone.called, timeout=10)
        assert success_result_of(alone) == {}

    def test_status_tells_the_roles(self, serving):
        a, _b = serving
        status = a.logsync.status()
        assert status.keys() >= {"primary", "following", "inactive", "resyncs"}
        assert set(status["primary"]) == {"0", "2"}
        assert status["primary"]["0"]["epoch"] == EPOCH and status["primary"]["0"]["ready"] is True
        assert status["following"] == 1 and status["inactive"] == []
