"""A network of hosts in the simulator: joining, gossip convergence, failure detection,
restarts (also at a new address), partitions, and network coordinates.

These clusters keep one copy of each partition (``replicas=1``): nothing moves between
hosts, so the NI changes only as the network does (replication has its own tests)."""

import math
import random

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory

from nodedb.gossip.service import GossipTiming
from nodedb.testing import Recorder, failure_result_of
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import Faults, SimNetwork, seeds
from nodedb.topology.vivaldi import distance

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def converged_cluster(seed, hosts):
    """A simulated cluster of *hosts* whose NIs have converged."""
    cluster = SimCluster(seed, replicas=1)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.converged, timeout=30)
    return cluster


def unavailable_everywhere(cluster, subject_id):
    return lambda: not any(cluster.availability(subject_id).values())


def available_everywhere(cluster, subject_id):
    return lambda: all(cluster.availability(subject_id).values())


@pytest.mark.parametrize("seed", seeds())
def test_hosts_join_through_one_seed_and_converge(seed):
    cluster = converged_cluster(seed, hosts=30)
    first = cluster.hosts[0].node
    assert first.status()["ni"]["size"] == 30
    # Every host's /status lists every host, with its address.
    for host in cluster.hosts:
        listed = {h["id"]: h["address"] for h in host.node.status()["hosts"]}
        assert listed == {host_id(h): h.address for h in cluster.hosts}, cluster
    # The joiners are accepted by vote ("read"); with one copy of each partition nothing
    # moves, and the bootstrap host keeps every primary ("write").
    cluster.run_until(lambda: cluster.converged() and len(first.voting.state.members) == 30, timeout=60)
    statuses = {h["id"]: h["status"] for h in first.status()["hosts"]}
    assert statuses.pop(host_id(cluster.hosts[0])) == "write"
    assert set(statuses.values()) == {"read"}


@pytest.mark.parametrize("seed", seeds())
def test_convergence_survives_loss_duplication_reordering_and_delay(seed):
    faults = Faults(drop=0.05, duplicate=0.05, reorder=0.1, min_delay=0.001, max_delay=0.02)
    cluster = SimCluster(seed, faults=faults, replicas=1)
    cluster.start_hosts(20)
    cluster.run_until(cluster.converged, timeout=60)
    cluster.hosts[7].node.gossip.update_local(status="read")
    cluster.run_until(cluster.converged, timeout=60)
    assert {h.node.gossip.state.ni.entries[host_id(cluster.hosts[7])].status for h in cluster.hosts} == {"read"}
    assert cluster.network.dropped > 0


@pytest.mark.parametrize("seed", seeds())
def test_a_crashed_host_is_unavailable_everywhere_then_back_after_restart(seed):
    cluster = converged_cluster(seed, hosts=8)
    victim = cluster.hosts[5]
    victim_id = host_id(victim)
    cluster.crash(victim)
    detected = cluster.run_until(unavailable_everywhere(cluster, victim_id), timeout=30)
    assert detected < 10, f"detection took {detected:.1f}s ({cluster})"
    cluster.run(5)
    assert not any(cluster.availability(victim_id).values())  # no flapping while it is down
    cluster.restart(victim)
    cluster.run_until(available_everywhere(cluster, victim_id), timeout=30)
    cluster.run_until(cluster.converged, timeout=30)
    generations = {h.node.gossip.state.ni.entries[victim_id].generation for h in cluster.live()}
    assert generations == {2}, cluster


@pytest.mark.parametrize("seed", seeds())
def test_a_host_that_comes_back_at_a_new_address_supersedes_its_old_entry(seed):
    cluster = converged_cluster(seed, hosts=6)
    mover = cluster.hosts[2]
    mover_id = host_id(mover)
    cluster.crash(mover)
    cluster.run_until(unavailable_everywhere(cluster, mover_id), timeout=30)
    cluster.restart(mover, address="127.9.9.9:7401")
    cluster.run_until(lambda: cluster.converged() and all(cluster.availability(mover_id).values()), timeout=30)
    assert {h.node.gossip.state.ni.entries[mover_id].address for h in cluster.live()} == {"127.9.9.9:7401"}
    assert host_id(mover) == mover_id  # same store, same host


@pytest.mark.parametrize("seed", seeds())
def test_a_partition_is_seen_from_both_sides_and_heals(seed):
    cluster = converged_cluster(seed, hosts=8)
    left, right = cluster.hosts[:4], cluster.hosts[4:]
    cluster.network.partition([h.host for h in left], [h.host for h in right])

    def split():
        return all(
            not h.node.reliability.is_available(host_id(o)) for h in left for o in right
        ) and all(not h.node.reliability.is_available(host_id(o)) for h in right for o in left)

    cluster.run_until(split, timeout=30)
    # Each side still sees its own half.
    assert all(h.node.reliability.is_available(host_id(o)) for h in left for o in left if o is not h)
    # A change made during the partition reaches the other side once it heals.
    left[1].node.gossip.update_local(status="read")
    cluster.network.heal()
    cluster.run_until(
        lambda: cluster.converged() and all(cluster.availability(host_id(h)).values() for h in cluster.hosts),
        timeout=60,
    )
    assert right[0].node.gossip.state.ni.entries[host_id(left[1])].status == "read"


