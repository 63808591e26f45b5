"""Replication in the simulator: writes reach every replica, failover keeps every acknowledged
write, lagging replicas catch up (or are resynced), deletes never come back, new hosts get
copies before old ones are dropped, and seeded fault runs keep the history linearizable."""

import random

import pytest
from twisted.internet import defer

from nodedb import errors
from nodedb.logsync.service import LogSyncTiming
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import Faults, seeds
from nodedb.testing.workload import FaultSchedule, Workload

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def run(cluster, coroutine, timeout=30.0):
    return cluster.wait(coroutine, timeout)


def replicated_cluster(seed, hosts=3, **options):
    cluster = SimCluster(seed, **options)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.settled, timeout=60)
    return cluster


def copies(cluster, record_type="item"):
    """``{host name: {id: (data, version)}}`` straight from each live host's store."""
    return {h.name: dict(h.store.types.get(record_type, {})) for h in cluster.live()}


def primary_host(cluster, partition):
    return cluster.primary_host(partition)


async def insert_many(client, count, record_type="item"):
    return [await client.insert(record_type, {"n": n}) for n in range(count)]


@pytest.mark.parametrize("seed", seeds())
def test_every_acknowledged_write_is_on_every_replica(seed):
    cluster = replicated_cluster(seed)
    client = cluster.client()

    async def work():
        ids = await insert_many(client, 30)
        await client.update("item", ids[0], {"n": "changed"})
        await client.delete("item", ids[1])
        return ids

    ids = run(cluster, work())
    cluster.run_until(cluster.replicated, timeout=10)
    held = copies(cluster)
    assert len({tuple(sorted(c.items())) for c in held.values()}) == 1, "the replicas differ"
    only = next(iter(held.values()))
    assert set(only) == set(ids) - {ids[1]}
    # Every host answered from any host: the writes went through whichever host the client
    # reached, and the partition map says which host is primary.
    state = cluster.hosts[0].node.voting.state
    assert all(len(a.replicas) == 3 for a in state.assignments.values())


@pytest.mark.parametrize("seed", seeds())
def test_any_host_answers_and_replica_reads_see_the_data(seed):
    cluster = replicated_cluster(seed)
    clients = [cluster.client(hosts=[h]) for h in cluster.hosts]

    async def work():
        key = await clients[1].insert("item", {"n": 1})
        version = await clients[2].update("item", key, {"n": 2})
        seen = [await c.get("item", key) for c in clients]
        return key, version, seen

    key, version, seen = run(cluster, work())
    assert seen == [({"n": 2}, version)] * 3
    cluster.run_until(cluster.replicated, timeout=10)
    replica_reads = run(cluster, defer.gatherResults([c.get("item", key, consistency="replica") for c in clients]))
    assert replica_reads == [({"n": 2}, version)] * 3


@pytest.mark.parametrize("seed", seeds())
def test_a_crashed_primary_is_replaced_and_no_acknowledged_write_is_lost(seed):
    cluster = replicated_cluster(seed)
    entry = cluster.hosts[0]
    ids = run(cluster, insert_many(cluster.client(hosts=[entry]), 20))
    partition = entry.node.storage.layout.partition_of(ids[0])
    victim = primary_host(cluster, partition)
    victim_id = host_id(victim)
    client = cluster.client(hosts=[h for h in cluster.hosts if h is not victim])
    old_epoch = victim.node.voting.state.assignments[partition].epoch
    crashed_at = cluster.clock.seconds()
    cluster.crash(victim)
    # Writes to the partition come back within a few seconds: detection, then the election.
    key = run(cluster, client.insert("item", {"n": "after"}, near=ids[0]), timeout=30)
    recovered = cluster.clock.seconds() - crashed_at
    assert recovered < 8.0, f"writes stopped for {recovered:.1f} s"
    survivor = cluster.live()[0].node.voting.state.assignments[partition]
    assert survivor.epoch == old_epoch + 1 and survivor.primary != victim_id
    docs = run(cluster, defer.gatherResults([client.get("item", i) for i in ids + [key]]))
    assert [doc["n"] for doc, _version in docs] == list(range(20)) + ["after"]
    # The old primary comes back as a follower and catches up without any command.
    cluster.restart(victim)
    cluster.run_until(cluster.replicated, timeout=60)
    assert key in victim.store.types["item"]


@pytest.mark.parametrize("seed", seeds())
def test_a_lagging_replica_catches_up_from_the_log(seed):
    cluster = replicated_cluster(seed)
    follower = cluster.hosts[seed % 3]
    client = cluster.client(hosts=[h for h in cluster.hosts if h is not follower])
    run(cluster, insert_many(client, 5))
    cluster.crash(follower)  # it leads some partitions: they fail over
    run(cluster, insert_many(client, 40))  # a majority (two of three) still acknowledges
    cluster.restart(follower)
    cluster.run_until(cluster.replicated, timeout=60)
    assert len(follower.store.types["item"]) == 45


