"""Distributed queries with real processes (issue 6; DESIGN sections 2, 3 and 4.5): scans
with filters and paging, transactions across partitions led by different hosts, both through
the Python client and the ``nodedb`` command, and a transaction and a scan across a kill -9.

One cluster of three nodes (``--replicas 3``) serves the whole module. It is formed once, and
the tests start only after Voting stopped moving primaries for balance, so that no request is
caught in a planned move. Elements land in partitions led by every host: each node inserts
into partitions it leads, and inserts ``near`` an id of a chosen partition go there. The
transactions pick their partitions from the partition map (``/status``: each host lists under
``replication.primary`` the partitions it leads), so that every one spans primaries on
different hosts. The kill test comes last: it leaves the cluster with a host restarted.

The tests that use :mod:`nodedb.client` run in the reactor (pytest-twisted); what blocks
(``/status`` over HTTP, starting and killing processes, waiting for replication) runs in a
thread, so that the clients' heartbeats keep going. Nothing sleeps to synchronise: waits poll
a condition until a deadline.
"""

import itertools
import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from nodedb import errors
from nodedb.client import connect
from nodedb.ids import IdLayout
from nodedb.testing.history import ABSENT

from .harness import WireClient, assert_one_line_error, run_cli, settle_requests, wait_for
from .replicated import failed_over, primaries_of, start_cluster, status, wait_replicated

pytestmark = pytest.mark.system

LAYOUT = IdLayout()
PARTITIONS = 64
#: The scanned record type, written once by the ``items`` fixture and never changed after.
ITEMS = "qitem"
#: Elements of ITEMS: each node inserts ITEMS_PER_NODE, half where it puts them (partitions it
#: leads), half ``near`` partitions spread over all of them.
ITEMS_PER_NODE = 200
GROUPS = ("a", "b", "c")
#: Primaries unchanged for this long count as balanced.
BALANCE_QUIET = 3.0
#: Transactions in the kill test, at most KILL_IN_FLIGHT at once; the kill comes once
#: KILL_AFTER of them have been answered.
KILL_TRANSACTIONS = 48
KILL_IN_FLIGHT = 12
KILL_AFTER = 12
#: The kill test's client timeout: requests that meet the failover (about 4 s) are retried
#: by the client (Unavailable) until they go through.
KILL_CLIENT_TIMEOUT = 25.0
#: How long transactions left in doubt by the kill may take to be settled by recovery
#: (failure detection, failover, ``resolve_after``), however loaded the machine.
SETTLE_WITHIN = 45.0


# -- the cluster and its data --------------------------------------------------------------------


def item_document(n, via):
    """Document of item *n*, inserted through node *via*. ``score`` is a number (a float for
    odd n), missing for every tenth item and text for every 25th, so that filters meet missing
    fields and values of another type."""
    doc = {"n": n, "group": GROUPS[n % 3], "name": f"item{n:04d}", "via": via}
    if n % 25 == 0:
        doc["score"] = "high"
    elif n % 10 != 0:
        doc["score"] = n // 2 if n % 2 == 0 else n / 2
    return doc


def wait_balanced(nodes, timeout=90.0):
    """Wait until who leads how many partitions has not changed for BALANCE_QUIET seconds
    and every host leads some."""
    seen = {"led": None, "since": 0.0}

    def quiet():
        try:
            led = primaries_of(nodes)
        except (OSError, AssertionError):
            return False
        now = time.monotonic()
        if led != seen["led"]:
            seen["led"], seen["since"] = led, now
        return len(led) == len(nodes) and min(led.values()) > 0 and now - seen["since"] >= BALANCE_QUIET

    wait_for(quiet, timeout=timeout, what=f"the primaries to be balanced (last: {seen['led']})", interval=0.2)


def leaders(nodes):
    """``{node name: sorted partitions it leads}``, each from the node's own ``/status``; every
    partition is led by exactly one of them."""
    led = {node.name: sorted(int(p) for p, primary in status(node)["replication"]["primary"].items() if primary["ready"]) for node in nodes}
    everything = sorted(itertools.chain.from_iterable(led.values()))
    assert everything == list(range(PARTITIONS)), led
    return led


def insert_spread(node, record_type, docs_and_near):
    """Insert ``(doc, near)`` pairs through *node* (near None: where the node puts it);
    :return: the new ids in order."""
    requests = [("insert", {"type": record_type, "doc": doc, **({} if near is None else {"near": near})}) for doc, near in docs_and_near]
    with WireClient(node.address) as client:
        return settle_requests(client, requests, f"inserts through {node.name}")


