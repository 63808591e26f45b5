"""The partition-aware client in the simulator: it sends each request straight to its
partition's primary (no host forwards it), goes on through any host while a primary is down,
and learns the new map after a failover and after a planned move of primaries."""

import pytest

from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def settled_cluster(seed):
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.settled, timeout=60)
    return cluster


def aware_client(cluster, given):
    """A partition-aware client given the one host *given*, once it holds the map."""
    client = cluster.client(hosts=[given], timeout=20.0, learn_hosts=True, partition_aware=True)
    cluster.run_until(lambda: client.partition_map is not None, timeout=10)
    return client


def one_per_partition(cluster, client):
    """Insert one element in each partition: ``{partition: id}``."""
    layout = cluster.hosts[0].node.storage.layout
    partitions = range(cluster.hosts[0].node.voting.state.partitions)

    async def insert():
        return {p: await client.insert("item", {"p": p, "n": 0}, near=layout.make(p, 1)) for p in partitions}

    return cluster.wait(insert())


def counts(cluster):
    """``{host id: (gets it took from clients, requests other hosts forwarded to it)}``."""
    requests = {host_id(h): h.node.metrics.requests for h in cluster.live()}
    return {h: (r.get(("get", "ok"), 0), r.get(("query.forward", "ok"), 0)) for h, r in requests.items()}


def read_all(cluster, client, keys):
    async def read():
        return {p: (await client.get("item", key))[0] for p, key in keys.items()}

    return cluster.wait(read(), timeout=120)


def assert_each_primary_served_its_own(cluster, client, keys):
    """A round of gets (after one that opens the connections) is served, every one, by its
    partition's primary, which took it from the client itself: no host forwarded any."""
    read_all(cluster, client, keys)
    before = counts(cluster)
    docs = read_all(cluster, client, keys)
    after = counts(cluster)
    assert all(doc["p"] == p for p, doc in docs.items())
    state = cluster.live()[0].node.voting.state
    expected = {h: 0 for h in after}
    for p in keys:
        expected[state.assignments[p].primary] += 1
    assert {h: after[h][0] - before[h][0] for h in after} == expected
    assert {h: after[h][1] - before[h][1] for h in after} == {h: 0 for h in after}
    assert {p: client.partition_map.primary_of(key) for p, key in keys.items()} == {
        p: state.assignments[p].primary for p in keys
    }


@pytest.mark.parametrize("seed", seeds())
def test_requests_go_straight_to_their_partitions_primary(seed):
    cluster = settled_cluster(seed)
    given = cluster.hosts[0]
    client = aware_client(cluster, given)
    keys = one_per_partition(cluster, client)
    assert_each_primary_served_its_own(cluster, client, keys)
    # Writes too: each update is taken by the primary itself.
    before = {host_id(h): h.node.metrics.requests.get(("query.forward", "ok"), 0) for h in cluster.live()}

    async def update():
        return [await client.update("item", key, {"p": p, "n": 1}) for p, key in keys.items()]

    cluster.wait(update())
    assert {host_id(h): h.node.metrics.requests.get(("query.forward", "ok"), 0) for h in cluster.live()} == before
    # A plain client through the same host takes the extra hop for the others' partitions.
    plain = cluster.client(hosts=[given], timeout=20.0, learn_hosts=True)
    assert plain.partition_map is None
    before = counts(cluster)
    read_all(cluster, plain, keys)
    forwarded = sum(after[1] - before[h][1] for h, after in counts(cluster).items())
    mine = len(given.node.voting.state.primary_partitions(host_id(given)))
    assert forwarded == len(keys) - mine
    cluster.wait(client.close())
    cluster.wait(plain.close())
    cluster.stop()


@pytest.mark.parametrize("seed", seeds())
def test_after_a_failover_the_client_learns_the_new_primaries(seed):
    cluster = settled_cluster(seed)
    given = cluster.hosts[0]
    client = aware_client(cluster, given)
    keys = one_per_partition(cluster, client)
    read_all(cluster, client, keys)  # the connections to every primary are open
    first_map = client.partition_map
    victim = max(cluster.hosts[1:], key=lambda h: len(h.node.voting.state.primary_partitions(host_id(h))))
    victim_id = host_id(victim)
    led = set(victim.node.voting.state.primary_partitions(victim_id))
    assert led
    cluster.crash(victim)
    # While its partitions have no primary, and after, the client goes on through any host.
    docs = read_all(cluster, client, keys)
    assert all(doc == {"p": p, "n": 0} for p, doc in docs.items())
    cluster.run_until(lambda: cluster.replicated(full=False), timeout=60)
    cluster.run_until(lambda: victim_id not in client.partition_map.primaries, timeout=10)
    assert client.partition_map.version > first_map.version
    assert all(first_map.primary_of(keys[p]) == victim_id for p in led)
    assert_each_primary_served_its_own(cluster, client, keys)
    cluster.wait(client.close())
    cluster.stop()


@pytest.mark.parametrize("seed", seeds())
def test_after_a_planned_move_the_client_learns_the_new_primaries(seed):
    cluster = settled_cluster(seed)
    client = aware_client(cluster, cluster.hosts[0])
    keys = one_per_partition(cluster, client)
    newcomer = cluster.add_host()
    written = {p: 0 for p in keys}
    rounds = []

    async def update_and_read():
        """Each element updated and read back; an update caught in a move may fail with
        Timeout (it may or may not be applied), and then reads back either way."""
        for p, key in keys.items():
            try:
                await client.update("item", key, {"p": p, "n": written[p] + 1})
                written[p] += 1
            except errors.Timeout:
                doc, _version = await client.get("item", key)
                assert doc["n"] in (written[p], written[p] + 1)
                written[p] = doc["n"]
            doc, _version = await client.get("item", key)
            assert doc == {"p": p, "n": written[p]}
        rounds.append(True)

    def moved():
        state = cluster.hosts[0].node.voting.state
        return cluster.settled() and host_id(newcomer) in {a.primary for a in state.assignments.values()}

    # Primaries move to the newcomer (the old primary hands each over) while the client
    # updates and reads every element, straight or through a host that forwards.
    while not moved():
        cluster.wait(update_and_read(), timeout=120)
        assert len(rounds) < 100, "the primaries did not move"
    cluster.run_until(lambda: host_id(newcomer) in client.partition_map.primaries, timeout=10)
    assert_each_primary_served_its_own(cluster, client, keys)
    cluster.wait(client.close())
    cluster.stop()