@pytest.mark.parametrize("seed", seeds())
def test_a_replica_behind_the_truncated_log_gets_a_full_resync_and_no_deleted_element_back(seed):
    timing = LogSyncTiming(truncate_every=0.5, max_log_entries=10)
    cluster = replicated_cluster(seed, logsync_timing=timing)
    follower = cluster.hosts[seed % 3]
    client = cluster.client(hosts=[h for h in cluster.hosts if h is not follower])
    ids = run(cluster, insert_many(client, 10))
    cluster.crash(follower)

    async def while_away():
        for key in ids[:5]:
            await client.delete("item", key)
        return await insert_many(client, 60)

    new = run(cluster, while_away())
    cluster.run(2.0)  # the primary truncates its log past what the follower holds
    assert any(h.node.storage.partition_state(p).truncated > 0 for h in cluster.live() for p in range(64))
    cluster.restart(follower)
    cluster.run_until(cluster.replicated, timeout=60)
    held = set(follower.store.types["item"])
    assert held == set(ids[5:]) | set(new)
    assert not held & set(ids[:5]), "a deleted element came back"
    resynced = [p for p in range(64) if follower.store.partitions.get(p) and follower.store.partitions[p].mtime > 0]
    assert resynced, "no partition was fully resynced"


@pytest.mark.parametrize("seed", seeds())
def test_a_new_host_gets_full_copies_before_old_replicas_are_dropped(seed):
    cluster = replicated_cluster(seed, logsync_timing=LogSyncTiming(drop_after=5.0, truncate_every=1.0))
    client = cluster.client()
    run(cluster, insert_many(client, 30))
    smallest = []

    def watch():
        state = cluster.hosts[0].node.voting.state
        smallest.append(min(len(a.replicas) for a in state.assignments.values()))
        return False

    newcomer = cluster.add_host()

    def moved():
        watch()
        state = cluster.hosts[0].node.voting.state
        return cluster.replicated() and any(host_id(newcomer) in a.replicas for a in state.assignments.values())

    cluster.run_until(moved, timeout=120)
    assert min(smallest) == 3, "redundancy dipped during the move"
    state = cluster.hosts[0].node.voting.state
    mine = [p for p, a in state.assignments.items() if host_id(newcomer) in a.replicas]
    layout = newcomer.node.storage.layout
    expected = {i for h in cluster.hosts[:1] for i in h.store.types["item"] if layout.partition_of(i) in mine}
    assert set(newcomer.store.types.get("item", {})) == expected
    # A host no longer among a partition's replicas drops its copy a while later.
    cluster.run(8.0)
    for host in cluster.hosts:
        held = set(state.replica_partitions(host_id(host)))
        stray = {layout.partition_of(i) for i in host.store.types.get("item", {})} - held
        assert not stray, f"{host.name} still holds partitions {sorted(stray)}"


FAULT_SEEDS = seeds(4)


@pytest.mark.parametrize(
    "seed, hosts, kinds",
    [(seed, 5, ("crash", "partition", "pause")) for seed in FAULT_SEEDS]
    + [(seed, 4, ("crash", "partition", "pause", "join")) for seed in FAULT_SEEDS[:2]],
)
def test_seeded_fault_runs_lose_nothing_and_stay_linearizable(seed, hosts, kinds):
    """Four clients, 40 s of crashes, partitions and pauses (mostly of the busiest primary),
    and hosts joining (so copies and primaries move meanwhile), over a lossy, reordering
    network; then every acknowledged write must be there and every element's history
    linearizable."""
    cluster = replicated_cluster(seed, hosts=hosts)
    workload = Workload(cluster, random.Random(seed))
    workload.start()
    cluster.network.faults = Faults(drop=0.01, reorder=0.05)
    schedule = FaultSchedule(cluster, random.Random(seed), kinds)
    schedule.run(40.0)
    cluster.network.faults = Faults()
    workload.stop()
    cluster.run_until(workload.finished, timeout=30)
    cluster.run_until(cluster.replicated, timeout=120)
    report = workload.check()
    assert report.lost == [], f"acknowledged writes lost: {report.lost}; faults {schedule.events}"
    assert report.acknowledged > 50, "the workload barely ran"


def test_a_write_refused_by_a_host_that_is_not_primary_is_not_applied():
    cluster = replicated_cluster(1)
    follower = next(h for h in cluster.hosts if h is not primary_host(cluster, 0))
    local = follower.node.local
    d = local.update("item", 1, {"n": 1})
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(errors.Unavailable)


@pytest.mark.parametrize("seed", seeds(1))
def test_a_host_nearly_out_of_space_takes_no_inserts_and_no_new_copies(seed):
    cluster = replicated_cluster(seed)
    full = cluster.hosts[1]
    full_id = host_id(full)
    real_stats = full.node.storage.stats
    full.node.storage.stats = lambda: {**real_stats(), "free_bytes": 10 * 1024 * 1024}
    cluster.run(3.0)  # the next gossip rounds announce it
    # Inserts sent to the full host land on hosts with room.
    client = cluster.client(hosts=[full])
    ids = run(cluster, insert_many(client, 20))
    state = cluster.hosts[0].node.voting.state
    layout = full.node.storage.layout
    assert all(state.assignments[layout.partition_of(i)].primary != full_id for i in ids)
    # A new host gets copies; the full one gets no new ones.
    before = set(state.replica_partitions(full_id))
    cluster.add_host()
    cluster.run_until(cluster.replicated, timeout=120)
    assert set(state.replica_partitions(full_id)) <= before