def read_copies(node, record_type, ids, consistency=None):
    """``{id: (doc, version)}`` read through *node* (ABSENT, None for NotFound); with
    ``consistency="replica"`` the node answers from its own copy (when it holds a caught-up
    one, as every node does once replication is complete)."""
    extra = {} if consistency is None else {"consistency": consistency}
    found = {}
    with WireClient(node.address) as client:
        sent = {}
        left = list(ids)

        def round_trip():
            sent.clear()
            for element_id in left:
                sent[client.request("get", type=record_type, key=element_id, **extra)] = element_id
            unavailable = []
            for _ in range(len(sent)):
                reply = client.receive()
                element_id = sent[reply["id"]]
                if "ok" in reply:
                    found[element_id] = tuple(reply["ok"])
                elif reply["error"]["type"] == "NotFound":
                    found[element_id] = (ABSENT, None)
                elif reply["error"]["type"] == "Unavailable":
                    unavailable.append(element_id)
                else:
                    raise AssertionError(f"get {element_id} through {node.name}: {reply['error']}")
            left[:] = unavailable
            return not left

        wait_for(round_trip, what=f"reads through {node.name}", interval=0.1)
    return found


@pytest.fixture(scope="module")
def cluster(module_processes):
    """Three nodes, ``--replicas 3``, every partition replicated and the primaries balanced."""
    nodes = start_cluster(module_processes, 3)
    wait_replicated(nodes, caught_up=True, timeout=60, what="three replicas of every partition")
    wait_balanced(nodes)
    return nodes


@pytest.fixture(scope="module")
def items(cluster):
    """``{id: doc}`` of every element of ITEMS, inserted through all three nodes."""
    led = leaders(cluster)
    expected = {}
    n = itertools.count()
    for via, node in enumerate(cluster):
        batch = []
        for k in range(ITEMS_PER_NODE):
            near = None if k % 2 == 0 else LAYOUT.make((via * 17 + k) % PARTITIONS, 1)
            batch.append((item_document(next(n), via), near))
        for element_id, (doc, near) in zip(insert_spread(node, ITEMS, batch), batch):
            if near is not None:
                assert LAYOUT.partition_of(element_id) == LAYOUT.partition_of(near), (element_id, near)
            expected[element_id] = doc
    assert len(expected) == len(cluster) * ITEMS_PER_NODE
    # The data lies in partitions led by each of the three hosts.
    used = {LAYOUT.partition_of(i) for i in expected}
    for name, partitions in led.items():
        assert used & set(partitions), f"no item in a partition {name} leads ({partitions})"
    return expected


# -- helpers for the tests in the reactor -------------------------------------------------------


def in_thread(f, *args, **kwargs):
    """Run blocking *f* in a thread (the reactor keeps running); :return: a Deferred."""
    return threads.deferToThread(f, *args, **kwargs)


async def clients_for(nodes, timeout=None, partition_aware=True):
    """One :class:`~nodedb.client.Client` per node, each connected to its node first (and,
    *partition_aware*, sending requests on elements straight to their primaries)."""
    from twisted.internet import reactor

    clients = []
    for i in range(len(nodes)):
        order = nodes[i:] + nodes[:i]
        kwargs = {} if timeout is None else {"timeout": timeout}
        clients.append(await connect(reactor, [n.address for n in order], partition_aware=partition_aware, **kwargs))
    return clients


async def close_all(clients):
    for client in clients:
        await client.close()


async def scan_all(client, record_type, where=None, limit=None, cursor=None):
    """Every ``(id, doc, version)`` of a scan, following cursors; :return: ``(items, pages)``.
    Every page must hold at most *limit* items."""
    items, pages = [], 0
    while True:
        page = await client.scan(record_type, where=where, limit=limit, cursor=cursor)
        pages += 1
        assert limit is None or len(page.items) <= limit, (limit, len(page.items))
        items.extend(page.items)
        cursor = page.cursor
        if cursor is None:
            return items, pages
        assert pages < 10_000, "the scan does not end"


def check_scan(items, expected, what):
    """*items* (a scan's ``(id, doc, version)``) are exactly *expected* (``{id: doc}``), every
    one once, in id order."""
    ids = [element_id for element_id, _doc, _version in items]
    assert ids == sorted(set(ids)), f"{what}: ids not strictly increasing (repeated or out of order)"
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    assert not missing and not extra, f"{what}: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
    for element_id, doc, version in items:
        assert doc == expected[element_id], (what, element_id, doc, expected[element_id])
        assert type(version) is int and version > 0, (what, element_id, version)


async def outcome(d):
    """``(True, result)`` or ``(False, the NodeDBError)`` of Deferred *d*."""
    try:
        return True, await d
    except errors.NodeDBError as e:
        return False, e


# -- scans ---------------------------------------------------------------------------------------

