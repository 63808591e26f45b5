"""Distributed scans in the simulator: pages merge every partition in id order with filters
evaluated where the data is, a scan goes on across a failover of a partition's primary (between
pages and while a page is in flight) with every element exactly once, an idle cursor expires on
the host that issued it, and a cursor resumes on another host."""

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from nodedb import errors, ids
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def run(cluster, coroutine, timeout=60.0):
    return cluster.wait(coroutine, timeout)


@pytest.fixture
def spread(monkeypatch):
    """Hosts move to their next partition every 10 inserts, so data lands in many partitions."""
    monkeypatch.setattr(ids, "INSERTS_PER_TURN", 10)


def loaded_cluster(seed, per_host):
    """Three replicated hosts holding ``3 * per_host`` elements of type ``item``, inserted
    through each host (so into the partitions each leads).

    :return: the cluster and ``{id: doc}``.
    """
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.settled, timeout=60)
    clients = [cluster.client(hosts=[h]) for h in cluster.hosts]

    async def load():
        docs = {}
        for start in range(0, per_host, 50):
            batch = []
            for index, client in enumerate(clients):
                for n in range(start, min(start + 50, per_host)):
                    k = index * per_host + n
                    doc = {"n": k, "group": k % 7, "tag": "abcde"[k % 5], "even": k % 2 == 0}
                    batch.append(client.insert("item", doc).addCallback(lambda key, doc=doc: (key, doc)))
            docs.update(await defer.gatherResults(batch, consumeErrors=True))
        return docs

    docs = run(cluster, load(), timeout=300)
    for client in clients:
        client.close()
    return cluster, docs


async def scan_all(client, where=None, limit=None, cursor=None, seen=None):
    """Page through to the end: the ids, in the order returned (and the docs into *seen*)."""
    result = []
    while True:
        page = await client.scan("item", where=where, limit=limit, cursor=cursor)
        assert limit is None or len(page.items) <= limit
        for key, doc, _version in page.items:
            result.append(key)
            if seen is not None:
                seen[key] = doc
        if page.cursor is None:
            return result
        cursor = page.cursor


FILTERS = [
    (None, lambda d: True),
    ({"group": 3}, lambda d: d["group"] == 3),
    ({"n": {"<": 500}}, lambda d: d["n"] < 500),
    ({"n": {"<=": 500}}, lambda d: d["n"] <= 500),
    ({"n": {">": 1900}}, lambda d: d["n"] > 1900),
    ({"n": {">=": 700, "<": 1400}, "even": True}, lambda d: 700 <= d["n"] < 1400 and d["even"]),
    ({"tag": {"in": ["b", "e"]}}, lambda d: d["tag"] in ("b", "e")),
    ({"n": {"in": [0, 699, 700, 1399, 2099, 5000]}}, lambda d: d["n"] in (0, 699, 700, 1399, 2099)),
]


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize("seed", seeds())
def test_pages_merge_every_partition_in_id_order_with_filters(seed):
    cluster, docs = loaded_cluster(seed, 700)
    partitions = {cluster.hosts[0].node.storage.layout.partition_of(key) for key in docs}
    state = cluster.hosts[0].node.voting.state
    assert len(partitions) > 20 and len({state.assignments[p].primary for p in partitions}) == 3
    client = cluster.client(hosts=[cluster.hosts[seed % 3]])

    async def check():
        for limit in (41, 333, 1000):
            seen = {}
            assert await scan_all(client, limit=limit, seen=seen) == sorted(docs)
            assert seen == docs
        for where, test in FILTERS:
            wanted = sorted(key for key, doc in docs.items() if test(doc))
            for limit in (17, 1000):
                assert await scan_all(client, where=where, limit=limit) == wanted, (where, limit)

    run(cluster, check(), timeout=300)


def victim_and_coordinator(cluster, docs):
    """The host leading the most partitions that hold data (the victim) and another one (the
    host the client talks to, which coordinates the scan)."""
    state = cluster.hosts[0].node.voting.state
    layout = cluster.hosts[0].node.storage.layout
    counts = {}
    for key in docs:
        primary = state.assignments[layout.partition_of(key)].primary
        counts[primary] = counts.get(primary, 0) + 1
    victim_id = max(counts, key=counts.get)
    victim = next(h for h in cluster.hosts if host_id(h) == victim_id)
    coordinator = next(h for h in cluster.hosts if h is not victim)
    return victim, coordinator


