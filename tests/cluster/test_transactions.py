"""Transactions across partitions in the simulator: all or none on every replica, whoever dies
(the coordinator before, during or after the prepare), and conflicting transactions fail with
Conflict instead of waiting on each other."""

import collections
import random

import pytest
from twisted.internet import defer, task

from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import Faults, seeds
from nodedb.testing.workload import FaultSchedule
from nodedb import codec

pytestmark = pytest.mark.usefixtures("seed_report")


def replicated_cluster(seed, hosts=3):
    cluster = SimCluster(seed)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.settled, timeout=60)
    return cluster


def run(cluster, coroutine, timeout=30.0):
    return cluster.wait(coroutine, timeout)


def host_id(host):
    return host.node.identity.host_id


def partition_of(cluster, element_id):
    return cluster.live()[0].node.storage.layout.partition_of(element_id)


def primary_of(cluster, element_id):
    return cluster.primary_host(partition_of(cluster, element_id))


def spread(cluster, count=60):
    """*count* elements inserted through every host in turn, so they land in partitions led
    by each of them."""
    clients = [cluster.client(hosts=[h]) for h in cluster.live()]

    async def insert():
        return [await clients[n % len(clients)].insert("acct", {"n": n, "balance": 100}) for n in range(count)]

    return run(cluster, insert())


def pick(cluster, ids, hosts=2, per_host=1):
    """Ids in distinct partitions led by *hosts* distinct primaries, *per_host* each."""
    chosen, by_host, partitions = [], {}, set()
    for element_id in ids:
        partition = partition_of(cluster, element_id)
        primary = primary_of(cluster, element_id).name
        if partition in partitions:
            continue
        if len(by_host.get(primary, [])) >= per_host or (primary not in by_host and len(by_host) >= hosts):
            continue
        by_host.setdefault(primary, []).append(element_id)
        partitions.add(partition)
        chosen.append(element_id)
    assert len(by_host) == hosts and all(len(v) == per_host for v in by_host.values()), by_host
    return chosen


def stored(cluster, record_type, element_id):
    """``{host name: doc or None}`` of every live host that holds the element's partition."""
    partition = partition_of(cluster, element_id)
    state = cluster.live()[0].node.voting.state
    replicas = set(state.assignments[partition].replicas)
    found = {}
    for h in cluster.live():
        if host_id(h) in replicas:
            item = h.store.types.get(record_type, {}).get(element_id)
            found[h.name] = None if item is None else codec.decode_stored(item[0])
    return found


def internal_records(cluster):
    return {
        h.name: (len(h.store.types.get(codec.PREPARED_TYPE, {})), len(h.store.types.get(codec.DECISION_TYPE, {})))
        for h in cluster.live()
    }


def settle(cluster, seconds=20):
    cluster.run_until(lambda: cluster.replicated(full=False) and not any(
        h.node.transactions.locks.due(float("inf")) for h in cluster.live()
    ), timeout=seconds)


@pytest.mark.parametrize("seed", seeds(3))
def test_a_transaction_over_hosts_applies_everywhere(seed):
    cluster = replicated_cluster(seed)
    client = cluster.client()
    ids = spread(cluster)
    a, b = pick(cluster, ids)

    async def work():
        doc_a, va = await client.get("acct", a)
        tx = client.transaction()
        tx.update("acct", a, {"balance": 50}, if_version=va)
        tx.update("acct", b, {"balance": 150})
        tx.insert("acct", {"new": True}, near=b)
        tx.insert("acct", {"home": True})
        return await tx.commit()

    va_new, vb_new, new_near_b, new_home = run(cluster, work())
    assert partition_of(cluster, new_near_b) == partition_of(cluster, b)
    assert partition_of(cluster, new_home) == partition_of(cluster, a)
    settle(cluster)
    for element, balance in ((a, 50), (b, 150)):
        copies = stored(cluster, "acct", element)
        assert len(copies) == 3
        assert all(doc["balance"] == balance for doc in copies.values()), copies
    assert all(doc == {"new": True} for doc in stored(cluster, "acct", new_near_b).values())
    assert tuple(run(cluster, client.get("acct", a))) == ({"balance": 50}, va_new)
    assert tuple(run(cluster, client.get("acct", b))) == ({"balance": 150}, vb_new)
    assert all(counts == (0, 0) for counts in internal_records(cluster).values()), internal_records(cluster)


@pytest.mark.parametrize("seed", seeds(3))
def test_a_failed_participant_check_applies_nothing(seed):
    cluster = replicated_cluster(seed)
    client = cluster.client()
    ids = spread(cluster)
    a, b = pick(cluster, ids)

    async def work():
        tx = client.transaction()
        tx.update("acct", a, {"balance": 1})
        tx.update("acct", b, {"balance": 1}, if_version=10**9)  # stale
        with pytest.raises(errors.Conflict):
            await tx.commit()
        tx = client.transaction()
        tx.update("acct", a, {"balance": 2})
        tx.delete("acct", b + 1_000_000)  # missing, in b's partition
        with pytest.raises(errors.NotFound):
            await tx.commit()

    run(cluster, work())
    settle(cluster)
    for element in (a, b):
        assert all(doc["balance"] == 100 for doc in stored(cluster, "acct", element).values())
    assert all(counts[0] == 0 for counts in internal_records(cluster).values()), internal_records(cluster)


