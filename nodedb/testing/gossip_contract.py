"""The behaviour every :class:`~nodedb.interfaces.IGossip` must show.

Subclass :class:`GossipContract` in a pytest module and define ``make_gossip(host, entry,
cluster)``: an unstarted provider for *host* (a :class:`~nodedb.testing.peers.PeerHost`)
whose own first NI entry is *entry*, that calls peers through ``host.transport``, reports
their reliability to ``host.reliability``, and tells joining hosts ``cluster()``. The suite
installs and starts it, on a network of a few such hosts.
"""

from zope.interface.verify import verifyObject

from nodedb.gossip.state import HostEntry
from nodedb.interfaces import IGossip, INetworkInformation
from nodedb.testing.peers import OnPeerNetwork
from nodedb.topology.vivaldi import Coordinate

CLUSTER = {"id": "c1", "partitions": 4, "replicas": 2, "partition_bits": 4}


class GossipContract(OnPeerNetwork):
    def make_gossip(self, host, entry, cluster):
        raise NotImplementedError

    def start_gossip(self, peers, host_id, cluster=lambda: dict(CLUSTER)):
        """:return: ``(host, provider)``: a new host of *peers* running a started provider."""
        host = peers.add_host(host_id)
        entry = HostEntry(host_id=host_id, generation=1, version=0, address=host.address, updated=peers.clock.seconds())
        return host, peers.start(self.make_gossip(host, entry, cluster), host)

    def joined(self, peers, count):
        """:return: ``[(host, provider), ...]`` of *count* hosts, all joined through the first."""
        first = self.start_gossip(peers, "h0")
        hosts = [first]
        for n in range(1, count):
            host, gossip = self.start_gossip(peers, f"h{n}")
            joining = gossip.join([first[0].address])
            peers.run_until(lambda: joining.called, timeout=10)
            hosts.append((host, gossip))
        return hosts

    def test_provides_the_interface(self, peers):
        _host, gossip = self.start_gossip(peers, "a")
        assert verifyObject(IGossip, gossip)
        assert verifyObject(INetworkInformation, gossip.ni)

    def test_a_new_host_knows_only_itself(self, peers):
        host, gossip = self.start_gossip(peers, "a")
        entry = gossip.local_entry()
        assert (entry.host_id, entry.address) == ("a", host.address)
        assert gossip.hosts() == [entry]
        assert gossip.ni.entries == {"a": entry} and gossip.ni.size == 1
        assert gossip.coordinate == entry.coordinate

    def test_rounds_are_counted(self, peers):
        _host, gossip = self.start_gossip(peers, "a")
        before = gossip.rounds
        peers.run(5)
        assert gossip.rounds > before

    def test_update_local_makes_a_new_version_of_the_own_entry(self, peers):
        _host, gossip = self.start_gossip(peers, "a")
        first, checksum = gossip.local_entry(), gossip.ni.checksum
        entry = gossip.update_local(status="read", partitions=(1, 2))
        assert (entry.status, entry.partitions) == ("read", (1, 2))
        assert entry.stamp > first.stamp
        assert gossip.local_entry() == entry == gossip.ni.entries["a"]
        assert gossip.ni.checksum != checksum

    def test_join_learns_the_network_and_the_seeds_cluster(self, peers):
        seed, a = self.start_gossip(peers, "a")
        _host, b = self.start_gossip(peers, "b")
        joining = b.join([seed.address])
        peers.run_until(lambda: joining.called, timeout=10)
        assert joining.result == CLUSTER
        assert set(b.ni.entries) == {"a", "b"} and b.ni.entries["a"].address == seed.address
        assert "b" in a.ni.entries  # the seed learned the joiner from its request

    def test_join_tries_every_seed_until_one_names_a_cluster(self, peers):
        described = {"id": None}
        seed, _a = self.start_gossip(peers, "a", cluster=lambda: dict(described))
        _host, b = self.start_gossip(peers, "b")
        joining = b.join(["10.9.9.9:7400", seed.address])  # the first seed does not exist
        peers.run(10)
        assert not joining.called  # the seed has not joined a cluster itself yet
        described.update(CLUSTER)
        peers.run_until(lambda: joining.called, timeout=60)
        assert joining.result == CLUSTER
        assert "a" in b.ni.entries

    def test_rounds_spread_every_host_and_every_change(self, peers):
        hosts = self.joined(peers, 3)
        gossips = [gossip for _host, gossip in hosts]

        def converged():
            return all((g.ni.size, g.ni.checksum) == (3, gossips[0].ni.checksum) for g in gossips)

        peers.run_until(converged, timeout=30)
        assert [e.host_id for e in gossips[2].hosts()] == ["h2", "h0", "h1"]  # its own first
        gossips[2].update_local(status="read", partitions=(3,))
        peers.run_until(lambda: all(g.ni.entries["h2"].partitions == (3,) for g in gossips), timeout=30)
        assert {g.ni.entries["h2"].status for g in gossips} == {"read"}

    def test_host_at_names_the_host_the_network_places_at_an_address(self, peers):
        (first, _a), (_second, b) = self.joined(peers, 2)
        assert b.host_at(first.address) == "h0"
        assert b.host_at("10.9.9.9:7400") is None

    def test_heartbeats_feed_reliability_and_the_coordinate(self, peers):
        (first, _a), (second, b) = self.joined(peers, 2)
        start = b.coordinate
        remote = Coordinate(x=0.04, y=0.01).to_wire()
        for _ in range(10):
            b.observe_heartbeat(first.address, 0.05, {"coord": remote})
        assert b.coordinate != start
        assert second.reliability.describe("h0")["rtt"] is not None
        assert second.reliability.score("h0") == 0
        b.observe_heartbeat(first.address, None, None)  # a missed heartbeat
        missed = second.reliability.score("h0")
        assert missed > 0
        moved = b.coordinate
        b.observe_heartbeat("10.9.9.9:7400", 0.05, {"coord": remote})  # nobody known there
        assert (second.reliability.score("h0"), b.coordinate) == (missed, moved)
