"""Voting in the simulator: voters grow and are replaced, hosts are accepted, refused, removed
and re-accepted, and every host applies the same decisions in the same order."""

import pytest

from nodedb.errors import Unavailable
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds
from nodedb.voting.state import sequence_range

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def voting(host):
    return host.node.voting


def settled_cluster(seed, hosts, voters, **options):
    """A simulated cluster of *hosts* that agree on their state, with *voters* voters, every
    host admitted."""
    cluster = SimCluster(seed, **options)
    cluster.start_hosts(hosts)
    cluster.run_until(lambda: cluster.admitted() and len(voting(cluster.hosts[0]).raft.config.voters) == voters, timeout=40)
    return cluster


def members(cluster):
    return set(voting(cluster.hosts[0]).state.members) if cluster.hosts[0].up else set(voting(cluster.live()[0]).state.members)


@pytest.mark.parametrize("seed", seeds())
def test_voters_grow_to_three_then_five_as_hosts_are_accepted(seed):
    cluster = SimCluster(seed)
    first = cluster.add_host()
    cluster.run_until(lambda: voting(first).state.cluster_id is not None, timeout=10)
    assert voting(first).raft.config.voters == {host_id(first)}
    cluster.start_hosts(2)
    cluster.run_until(lambda: len(voting(first).raft.config.voters) == 3 and cluster.agreed(), timeout=30)
    cluster.start_hosts(3)
    cluster.run_until(lambda: len(voting(first).raft.config.voters) == 5 and cluster.agreed(), timeout=30)
    raft = voting(first).raft
    assert raft.config.voters | raft.config.learners == {host_id(h) for h in cluster.hosts}
    assert members(cluster) == {host_id(h) for h in cluster.hosts}
    # Every partition has a replica set of three (the replication factor), and the newcomers
    # get their share: copies move (with their data) and primaries are handed over until
    # every host leads about as many partitions as any other, and holds about as many copies.
    def balanced():
        state = voting(first).state
        hosts = [host_id(h) for h in cluster.hosts]
        led = {h: 0 for h in hosts}
        held = {h: 0 for h in hosts}
        for assignment in state.assignments.values():
            led[assignment.primary] += 1
            for host in assignment.replicas:
                held[host] += 1
        full = all(len(a.replicas) == 3 for a in state.assignments.values())
        even = max(led.values()) - min(led.values()) <= 1 and max(held.values()) - min(held.values()) <= 2
        return full and even and cluster.agreed()

    cluster.run_until(balanced, timeout=60)
    statuses = {h.name: h.node.gossip.local_entry().status for h in cluster.hosts}
    assert set(statuses.values()) == {"write"}  # every host leads some partitions


@pytest.mark.parametrize("seed", seeds())
def test_a_killed_leader_is_replaced_and_decisions_go_on(seed):
    cluster = settled_cluster(seed, hosts=5, voters=5)
    old = cluster.leader()
    term = voting(old).raft.term
    cluster.crash(old)
    took = cluster.run_until(lambda: cluster.leader() is not None, timeout=20)
    assert took < 10, f"{took:.1f}s to elect a leader ({cluster})"
    assert voting(cluster.leader()).raft.term > term
    newcomer = cluster.add_host(seeds=[cluster.leader().address])
    cluster.run_until(lambda: host_id(newcomer) in voting(cluster.leader()).state.members and cluster.agreed(), timeout=30)
    cluster.restart(old)
    cluster.run_until(cluster.agreed, timeout=30)
    assert host_id(newcomer) in voting(old).state.members  # the old leader caught up


@pytest.mark.parametrize("seed", seeds())
def test_a_host_gone_past_the_threshold_loses_its_ranges(seed):
    cluster = settled_cluster(seed, hosts=4, voters=3, remove_after=20.0)
    # The bootstrap host leads many partitions (and Voting): the hardest host to lose.
    gone = cluster.hosts[0]
    gone_id = host_id(gone)
    epochs = {p: a.epoch for p, a in voting(gone).state.assignments.items()}
    led = {p for p, a in voting(gone).state.assignments.items() if a.primary == gone_id}
    assert led
    cluster.crash(gone)
    survivor = cluster.hosts[1]
    cluster.run_until(lambda: gone_id not in voting(survivor).state.members and cluster.agreed(), timeout=60)
    state = voting(survivor).state
    assert all(gone_id not in a.replicas for a in state.assignments.values())
    assert all(a.primary is not None and a.epoch >= epochs[p] for p, a in state.assignments.items())
    assert all(state.assignments[p].epoch > epochs[p] for p in led)  # failed over: a new epoch
    # The new primaries allocate ids in their epoch's fresh range, not where the old one did.
    for host in cluster.live():
        for partition in host.node.ids.partitions():
            element = host.node.ids.allocate(partition)
            first, last = sequence_range(state.assignments[partition].epoch)
            assert first <= host.node.storage.layout.sequence_of(element) <= last
    cluster.run_until(lambda: all(len(a.replicas) == 3 for a in voting(survivor).state.assignments.values()), timeout=30)
    assert all(len(set(a.replicas)) == 3 for a in voting(survivor).state.assignments.values())