@pytest.mark.parametrize("seed", seeds(3))
def test_conflicting_transactions_fail_with_conflict_never_hang(seed):
    cluster = replicated_cluster(seed)
    client = cluster.client()
    ids = spread(cluster)
    a, b, c = pick(cluster, ids, hosts=3)

    async def work():
        first, second = client.transaction(), client.transaction()
        first.update("acct", a, {"balance": 1}).update("acct", b, {"balance": 1})
        second.update("acct", b, {"balance": 2}).update("acct", c, {"balance": 2})
        outcomes = await defer.DeferredList([first.commit(), second.commit()], consumeErrors=True)
        return outcomes

    outcomes = run(cluster, work())
    first_ok, second_ok = (ok for ok, _ in outcomes)
    assert first_ok or second_ok, outcomes
    for ok, result in outcomes:
        if not ok:
            assert result.check(errors.Conflict), result
    settle(cluster)
    balances = {e: {doc["balance"] for doc in stored(cluster, "acct", e).values()} for e in (a, b, c)}
    # Each transaction is all or none, on every replica.
    assert balances[a] == {1 if first_ok else 100}
    assert balances[c] == {2 if second_ok else 100}
    assert len(balances[b]) == 1 and balances[b] <= {1 if first_ok else None, 2 if second_ok else None}


def patch(service, name, wrapper):
    """Replace the bound method *name* of *service* (and its request handler, if it is one)
    with ``wrapper(original, *arguments)``."""
    original = getattr(service, name)

    def patched(*arguments, **keywords):
        return wrapper(original, *arguments, **keywords)

    setattr(service, name, patched)


#: When the coordinator dies: while the first prepare is on its way, once one participant of
#: two has prepared, once the decision is committed (before any participant hears it), and once
#: one participant has applied it.
MOMENTS = ("before-prepare", "during-prepare", "after-decision", "after-first-commit")


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("seed", seeds(2))
def test_the_participants_settle_a_transaction_whose_coordinator_died(seed, moment):
    cluster = replicated_cluster(seed)
    ids = spread(cluster)
    a, b, c = pick(cluster, ids, hosts=3)
    coordinator = primary_of(cluster, a)
    first, second = primary_of(cluster, b), primary_of(cluster, c)
    client = cluster.client(hosts=[first])
    crashed = []

    def kill():
        if not crashed:
            crashed.append(sum(counts[0] for counts in internal_records(cluster).values()))
            cluster.crash(coordinator)

    def kill_soon(result=None):
        cluster.clock.callLater(0, kill)
        return result

    if moment == "before-prepare":
        patch(first.node.transactions, "prepare", lambda original, *a: (kill(), original(*a))[1])
    elif moment == "during-prepare":
        patch(first.node.transactions, "prepare", lambda original, *a: original(*a).addCallback(kill_soon))
    elif moment == "after-decision":

        def commit(original, units, owner=None, check=None):
            d = original(units, owner, check)
            if any(u.record_type == codec.DECISION_TYPE for u in units):
                d.addCallback(kill_soon)
            return d

        patch(coordinator.node.local, "commit", commit)
    else:
        patch(first.node.transactions, "_finish", lambda original, *a: original(*a).addCallback(kill_soon))

    async def work():
        tx = client.transaction()
        tx.update("acct", a, {"balance": 7}).update("acct", b, {"balance": 7}).update("acct", c, {"balance": 7})
        try:
            return await tx.commit()
        except errors.NodeDBError as e:
            return e

    outcome = run(cluster, work())
    assert crashed, "the coordinator was never killed"
    if moment in ("after-decision", "after-first-commit"):
        # The decision is taken: a read of a participant's element waits for it to be
        # applied there rather than show the old value beside the other's new one.
        for element in (b, c):
            doc, _version = run(cluster, client.get("acct", element))
            assert doc["balance"] == 7
    settle(cluster, seconds=60)
    balances = {e: [doc["balance"] for doc in stored(cluster, "acct", e).values()] for e in (a, b, c)}
    values = {v for copies in balances.values() for v in copies}
    assert len(values) == 1, balances  # all or none, on every live replica
    applied = values.pop() == 7
    if moment == "after-decision" or moment == "after-first-commit":
        assert applied, balances
    if moment == "before-prepare":
        assert not applied, balances
    if moment == "during-prepare":
        assert crashed[0] > 0  # a participant held a prepare when the coordinator died
    if isinstance(outcome, list):
        assert applied
    elif not isinstance(outcome, errors.Timeout):
        assert not applied, outcome
    assert all(counts[0] == 0 for counts in internal_records(cluster).values()), internal_records(cluster)
    # A new transaction on the same elements goes through: no lock was left behind.
    async def again():
        tx = client.transaction()
        tx.update("acct", a, {"balance": 8}).update("acct", b, {"balance": 8})
        return await tx.commit()

    assert len(run(cluster, again())) == 2


