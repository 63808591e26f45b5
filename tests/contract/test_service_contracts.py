"""The contract suites of the services, run against the providers nodedb ships."""

import random

from nodedb.gossip.service import GossipService
from nodedb.logsync.service import LogSyncService
from nodedb.reliability.service import Reliability
from nodedb.testing.gossip_contract import GossipContract
from nodedb.testing.logsync_contract import LogSyncContract
from nodedb.testing.reliability_contract import ReliabilityContract
from nodedb.testing.voting_contract import VotingContract
from nodedb.voting.service import VotingService


class TestReliability(ReliabilityContract):
    def make_reliability(self, clock):
        return Reliability(clock)


class TestGossipService(GossipContract):
    def make_gossip(self, host, entry, cluster):
        return GossipService(host.clock, host.transport, host.reliability, entry, rng=random.Random(host.rng.random()), cluster=cluster)


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
        return LogSyncService(host.clock, host.host_id, host.storage, host.transport, host.address_of, on_syncing=on_syncing)
