"""The contract suites of the services, run against the providers nodedb ships."""

import random
from types import SimpleNamespace

from zope.interface.verify import verifyObject

from nodedb.errors import Unavailable
from nodedb.gossip.service import GossipService
from nodedb.ids import IdAllocator
from nodedb.interfaces import (
    IClusterView,
    IGossip,
    ILogSync,
    INetworkInformation,
    IQuery,
    IQueryRouter,
    IReliability,
    IStorageBackend,
    ITransactions,
    IVoting,
)
from nodedb.logsync.service import LogSyncService
from nodedb.query.calls import HostCalls
from nodedb.query.local import LocalQuery
from nodedb.query.router import Router
from nodedb.reliability.service import Reliability
from nodedb.testing.cluster import SimCluster
from nodedb.testing.gossip_contract import GossipContract
from nodedb.testing.logsync_contract import LogSyncContract
from nodedb.testing.query_contract import QueryContract, RouterContract
from nodedb.testing.reliability_contract import ReliabilityContract
from nodedb.testing.transactions_contract import TransactionsContract
from nodedb.testing.voting_contract import VotingContract
from nodedb.transactions.service import TransactionService
from nodedb.voting.service import VotingService
from nodedb.voting.state import ClusterState


class TestReliability(ReliabilityContract):
    def make_reliability(self, clock):
        return Reliability(clock)


class TestGossipService(GossipContract):
    def make_gossip(self, host, entry, cluster):
        rng = random.Random(host.rng.random())
        return GossipService(host.clock, host.transport, host.reliability, entry, rng=rng, cluster=cluster)


class TestVotingService(VotingContract):
    def make_voting(self, host, on_change, elect):
        return VotingService(
            host.clock,
            host.host_id,
            host.transport,
            host.storage,
            host.address_of,
            host.views,
            rng=random.Random(host.rng.random()),
            on_change=on_change,
            elect=elect,
        )


class TestLogSyncService(LogSyncContract):
    def make_logsync(self, host, on_syncing):
        return LogSyncService(
            host.clock, host.host_id, host.storage, host.transport, host.address_of, on_syncing=on_syncing
        )


def _lone_query(storage, clock, status):
    """A LocalQuery that may insert into every partition of *storage*."""
    partitions = {p: 0 for p in range(storage.layout.max_partitions)}
    return LocalQuery(storage, IdAllocator(storage.layout, partitions), clock, status)


class TestLocalQuery(QueryContract):
    def make_query(self, storage, clock, status):
        return _lone_query(storage, clock, status)


class _MapPlacement:
    """What the router asks of :class:`nodedb.placement.Placement`, answered from the agreed
    map ``cluster()`` alone: this host takes inserts, and a partition's nearest copy is its
    primary."""

    def __init__(self, cluster):
        self._cluster = cluster

    def partitions(self):
        return self._cluster().partitions

    def primary_of(self, partition):
        assignment = self._cluster().assignments.get(partition)
        if assignment is None or assignment.primary is None:
            raise Unavailable(f"partition {partition} has no primary now")
        return assignment.primary

    def can_insert(self):
        return True

    def insert_hosts(self):
        return []

    def nearest_replica(self, partition):
        return self.primary_of(partition)


class TestRouterOnOneHost(QueryContract):
    def make_query(self, storage, clock, status):
        state = ClusterState()
        founding = {"op": "bootstrap", "cluster": "c1", "replicas": 1, "host": "a", "address": "a:1", "at": 0.0}
        state.apply({**founding, "partitions": storage.layout.max_partitions})
        return Router(_lone_query(storage, clock, status), "a", _MapPlacement(lambda: state), calls=None)


class TestRouter(RouterContract):
    def make_router(self, host, local, cluster):
        directory = SimpleNamespace(address_of=host.address_of, reachable=lambda peer: True, relays=lambda peer: [])
        calls = HostCalls(host.host_id, host.transport, directory, host.clock)
        return Router(local, host.host_id, _MapPlacement(cluster), calls)


class TestTransactionService(TransactionsContract):
    def make_transactions(self, host, local, primary_of, call):
        return TransactionService(local, host.host_id, primary_of, call, host.clock)


def test_every_service_of_an_assembled_node_provides_its_interface():
    """What the node wires together is what the suites above test: each of its services
    provides the interface its callers go through."""
    cluster = SimCluster(seed=1)
    try:
        [host] = cluster.start_hosts(1)
        cluster.run_until(lambda: host.node.voting is not None and host.node.voting.state.cluster_id, timeout=30)
        _check_services(host.node)
    finally:
        cluster.stop()


def _check_services(node):
    provided = {
        IGossip: node.gossip,
        INetworkInformation: node.gossip.ni,
        IVoting: node.voting,
        IClusterView: node.voting.state,
        ILogSync: node.logsync,
        IReliability: node.reliability,
        IQueryRouter: node.query,
        IQuery: node.local,
        ITransactions: node.transactions,
        IStorageBackend: node.storage,
    }
    for interface, provider in provided.items():
        assert verifyObject(interface, provider), interface