#: ``(where, the same test in plain Python)``: every operator of the contract, alone and
#: combined, on numbers, floats, text and missing or mistyped fields.
FILTERS = [
    ({"group": "b"}, lambda d: d["group"] == "b"),
    ({"group": {"=": "c"}}, lambda d: d["group"] == "c"),
    ({"n": {"<": 40}}, lambda d: d["n"] < 40),
    ({"n": {"<=": 40}}, lambda d: d["n"] <= 40),
    ({"n": {">": 560}}, lambda d: d["n"] > 560),
    ({"n": {">=": 560}}, lambda d: d["n"] >= 560),
    ({"n": {">=": 100, "<": 130}}, lambda d: 100 <= d["n"] < 130),
    ({"n": {"in": [0, 5, 77, 599, 10_000]}}, lambda d: d["n"] in (0, 5, 77, 599)),
    ({"group": {"in": ["a", "c"]}, "n": {"<": 90}}, lambda d: d["group"] in ("a", "c") and d["n"] < 90),
    # Numbers compare with numbers only: text and missing scores never match.
    ({"score": {">": 250}}, lambda d: isinstance(d.get("score"), (int, float)) and d["score"] > 250),
    ({"score": {"<=": 10.5}}, lambda d: isinstance(d.get("score"), (int, float)) and d["score"] <= 10.5),
    ({"score": 12.5}, lambda d: d.get("score") == 12.5),
    ({"score": "high"}, lambda d: d.get("score") == "high"),
    ({"name": {">=": "item0590"}}, lambda d: d["name"] >= "item0590"),
    ({"via": 2, "n": {"<": 500}}, lambda d: d["via"] == 2 and d["n"] < 500),
    ({"absent": 1}, lambda d: False),
    ({"n": {">": 10, "<": 5}}, lambda d: False),
]


@pytest_twisted.ensureDeferred
async def test_a_full_scan_returns_every_element_once_in_id_order_page_by_page(cluster, items):
    clients = await clients_for(cluster)
    try:
        for client, limit in zip(clients, (None, 37, 1000)):
            found, pages = await scan_all(client, ITEMS, limit=limit)
            check_scan(found, items, f"full scan through {client.server}, limit {limit}")
            if limit is not None:
                assert pages >= len(items) // limit, (limit, pages)
    finally:
        await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_scan_filters_are_evaluated_on_every_partition(cluster, items):
    clients = await clients_for(cluster)
    try:
        for index, (where, matches) in enumerate(FILTERS):
            expected = {i: doc for i, doc in items.items() if matches(doc)}
            limit = (None, 25, 7)[index % 3]
            found, _pages = await scan_all(clients[index % len(clients)], ITEMS, where=where, limit=limit)
            check_scan(found, expected, f"where {where}, limit {limit}")
    finally:
        await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_a_cursor_resumes_on_any_host(cluster, items):
    """A page of one, then the rest: each page asked of the next node with the cursor the
    previous one returned (another host resumes from the cursor's last id)."""
    clients = await clients_for(cluster)
    try:
        where = {"n": {">=": 200, "<": 260}}
        expected = {i: doc for i, doc in items.items() if 200 <= doc["n"] < 260}
        first = await clients[0].scan(ITEMS, where=where, limit=1)
        assert len(first.items) <= 1 and first.cursor is not None, first
        found, cursor, turn = list(first.items), first.cursor, 1
        while cursor is not None:
            page = await clients[turn % len(clients)].scan(ITEMS, where=where, limit=9, cursor=cursor)
            assert len(page.items) <= 9
            found.extend(page.items)
            cursor, turn = page.cursor, turn + 1
            assert turn < 1000, "the scan does not end"
        check_scan(found, expected, "a scan paged across hosts")
        assert turn >= 1 + (len(expected) - 1) // 9, turn

        with pytest.raises(errors.InvalidRequest):
            await clients[0].scan(ITEMS, limit=0)
        with pytest.raises(errors.InvalidRequest):
            await clients[1].scan(ITEMS, where={"n": {"~": 1}})
    finally:
        await close_all(clients)


def cli_ok(result):
    assert result.returncode == 0, str(result)
    assert "Traceback" not in result.stderr, str(result)
    return result.stdout_lines


def cli_documents(lines):
    """The ``(id, doc, version)`` of ``nodedb scan`` output lines."""
    found = []
    for line in lines:
        doc = json.loads(line)
        found.append((doc.pop("_id"), doc, doc.pop("_version")))
    return found


