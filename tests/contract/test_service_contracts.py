"""The contract suites of the services, run against the providers nodedb ships."""

import random

from nodedb.gossip.service import GossipService
from nodedb.ids import IdAllocator
from nodedb.logsync.service import LogSyncService
from nodedb.query.local import LocalQuery
from nodedb.query.router import Router
from nodedb.reliability.service import Reliability
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


class TestRouterOnOneHost(QueryContract):
    def make_query(self, storage, clock, status):
        state = ClusterState()
        founding = {"op": "bootstrap", "cluster": "c1", "replicas": 1, "host": "a", "address": "a:1", "at": 0.0}
        state.apply({**founding, "partitions": storage.layout.max_partitions})
        return Router(
            _lone_query(storage, clock, status),
            "a",
            cluster=lambda: state,
            transport=None,
            address_of=lambda host: None,
            insert_hosts=lambda: ["a"],
            nearest_replica=lambda partition: "a",
            can_insert=lambda: True,
        )


class TestRouter(RouterContract):
    def make_router(self, host, local, cluster):
        return Router(
            local,
            host.host_id,
            cluster=cluster,
            transport=host.transport,
            address_of=host.address_of,
            insert_hosts=lambda: [],
            nearest_replica=lambda partition: cluster().assignments[partition].primary,
            can_insert=lambda: True,
        )


class TestTransactionService(TransactionsContract):
    def make_transactions(self, host, local, primary_of, call):
        return TransactionService(local, host.host_id, primary_of, call, host.clock)