@pytest.mark.parametrize("seed", seeds())
def test_a_one_way_partition_makes_the_silent_side_unavailable(seed):
    cluster = converged_cluster(seed, hosts=4)
    mute = cluster.hosts[3]
    # Nothing from the mute host reaches the others; it still hears them.
    cluster.network.partition([mute.host], [h.host for h in cluster.hosts[:3]], one_way=True)
    cluster.run_until(unavailable_everywhere(cluster, host_id(mute)), timeout=30)
    cluster.network.heal()
    cluster.run_until(available_everywhere(cluster, host_id(mute)), timeout=30)


@pytest.mark.parametrize("seed", seeds())
def test_a_paused_host_is_found_by_heartbeats_and_recovers(seed):
    cluster = converged_cluster(seed, hosts=5)
    frozen = cluster.hosts[1]
    cluster.network.pause(frozen.host)  # like SIGSTOP: connections stay up, nothing moves
    cluster.run_until(unavailable_everywhere(cluster, host_id(frozen)), timeout=30)
    cluster.network.resume(frozen.host)
    cluster.run_until(available_everywhere(cluster, host_id(frozen)), timeout=30)


@pytest.mark.parametrize("seed", seeds(2))
def test_coordinates_predict_injected_latencies(seed):
    rng = random.Random(seed)
    cluster = SimCluster(seed, replicas=1)
    hosts = 20
    positions = [(rng.uniform(0, 0.05), rng.uniform(0, 0.05)) for _ in range(hosts)]
    access = [rng.uniform(0.0005, 0.003) for _ in range(hosts)]

    def rtt(i, j):
        return math.dist(positions[i], positions[j]) + access[i] + access[j]

    for i in range(hosts):
        for j in range(i + 1, hosts):
            cluster.network.set_latency(cluster.address(i).split(":")[0], cluster.address(j).split(":")[0], rtt(i, j) / 2)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.converged, timeout=60)
    # Heartbeats run on the connections gossip made: after half a minute, most pairs.
    cluster.run(30)
    coords = [h.node.gossip.coordinate for h in cluster.hosts]
    errors = [abs(distance(coords[i], coords[j]) - rtt(i, j)) / rtt(i, j) for i in range(hosts) for j in range(i + 1, hosts)]
    within = sum(e <= 0.2 for e in errors) / len(errors)
    assert within >= 0.9, f"{within:.0%} of pairs within 20% ({cluster})"
    # The coordinates announced in the NI, which every host uses for distances, predict as well.
    cluster.run(GossipTiming().coordinate_interval)
    ni = cluster.hosts[0].node.gossip.state.ni.entries
    announced = [ni[host_id(h)].coordinate for h in cluster.hosts]
    errors = [abs(distance(announced[i], announced[j]) - rtt(i, j)) / rtt(i, j) for i in range(hosts) for j in range(i + 1, hosts)]
    assert sum(e <= 0.2 for e in errors) / len(errors) >= 0.8, cluster


def test_the_same_seed_replays_the_same_run():
    def run(seed):
        cluster = SimCluster(seed)
        cluster.start_hosts(10)
        cluster.run(5)
        cluster.crash(cluster.hosts[3])
        cluster.run(5)
        return [(host_id(h), h.node.gossip.state.ni.checksum) for h in cluster.live()], cluster.network.delivered

    assert run(11) == run(11)
    assert run(11) != run(12)


@pytest.mark.parametrize("seed", seeds(1))
def test_a_hundred_hosts_converge_in_logarithmic_rounds(seed):
    cluster = SimCluster(seed, heartbeat_interval=None, replicas=1)
    cluster.start_hosts(100)
    took = cluster.run_until(cluster.converged, timeout=60, check_every=0.5)
    rounds = took / GossipTiming().round_interval
    assert rounds <= 3 * math.log2(100), f"{rounds:.0f} rounds ({cluster})"
    cluster.hosts[42].node.gossip.update_local(status="read")
    took = cluster.run_until(cluster.converged, timeout=60, check_every=0.5)
    assert took / GossipTiming().round_interval <= 2 * math.log2(100), cluster


@pytest.mark.parametrize("seed", seeds(1))
def test_connections_to_a_moved_hosts_old_address_are_closed(seed):
    cluster = converged_cluster(seed, hosts=4)
    mover = cluster.hosts[1]
    old = mover.address
    cluster.crash(mover)
    cluster.restart(mover, address="127.8.8.8:7400")
    cluster.run_until(lambda: cluster.converged() and all(cluster.availability(host_id(mover)).values()), timeout=30)
    cluster.run(5)
    assert all(old not in h.node.transport.peer_addresses() for h in cluster.live()), cluster


def test_a_connection_cut_before_it_is_established_is_only_a_failed_attempt():
    """As with TCP: the attempt fails, and no protocol hears of a connection it never had (a
    ClientService stopped meanwhile would otherwise be told of a disconnection it cannot
    be in)."""
    network = SimNetwork(1)
    built = []

    class Recording(Factory):
        def buildProtocol(self, addr):
            built.append(Recorder())
            return built[-1]

    network.server_endpoint("127.0.0.2:7400").listen(Recording())
    attempt = network.client_endpoint("127.0.0.1:5000", "127.0.0.2:7400").connect(Recording())
    network.crash("127.0.0.1")
    network.run(1.0)
    failure_result_of(attempt, ConnectionLost)
    assert len(built) == 2 and all(p.transport is None and p.lost is None for p in built)