def test_cli_scan_with_filters_and_paging(cluster, items):
    first, second, third = (node.address for node in cluster)

    lines = cli_ok(run_cli("scan", ITEMS, "--where", "n>=100", "--where", "n<160", "--where", 'group="b"', connect=first))
    check_scan(cli_documents(lines), {i: d for i, d in items.items() if 100 <= d["n"] < 160 and d["group"] == "b"}, "nodedb scan --where")

    lines = cli_ok(run_cli("scan", ITEMS, "--where", 'group in ["a", "c"]', "--where", "score>250.5", connect=second))
    expected = {i: d for i, d in items.items() if d["group"] in ("a", "c") and isinstance(d.get("score"), (int, float)) and d["score"] > 250.5}
    check_scan(cli_documents(lines), expected, "nodedb scan --where in and a float")

    lines = cli_ok(run_cli("scan", ITEMS, "--where", "name=item0042", connect=third))
    check_scan(cli_documents(lines), {i: d for i, d in items.items() if d["name"] == "item0042"}, "nodedb scan --where text")

    # --limit prints at most N and says how to go on; --cursor goes on, through another node.
    expected = {i: d for i, d in items.items() if d["n"] < 25}
    found, cursor, runs = [], None, 0
    while True:
        more = ["--cursor", cursor] if cursor else []
        result = run_cli("scan", ITEMS, "--where", "n<25", "--limit", "10", *more, connect=(first, second, third)[runs % 3])
        lines = cli_ok(result)
        runs += 1
        assert len(lines) <= 10, str(result)
        found += cli_documents(lines)
        hint = [line for line in result.stderr_lines if line.startswith("more results: --cursor ")]
        if not hint:
            assert len(found) == len(expected) or len(lines) < 10, str(result)
            break
        assert len(lines) == 10, str(result)
        cursor = hint[0].split("--cursor ", 1)[1]
        assert runs < 6, "nodedb scan --limit does not end"
    check_scan(found, expected, "nodedb scan --limit 10 --cursor ...")
    assert runs >= 3, runs

    assert_one_line_error(run_cli("scan", ITEMS, "--where", "n~3", connect=first), code=2)


# -- transactions --------------------------------------------------------------------------------


def three_partitions(nodes, offset=0):
    """One partition led by each node (``[p0, p1, p2]`` in node order), *offset* choosing
    among those each leads."""
    led = leaders(nodes)
    return [led[node.name][offset % len(led[node.name])] for node in nodes]


async def place(client, record_type, docs_and_partitions):
    """Insert each ``(doc, partition)`` near the partition; :return: ``[(id, version)]``."""
    placed = []
    for doc, partition in docs_and_partitions:
        element_id = await client.insert(record_type, doc, near=LAYOUT.make(partition, 1))
        assert LAYOUT.partition_of(element_id) == partition
        _doc, version = await client.get(record_type, element_id)
        placed.append((element_id, version))
    return placed


async def current(client, record_type, element_id):
    """``(doc, version)``, or ``(ABSENT, None)`` when the element is not there."""
    try:
        return await client.get(record_type, element_id)
    except errors.NotFound:
        return ABSENT, None


@pytest_twisted.ensureDeferred
async def test_a_transaction_across_three_primaries_applies_everything(cluster):
    pa, pb, pc = await in_thread(three_partitions, cluster)
    clients = await clients_for(cluster)
    try:
        kind = "qtx_all"
        (x, vx), (y, vy), (z, vz), (w, _vw) = await place(
            clients[0], kind, [({"k": "x"}, pa), ({"k": "y"}, pb), ({"k": "z"}, pc), ({"k": "w"}, pb)]
        )
        tx = clients[1].transaction()  # through a host that leads none of the home's partition
        tx.update(kind, x, {"k": "x", "step": 1}, if_version=vx)
        tx.insert(kind, {"k": "new near y"}, near=y)
        tx.update(kind, y, {"k": "y", "step": 1}, if_version=vy)
        tx.delete(kind, z, if_version=vz)
        tx.insert(kind, {"k": "new near z"}, near=z)
        tx.delete(kind, w)
        tx.insert(kind, {"k": "new, placed by the transaction"})
        results = await tx.commit()
        assert len(results) == 7, results
        x_version, near_y, y_version, z_version, near_z, w_version, placed = results
        assert all(type(r) is int for r in results), results
        assert x_version > vx and y_version > vy and z_version > vz and w_version > 0
        assert LAYOUT.partition_of(near_y) == pb and LAYOUT.partition_of(near_z) == pc

        # Every change is there, read back linearizably through each node.
        for client in clients:
            assert await current(client, kind, x) == ({"k": "x", "step": 1}, x_version)
            assert await current(client, kind, y) == ({"k": "y", "step": 1}, y_version)
            assert await current(client, kind, z) == (ABSENT, None)
            assert await current(client, kind, w) == (ABSENT, None)
            assert (await current(client, kind, near_y))[0] == {"k": "new near y"}
            assert (await current(client, kind, near_z))[0] == {"k": "new near z"}
            assert (await current(client, kind, placed))[0] == {"k": "new, placed by the transaction"}
        found, _pages = await scan_all(clients[2], kind)
        assert sorted(i for i, _d, _v in found) == sorted([x, y, near_y, near_z, placed])
        # A transaction of one partition, and an empty one.
        tx = clients[2].transaction()
        tx.update(kind, x, {"k": "x", "step": 2}, if_version=x_version)
        tx.insert(kind, {"k": "beside x"}, near=x)
        x_version2, beside = await tx.commit()
        assert await current(clients[0], kind, x) == ({"k": "x", "step": 2}, x_version2)
        assert LAYOUT.partition_of(beside) == pa
        assert await clients[0].transaction().commit() == []
    finally:
        await close_all(clients)


