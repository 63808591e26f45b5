"""The contract suites of the services, run against the providers nodedb ships."""

import random

from nodedb.gossip.service import GossipService
from nodedb.reliability.service import Reliability
from nodedb.testing.gossip_contract import GossipContract
from nodedb.testing.reliability_contract import ReliabilityContract


class TestReliability(ReliabilityContract):
    def make_reliability(self, clock):
        return Reliability(clock)


class TestGossipService(GossipContract):
    def make_gossip(self, host, entry, cluster):
        return GossipService(host.clock, host.transport, host.reliability, entry, rng=random.Random(host.rng.random()), cluster=cluster)