@pytest.mark.parametrize("seed", seeds(3))
def test_transfers_under_faults_keep_every_replica_consistent_and_the_total_whole(seed):
    """Three clients move money between accounts in partitions led by different hosts, with
    if_version on both sides, for 30 s of crashes, cut-off hosts and paused hosts over a lossy,
    reordering network. A transfer applied in one partition and not the other would change
    the total; at the end every replica must agree and the total must be what it was."""
    cluster = replicated_cluster(seed)
    accounts = spread(cluster, count=12)
    total = 100 * len(accounts)
    rng = random.Random(seed)
    clients = [cluster.client() for _ in range(3)]
    outcomes = collections.Counter()
    running = [True]

    async def transfers(client):
        while running[0]:
            a, b = rng.sample(accounts, 2)
            try:
                (doc_a, version_a), (doc_b, version_b) = await client.get("acct", a), await client.get("acct", b)
                amount = rng.randint(1, 10)
                tx = client.transaction()
                tx.update("acct", a, {"balance": doc_a["balance"] - amount}, if_version=version_a)
                tx.update("acct", b, {"balance": doc_b["balance"] + amount}, if_version=version_b)
                await tx.commit()
                outcomes["committed"] += 1
            except errors.NodeDBError as e:
                outcomes[type(e).__name__] += 1
            await task.deferLater(cluster.clock, rng.uniform(0.01, 0.1), lambda: None)

    loops = [defer.ensureDeferred(transfers(c)) for c in clients]
    cluster.network.faults = Faults(drop=0.01, reorder=0.05)
    schedule = FaultSchedule(cluster, random.Random(seed), ("crash", "partition", "pause"))
    schedule.run(30.0)
    cluster.network.faults = Faults()
    running[0] = False
    cluster.run_until(lambda: all(loop.called for loop in loops), timeout=60)
    cluster.run_until(
        lambda: cluster.replicated() and not any(h.node.transactions.locks.due(float("inf")) for h in cluster.live()),
        timeout=120,
    )
    balances = {}
    for account in accounts:
        copies = stored(cluster, "acct", account)
        assert len({doc["balance"] for doc in copies.values()}) == 1, (account, copies, schedule.events)
        balances[account] = next(iter(copies.values()))["balance"]
    assert sum(balances.values()) == total, (balances, outcomes, schedule.events)
    assert outcomes["committed"] > 20, outcomes
    assert all(counts[0] == 0 for counts in internal_records(cluster).values()), internal_records(cluster)


BAD_REQUESTS = {
    "tx.prepare no tx": ("tx.prepare", {"p": 0, "ops": [{"op": "delete", "type": "acct", "key": 1}]}),
    "tx.prepare text tx": ("tx.prepare", {"tx": "1", "p": 0, "ops": []}),
    "tx.prepare negative partition": ("tx.prepare", {"tx": 1, "p": -1, "ops": []}),
    "tx.prepare ops not a list": ("tx.prepare", {"tx": 1, "p": 0, "ops": "all"}),
    "tx.prepare no ops": ("tx.prepare", {"tx": 1, "p": 0, "ops": []}),
    "tx.prepare bad op": ("tx.prepare", {"tx": 1, "p": 0, "ops": [{"op": "drop", "type": "acct"}]}),
    "tx.prepare internal type": ("tx.prepare", {"tx": 1, "p": 0, "ops": [{"op": "delete", "type": "nodedb.prepared", "key": 1}]}),
    "tx.prepare foreign element": ("tx.prepare", {"tx": 1, "p": 0, "ops": [{"op": "delete", "type": "acct", "key": 1 << 48}]}),
    "tx.commit no record": ("tx.commit", {"tx": 1, "p": 0}),
    "tx.commit foreign record": ("tx.commit", {"tx": 1, "p": 0, "record": 1 << 48}),
    "tx.abort float partition": ("tx.abort", {"tx": 1, "p": 0.5, "record": 1}),
    "tx.resolve list tx": ("tx.resolve", {"tx": [1]}),
}


@pytest.mark.parametrize("op, request_", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_transaction_requests_are_refused_and_change_nothing(op, request_):
    cluster = replicated_cluster(1)
    host = cluster.live()[0]
    before = {h.name: dict(h.store.types) for h in cluster.live()}
    with pytest.raises(errors.InvalidRequest):
        run(cluster, defer.maybeDeferred(host.node.transactions._handlers[op], dict(request_, op=op)))
    assert {h.name: dict(h.store.types) for h in cluster.live()} == before