#: Where the transaction of test_a_stale_version_fails_the_whole_transaction goes wrong:
#: ``(name, the operation to spoil)``.
SPOILED = [
    ("stale if_version on the home partition's update", "x"),
    ("stale if_version on a participant's update", "y"),
    ("stale if_version on a participant's delete", "z"),
    ("update of a deleted element", "gone"),
]


@pytest.mark.parametrize("case, spoil", SPOILED, ids=[s for _c, s in SPOILED])
@pytest_twisted.ensureDeferred
async def test_a_stale_version_fails_the_whole_transaction(cluster, case, spoil):
    pa, pb, pc = await in_thread(three_partitions, cluster, 1)
    clients = await clients_for(cluster)
    try:
        kind = f"qtx_stale_{spoil}"
        (x, vx), (y, vy), (z, vz), (gone, _vg) = await place(
            clients[0], kind, [({"k": "x"}, pa), ({"k": "y"}, pb), ({"k": "z"}, pc), ({"k": "gone"}, pc)]
        )
        await clients[1].delete(kind, gone)
        # Another writer moves the spoiled element on, so the version this transaction read is
        # stale (for "gone": it no longer exists).
        versions = {"x": vx, "y": vy, "z": vz}
        if spoil in versions:
            versions[spoil] = await clients[2].update(kind, {"x": x, "y": y, "z": z}[spoil], {"k": spoil, "moved": True})
        before = {i: await current(clients[0], kind, i) for i in (x, y, z, gone)}

        tx = clients[[s for _c, s in SPOILED].index(spoil) % 3].transaction()
        tx.update(kind, x, {"k": "x", "tx": True}, if_version=vx)
        tx.insert(kind, {"k": "new", "tx": True}, near=y)
        tx.update(kind, y, {"k": "y", "tx": True}, if_version=vy)
        tx.delete(kind, z, if_version=vz)
        tx.insert(kind, {"k": "new", "tx": True}, near=z)
        tx.insert(kind, {"k": "new", "tx": True})
        if spoil == "gone":
            tx.update(kind, gone, {"k": "gone", "tx": True})
        with pytest.raises((errors.Conflict, errors.NotFound)) as refused:
            await tx.commit()
        if spoil != "gone":
            assert isinstance(refused.value, errors.Conflict), (case, refused.value)

        # Nothing was applied, as every node reads it.
        for client in clients:
            after = {i: await current(client, kind, i) for i in (x, y, z, gone)}
            assert after == before, case
            found, _pages = await scan_all(client, kind, where={"tx": True})
            assert found == [], (case, found)
        # The elements are not left locked: the same changes with current versions go through.
        tx = clients[0].transaction()
        tx.update(kind, x, {"k": "x", "tx": 2}, if_version=before[x][1])
        tx.update(kind, y, {"k": "y", "tx": 2}, if_version=before[y][1])
        tx.delete(kind, z, if_version=before[z][1])
        await tx.commit()
    finally:
        await close_all(clients)