@pytest.mark.parametrize("seed", seeds())
def test_a_removed_host_that_comes_back_at_a_new_address_is_accepted_again(seed):
    cluster = settled_cluster(seed, hosts=4, voters=3, remove_after=15.0)
    wanderer = cluster.hosts[3]
    wanderer_id = host_id(wanderer)
    cluster.crash(wanderer)
    cluster.run_until(lambda: wanderer_id not in members(cluster), timeout=60)
    cluster.restart(wanderer, address="127.200.0.1:7400")
    cluster.run_until(
        lambda: voting(cluster.hosts[0]).state.members.get(wanderer_id, {}).get("address") == "127.200.0.1:7400"
        and cluster.agreed(),
        timeout=60,
    )


@pytest.mark.parametrize("seed", seeds(1))
def test_a_host_of_another_cluster_is_refused(seed):
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.agreed, timeout=30)
    stranger = cluster.add_host(seeds=[])  # bootstraps a cluster of its own
    cluster.run(3)
    cluster.crash(stranger)
    cluster.restart(stranger, seeds=[cluster.hosts[0].address])  # then knocks on this one
    cluster.run(10)
    assert host_id(stranger) not in members(cluster)
    assert host_id(stranger) not in voting(cluster.hosts[0]).raft.config.members
    assert all(host_id(stranger) not in h.node.gossip.state.ni.entries for h in cluster.hosts[:3])


@pytest.mark.parametrize("seed", seeds())
def test_a_host_behind_the_compacted_log_catches_up_by_snapshot_and_restarts_from_its_own(seed):
    from nodedb.voting.service import VotingTiming

    cluster = settled_cluster(seed, hosts=3, voters=3, voting_timing=VotingTiming(compact_every=3))
    behind = cluster.hosts[2]
    cluster.crash(behind)
    cluster.start_hosts(3)  # accept, assign and config decisions while it is away
    leader = cluster.leader()
    cluster.run_until(lambda: len(voting(leader).state.members) == 6, timeout=40)
    assert voting(leader).raft.snapshot.index > 5  # the log it missed is compacted away
    cluster.restart(behind)
    cluster.run_until(cluster.agreed, timeout=40)
    assert len(voting(behind).state.members) == 6
    # Every host restarts from its own snapshot plus the log after it, to the same state.
    for host in list(cluster.hosts):
        cluster.crash(host)
        cluster.restart(host)
        cluster.run_until(cluster.agreed, timeout=40)


@pytest.mark.parametrize("seed", seeds())
def test_bootstrap_expect_forms_the_cluster_with_every_expected_host(seed):
    cluster = SimCluster(seed, bootstrap_expect=3)
    first = cluster.add_host()
    cluster.run(3.0)
    # Alone, the founder waits: no cluster state, no partition, nothing to insert into.
    assert voting(first).state.cluster_id is None
    assert first.node.gossip.local_entry().status == "proposal"
    cluster.start_hosts(2)
    took = cluster.run_until(cluster.admitted, timeout=20)
    state = voting(first).state
    hosts = {host_id(h) for h in cluster.hosts}
    assert set(state.members) == hosts and voting(first).raft.config.voters == hosts
    # Three copies of every partition from the first decision, primaries spread evenly.
    assert all(len(a.replicas) == 3 and a.epoch == 0 for a in state.assignments.values())
    led = [sum(a.primary == h for a in state.assignments.values()) for h in hosts]
    assert max(led) - min(led) <= 1
    assert took < 5, f"{took:.1f}s from the last host's start until every host was admitted"
    # The founder is lost at once: the others go on, with nothing lost.
    client = cluster.client(hosts=cluster.hosts[1:])
    element = cluster.wait(client.insert("item", {"n": 1}))
    cluster.crash(first)
    survivor = cluster.hosts[1]
    cluster.run_until(lambda: cluster.leader() is not None and cluster.replicated(full=False), timeout=10)
    doc, _version = cluster.wait(client.get("item", element))
    assert doc == {"n": 1}
    assert cluster.wait(client.insert("item", {"n": 2}))
    assert voting(survivor).state.members.keys() == hosts


def test_a_host_still_joining_refuses_client_requests_as_unavailable():
    cluster = SimCluster(1)
    joiner = cluster.add_host(seeds=["127.9.9.9:7400"])  # a seed that never answers
    cluster.run(1.0)
    assert joiner.node.voting is None  # still joining
    client = cluster.client(hosts=[joiner], timeout=2.0)
    for request in (client.insert("item", {"n": 1}), client.get("item", 1), client.scan("item")):
        with pytest.raises(Unavailable, match="still joining"):
            cluster.wait(request)