def failed_over(cluster, victim_id):
    """Whether every partition the victim led now has another primary."""
    state = cluster.live()[0].node.voting.state
    return all(a.primary != victim_id for a in state.assignments.values())


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize("seed", seeds())
def test_a_scan_goes_on_across_a_failover_between_pages(seed):
    cluster, docs = loaded_cluster(seed, 200)
    victim, coordinator = victim_and_coordinator(cluster, docs)
    client = cluster.client(hosts=[coordinator], timeout=30.0)
    first = run(cluster, client.scan("item", limit=60))
    assert [item[0] for item in first.items] == sorted(docs)[:60]
    victim_id = host_id(victim)
    cluster.crash(victim)
    rest = run(cluster, scan_all(client, limit=60, cursor=first.cursor))
    assert [item[0] for item in first.items] + rest == sorted(docs), "every element once, in id order"
    assert coordinator.node.query.scans.counts["replanned"] > 0, "batches to the victim were re-planned"
    assert failed_over(cluster, victim_id)


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize("seed", seeds())
def test_a_scan_goes_on_when_a_primary_crashes_while_a_page_is_in_flight(seed):
    cluster, docs = loaded_cluster(seed, 200)
    victim, coordinator = victim_and_coordinator(cluster, docs)
    scans = coordinator.node.query.scans
    fetch = scans.fetch
    victim_id = host_id(victim)
    sent = []

    def fetch_then_crash(host, request):
        d = fetch(host, request)
        if host == victim_id and not sent:
            sent.append(request)
            # The batch is on its way: the victim dies before it can answer.
            cluster.clock.callLater(0, cluster.crash, victim)
        return d

    scans.fetch = fetch_then_crash
    client = cluster.client(hosts=[coordinator], timeout=30.0)
    pages = []

    async def scan():
        cursor = None
        while True:
            page = await client.scan("item", limit=60, cursor=cursor)
            pages.append(page)
            if page.cursor is None:
                return
            cursor = page.cursor

    run(cluster, scan(), timeout=120)
    assert sent and not victim.up, "the victim crashed with the first page's batch in flight"
    assert scans.counts["replanned"] > 0 and failed_over(cluster, victim_id)
    assert [item[0] for page in pages for item in page.items] == sorted(docs), "every element once, in id order"


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize("seed", seeds())
def test_an_idle_cursor_expires_on_its_host_and_resumes_on_another(seed):
    cluster, docs = loaded_cluster(seed, 100)
    issuer, other = cluster.hosts[0], cluster.hosts[1]
    client = cluster.client(hosts=[issuer])
    elsewhere = cluster.client(hosts=[other])
    first = run(cluster, client.scan("item", where={"even": True}, limit=25))
    second = run(cluster, client.scan("item", where={"even": True}, limit=25, cursor=first.cursor))
    evens = sorted(key for key, doc in docs.items() if doc["even"])
    assert [item[0] for item in first.items + second.items] == evens[:50]
    # Followed on another host (the client failed over), the cursor resumes from its last id.
    rest = run(cluster, scan_all(elsewhere, where={"even": True}, limit=25, cursor=second.cursor))
    assert [item[0] for item in first.items + second.items] + rest == evens
    # Idle past the limit, it is refused on the host that issued it.
    cluster.run(61)
    with pytest.raises(errors.CursorExpired, match="start the scan again"):
        run(cluster, client.scan("item", where={"even": True}, limit=25, cursor=second.cursor))
    # ...and still resumes elsewhere: the state was only a cache.
    again = run(cluster, scan_all(elsewhere, where={"even": True}, limit=25, cursor=second.cursor))
    assert again == rest


@pytest.mark.parametrize("seed", seeds())
def test_a_page_ends_in_unavailable_while_partitions_stay_without_a_primary(seed):
    cluster, docs = loaded_cluster(seed, 20)
    survivor = cluster.hosts[seed % 3]
    client = cluster.client(hosts=[survivor], timeout=10.0)
    first = run(cluster, client.scan("item", limit=5))
    for host in cluster.hosts:
        if host is not survivor:
            cluster.crash(host)  # no majority is left: no partition can fail over
    outcome = []
    started = cluster.clock.seconds()
    client.scan("item", limit=100, cursor=first.cursor).addBoth(outcome.append)
    cluster.run_until(lambda: outcome, timeout=30)
    assert isinstance(outcome[0], Failure) and outcome[0].check(errors.Unavailable, errors.Timeout)
    assert cluster.clock.seconds() - started <= 10.5, "the client's timeout bounds the request"
    # The host itself answers Unavailable once the page's time is up (the client retried it).
    outcome = []
    started = cluster.clock.seconds()
    survivor.node.query.scan("item", limit=100, cursor=first.cursor).addBoth(outcome.append)
    cluster.run_until(lambda: outcome, timeout=30)
    assert isinstance(outcome[0], Failure) and outcome[0].check(errors.Unavailable)
    assert "ask again with the same cursor" in str(outcome[0].value)
    assert cluster.clock.seconds() - started == pytest.approx(8.0, abs=0.1)