@pytest_twisted.ensureDeferred
async def test_concurrent_transactions_on_the_same_elements_never_mix(cluster):
    """Twelve transactions at once, through all three nodes, each writing the same three
    elements (one per primary host) with the versions read before: at most one commits, the
    others fail with Conflict, and the three elements hold one transaction's writes or none."""
    pa, pb, pc = await in_thread(three_partitions, cluster, 2)
    clients = await clients_for(cluster)
    try:
        kind = "qtx_race"
        placed = await place(clients[0], kind, [({"k": "a"}, pa), ({"k": "b"}, pb), ({"k": "c"}, pc)])
        before = [await current(clients[0], kind, i) for i, _v in placed]

        def racer(k):
            tx = clients[k % 3].transaction()
            for element_id, version in placed[k % 3 :] + placed[: k % 3]:  # different orders
                tx.update(kind, element_id, {"winner": k}, if_version=version)
            return outcome(tx.commit())

        outcomes = await defer.gatherResults([defer.ensureDeferred(racer(k)) for k in range(12)])
        winners = [k for k, (ok, _r) in enumerate(outcomes) if ok]
        refused = [r for ok, r in outcomes if not ok]
        assert len(winners) <= 1, outcomes
        assert all(isinstance(e, errors.Conflict) for e in refused), refused
        after = [await current(clients[1], kind, i) for i, _v in placed]
        if winners:
            [k] = winners
            versions = outcomes[k][1]
            by_id = {element_id: v for (element_id, _), v in zip(placed[k % 3 :] + placed[: k % 3], versions)}
            assert after == [({"winner": k}, by_id[i]) for i, _v in placed], (after, outcomes[k])
        else:
            assert after == before, after
        # Nothing is left locked: a transaction with the current versions goes through.
        tx = clients[2].transaction()
        for (element_id, _v), (_doc, version) in zip(placed, after):
            tx.update(kind, element_id, {"winner": "after"}, if_version=version)
        await tx.commit()
    finally:
        await close_all(clients)


def test_cli_transaction_from_a_json_file(cluster, tmp_path):
    pa, pb, pc = three_partitions(cluster, 3)
    kind = "qtx_cli"
    with WireClient(cluster[0].address) as client:
        x, y, z = settle_requests(
            client,
            [("insert", {"type": kind, "doc": {"k": k}, "near": LAYOUT.make(p, 1)}) for k, p in (("x", pa), ("y", pb), ("z", pc))],
            "inserts",
        )
        vx, vy, vz = (client.get(kind, i)[1] for i in (x, y, z))

    operations = [
        {"op": "update", "type": kind, "id": x, "doc": {"k": "x", "cli": 1}, "if_version": vx},
        {"op": "insert", "type": kind, "doc": {"k": "new", "cli": 1}, "near": y},
        {"op": "delete", "type": kind, "id": z, "if_version": vz},
        {"op": "update", "type": kind, "id": y, "doc": {"k": "y", "cli": 1}},
    ]
    path = tmp_path / "transaction.json"
    path.write_text(json.dumps(operations))
    lines = cli_ok(run_cli("transaction", str(path), connect=cluster[1].address))
    assert len(lines) == 4 and all(line.isdigit() for line in lines), lines
    x_version, new_id, z_version, y_version = map(int, lines)
    assert LAYOUT.partition_of(new_id) == pb and z_version > vz
    for node in cluster:
        reads = read_copies(node, kind, [x, y, z, new_id])
        assert reads[x] == ({"k": "x", "cli": 1}, x_version), reads
        assert reads[y] == ({"k": "y", "cli": 1}, y_version), reads
        assert reads[z] == (ABSENT, None), reads
        assert reads[new_id][0] == {"k": "new", "cli": 1}, reads

    # The same file again: x's if_version is stale now, so nothing of it applies (not even
    # the insert, and y keeps its version). Read from stdin this time.
    result = run_cli("transaction", "-", connect=cluster[2].address, input=json.dumps(operations[:2] + operations[3:]))
    line = assert_one_line_error(result, code=1, contains=("Conflict",))
    assert "Traceback" not in line
    for node in cluster:
        assert read_copies(node, kind, [x, y]) == {x: ({"k": "x", "cli": 1}, x_version), y: ({"k": "y", "cli": 1}, y_version)}
    with WireClient(cluster[0].address) as client:
        assert len(client.scan_all(kind, where={"cli": 1})) == 3  # x, y and the first insert only


# -- a kill -9 under transactions and a scan -----------------------------------------------------


def busiest(nodes):
    counts = primaries_of(nodes)
    return max(nodes, key=lambda n: counts.get(n.host_id, 0))


class KillPlan:
    """The elements of the kill test's transactions: transaction *i* updates its home element
    ``home[i]``, updates ``part[i]`` (with its version) and deletes ``dead[i]`` (with its
    version) in partitions led by the two other hosts, and inserts an element ``{"tx": i}``
    near ``part[i]``. Even transactions have their home on the victim (it coordinates them),
    odd ones on a survivor, with a participant on the victim."""

    kind = "qkill"

    def __init__(self, led, victim, survivors):
        self.led = led
        self.victim, self.survivors = victim, survivors
        self.home, self.part, self.dead = {}, {}, {}
        self.versions = {}

    def partitions(self, i):
        """``(home, participant, deleted)`` partitions of transaction *i*."""
        v, s1, s2 = (self.led[n.name] for n in (self.victim, *self.survivors))
        if i % 2 == 0:
            return v[i % len(v)], s1[i % len(s1)], s2[i % len(s2)]
        return s1[i % len(s1)], v[i % len(v)], s2[(i + 1) % len(s2)]

    def documents(self, i):
        return {"tx": i, "role": "home", "new": True}, {"tx": i, "role": "part", "new": True}


async def run_transactions(clients, plan, count, in_flight, after, on_after):
    """Commit *count* transactions of *plan*, *in_flight* at a time, spread over *clients*;
    call ``on_after()`` (a Deferred) once *after* of them were answered, while the others are
    under way. :return: ``{i: (ok, result or error)}``."""
    outcomes = {}
    semaphore = defer.DeferredSemaphore(in_flight)
    reached = defer.Deferred()

    async def one(i):
        tx = clients[i % len(clients)].transaction()
        home_doc, part_doc = plan.documents(i)
        tx.update(plan.kind, plan.home[i], home_doc)
        tx.update(plan.kind, plan.part[i], part_doc, if_version=plan.versions[plan.part[i]])
        tx.delete(plan.kind, plan.dead[i], if_version=plan.versions[plan.dead[i]])
        tx.insert(plan.kind, {"tx": i, "role": "inserted"}, near=plan.part[i])
        outcomes[i] = await outcome(tx.commit())
        if len(outcomes) == after and not reached.called:
            reached.callback(None)

    running = [semaphore.run(lambda i=i: defer.ensureDeferred(one(i))) for i in range(count)]
    await reached
    await on_after()
    await defer.gatherResults(running, consumeErrors=True)
    return outcomes


def effects(plan, i, reads, inserted):
    """``[home updated, participant updated, deleted, inserted]`` for transaction *i*, from
    ``reads`` (``{id: (doc, version)}``) and ``inserted`` (``{i: count}``)."""
    home_doc, part_doc = plan.documents(i)
    return [
        reads[plan.home[i]][0] == home_doc,
        reads[plan.part[i]][0] == part_doc,
        reads[plan.dead[i]][0] is ABSENT,
        inserted.get(i, 0) > 0,
    ]


def all_or_none_problems(plan, outcomes, reads, inserted):
    """What breaks atomicity: a transaction partly applied, one answered ok but not applied,
    one refused (Conflict, NotFound, InvalidRequest, Unavailable: certainly not applied) yet
    applied, or an insert applied twice."""
    problems = []
    for i, (ok, result) in sorted(outcomes.items()):
        applied = effects(plan, i, reads, inserted)
        if inserted.get(i, 0) > 1:
            problems.append(f"tx {i}: its insert applied {inserted[i]} times")
        if any(applied) and not all(applied):
            problems.append(f"tx {i} ({'ok' if ok else type(result).__name__}): partly applied {applied}")
        elif ok and not all(applied):
            problems.append(f"tx {i}: committed but not applied {applied}")
        elif not ok and not isinstance(result, errors.Timeout) and any(applied):
            problems.append(f"tx {i}: refused ({type(result).__name__}: {result}) but applied")
    return problems


def inserted_counts(items):
    counts = {}
    for _id, doc, _version in items:
        if doc.get("role") == "inserted":
            counts[doc["tx"]] = counts.get(doc["tx"], 0) + 1
    return counts


@pytest_twisted.ensureDeferred
async def test_kill_9_during_transactions_and_a_scan(cluster, items):
    """kill -9 of the host leading the most partitions while transactions run, half of them
    coordinated by it and half with a participant partition it leads, and between two pages
    of a scan. The scan completes with every element once, in id order; once the survivors
    have failed over, every transaction is applied on all its partitions or on none (and as
    its answer said); after the restart every node's own copy agrees."""
    from twisted.internet import reactor

    victim = await in_thread(busiest, cluster)
    survivors = [n for n in cluster if n is not victim]
    led = await in_thread(leaders, cluster)
    plan = KillPlan(led, victim, survivors)

    # The elements, placed and read through the survivors before the kill.
    setup = await clients_for(survivors)
    try:
        wanted = []
        for i in range(KILL_TRANSACTIONS):
            home, part, dead = plan.partitions(i)
            wanted += [({"tx": i, "role": "home"}, home), ({"tx": i, "role": "part"}, part), ({"tx": i, "role": "dead"}, dead)]
        placed = await place(setup[0], plan.kind, wanted)
        for i in range(KILL_TRANSACTIONS):
            (plan.home[i], _), (plan.part[i], vp), (plan.dead[i], vd) = placed[3 * i : 3 * i + 3]
            plan.versions[plan.part[i]], plan.versions[plan.dead[i]] = vp, vd
    finally:
        await close_all(setup)

    # Through the survivors alone: a request in flight to the killed host fails with
    # Timeout, the outcome unknown, and every Unavailable is a refusal. (A partition-aware
    # client would also send to the victim, and its writes in flight there would fail with
    # ConnectionLost, an Unavailable whose write may have been applied, as documented.)
    clients = await clients_for(survivors, timeout=KILL_CLIENT_TIMEOUT, partition_aware=False)
    try:
        # A scan begins before the kill: its first page (the scan's host is a survivor).
        first = await clients[0].scan(ITEMS, limit=50)
        assert len(first.items) <= 50 and first.cursor is not None
        killed = {}

        async def kill():
            killed["at"] = time.monotonic()
            await in_thread(victim.kill)

        outcomes = await run_transactions(clients, plan, KILL_TRANSACTIONS, KILL_IN_FLIGHT, KILL_AFTER, kill)
        answered = time.monotonic() - killed["at"]

        # The scan goes on across the failover, with the same cursor: every element once.
        found, cursor, pages = list(first.items), first.cursor, 1
        while cursor is not None:
            try:
                page = await clients[pages % 2].scan(ITEMS, limit=50, cursor=cursor)
            except errors.Unavailable:
                # Nothing was read (the page could not finish in the client's timeout): the same
                # cursor asks again, within the deadline.
                assert time.monotonic() - killed["at"] < SETTLE_WITHIN, "the scan did not get past the failover"
                continue
            found.extend(page.items)
            cursor, pages = page.cursor, pages + 1
            assert pages < 1000
        check_scan(found, items, "a scan across the kill")
        scanned = time.monotonic() - killed["at"]

        # Once the survivors lead every partition, every transaction settles all or none.
        await in_thread(wait_for, lambda: failed_over(survivors, victim), SETTLE_WITHIN, "a new primary for every partition", 0.2)
        ids = sorted({*plan.home.values(), *plan.part.values(), *plan.dead.values()})
        last = {"problems": None}

        async def settled():
            try:
                values = await defer.gatherResults(
                    [defer.ensureDeferred(current(clients[1], plan.kind, i)) for i in ids], consumeErrors=True
                )
                scan, _pages = await scan_all(clients[0], plan.kind, where={"role": "inserted"})
            except defer.FirstError as e:
                last["problems"] = [f"a read failed: {e.subFailure.value!r}"]
                e.subFailure.trap(errors.Unavailable, errors.Timeout)
                return False
            except (errors.Unavailable, errors.Timeout) as e:
                last["problems"] = [f"the scan failed: {e!r}"]
                return False
            last["problems"] = all_or_none_problems(plan, outcomes, dict(zip(ids, values)), inserted_counts(scan))
            if last["problems"] and seen["first"] is None:
                seen["first"] = last["problems"][:3]
            seen["checks"] += 1
            return not last["problems"]

        seen = {"first": None, "checks": 0}
        began = time.monotonic()
        while not await settled():
            if time.monotonic() - began > SETTLE_WITHIN:
                raise AssertionError(f"transactions not all-or-none {SETTLE_WITHIN:.0f} s after failover: {last['problems'][:10]}")
            await task.deferLater(reactor, 0.5, lambda: None)
        settle = time.monotonic() - killed["at"]
    finally:
        await close_all(clients)

    # The victim comes back and catches up; then every node's own copy shows every
    # transaction all or none, the same on every node.
    await in_thread(victim.start)
    await in_thread(wait_replicated, cluster, True, 60, "the restarted host to catch up")
    copies = {}
    for node in cluster:
        copies[node.name] = await in_thread(read_copies, node, plan.kind, ids, "replica")
    with WireClient(survivors[0].address) as client:
        inserted = inserted_counts(client.scan_all(plan.kind, where={"role": "inserted"}))
    for name, reads in copies.items():
        problems = all_or_none_problems(plan, outcomes, reads, inserted)
        assert not problems, f"{name}'s copy: {problems[:10]}"
        assert reads == copies[cluster[0].name], f"{name}'s copy differs from {cluster[0].name}'s"

    tally = {}
    for ok, result in outcomes.values():
        key = "ok" if ok else type(result).__name__
        tally[key] = tally.get(key, 0) + 1
    applied = sum(all(effects(plan, i, copies[cluster[0].name], inserted)) for i in outcomes)
    print(
        f"\nkill -9 of {victim.name} ({len(led[victim.name])} partitions led): {KILL_TRANSACTIONS} transactions {tally}, "
        f"{applied} applied; last answer {answered:.2f} s, scan complete {scanned:.2f} s, all settled {settle:.2f} s after the kill; "
        f"linearizable reads after failover saw a transaction in doubt in {seen['checks'] - 1} checks (first: {seen['first']})"
    )
    for node in cluster:
        tracebacks = [line for line in node.problems() if "Traceback" in line]
        assert not tracebacks, node.describe()
