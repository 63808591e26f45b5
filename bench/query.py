"""Distributed scans and transactions on a three-node nodedb cluster on loopback.

    python bench/query.py [--count 100000] [--inflight 64] [--spread] [--page 1000] [--scans 3]
                          [--transactions 2000] [--tx-inflight 32] [--tx-partitions 2,8]
                          [--repeat 1] [--json] [--keep]

Each run starts a new cluster as bench/cluster.py does (three real ``twistd -n nodedb``
processes on their own loopback addresses, ``--replicas 3``, replication complete and the
primaries balanced), then, from this process through nodedb.client (one plain client,
``partition_aware=False``, per node):

1. Load: COUNT small elements ``{"n": N, "r": R, "tag": "q"}`` (R = N * 7919 mod 1000, so any
   range of R matches a fixed share of them), INFLIGHT inserts in flight, sent through the
   three nodes in turn; each node puts them into partitions it leads, taking them in turns of
   a thousand or so (100,000 elements reach every partition, 20,000 about a third of them).
   With --spread, element N goes ``near`` partition N mod 64 instead, through the client of
   the node that leads that partition (from ``/status``), so every partition holds COUNT/64.
2. Full scans: SCANS scans of every element (no filter), pages of PAGE, each through the next
   node, following the cursor to the end: elements/s over the whole scan and the time to the
   first page. Every scan must return COUNT elements in strictly increasing id order.
3. Filtered scans: SCANS scans with the range filter ``200 <= r < 300`` (10% of the
   elements), the same way: elements examined per second (COUNT over the scan's time), the
   time to the first page (PAGE matches), and the matches, which must be exactly the expected.
4. Transactions: for each K of TX_PARTITIONS, TRANSACTIONS transactions of K updates, each of
   an element in a different partition (K partitions, taken so that their primaries are on
   as many hosts as can be: two for K = 2, all three for K >= 3, except where one host has
   run out of partitions; every transaction of more than one partition is a two-phase
   commit), TX_INFLIGHT in flight through the three nodes in turn. No element is in two
   transactions in flight at once, so nothing should conflict: tx/s, p50 and p99 latency of
   the committed ones, the count of Conflicts and of other failures (neither stops the run),
   and the mean number of primary hosts a transaction spans.

Each phase's figures are the median of its scans within a run; with --repeat K every figure
printed is the median of K runs (a new cluster each).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import NODES, PARTITIONS, REPLICAS, Cluster, measured  # noqa: E402  (puts the working tree first on sys.path)
from single_node import (  # noqa: E402
    BenchError,
    add_run_options,
    cpu_seconds,
    drive,
    environment,
    median_tree,
    runs_summary,
    percentile,
    positive,
    run_bench,
    warn_unless_working_tree,
)


from nodedb.client import connect  # noqa: E402
from nodedb.errors import Conflict, NodeDBError  # noqa: E402
from nodedb.ids import IdLayout  # noqa: E402

RECORD_TYPE = "qbench"
FILTER = {"r": {">=": 200, "<": 300}}
LAYOUT = IdLayout()


def document(n):
    return {"n": n, "r": (n * 7919) % 1000, "tag": "q"}


def matches(doc):
    return 200 <= doc["r"] < 300


class CPU:
    """CPU use of this process and of the nodes from now until :meth:`figures`."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.client = time.process_time()
        self.servers = [cpu_seconds(n.child.proc.pid) for n in nodes]

    def figures(self, elapsed):
        out = {"client_cpu_pct": 100 * (time.process_time() - self.client) / elapsed}
        after = [cpu_seconds(n.child.proc.pid) for n in self.nodes]
        if None not in self.servers and None not in after:
            out["servers_cpu_pct"] = 100 * sum(a - b for a, b in zip(after, self.servers)) / elapsed
        return out


async def scan_once(client, nodes, where, page, expected_count, what):
    """One scan to its end; :return: its figures. It checks the ids come in strictly increasing
    order and that there are *expected_count* of them."""
    cpu = CPU(nodes)
    began = time.perf_counter()
    first_page = None
    count = pages = 0
    last_id = -1
    cursor = None
    while True:
        result = await client.scan(RECORD_TYPE, where=where, limit=page, cursor=cursor)
        pages += 1
        if first_page is None:
            first_page = time.perf_counter() - began
        for element_id, doc, _version in result.items:
            if element_id <= last_id:
                raise BenchError(f"{what}: id {element_id} after {last_id} (out of order or repeated)")
            if where is not None and not matches(doc):
                raise BenchError(f"{what}: {element_id} {doc} does not match the filter")
            last_id = element_id
        count += len(result.items)
        cursor = result.cursor
        if cursor is None:
            break
    elapsed = time.perf_counter() - began
    if count != expected_count:
        raise BenchError(f"{what}: {count} elements, expected {expected_count}")
    return {"seconds": elapsed, "first_page_ms": first_page * 1000, "pages": pages, "matched": count, **cpu.figures(elapsed)}


def interleaved(partitions, primary):
    """*partitions* ordered so that neighbours have different primary hosts as far as can be:
    the first of each host's, then the second of each host's, and so on."""
    by_host = {}
    for p in sorted(partitions):
        by_host.setdefault(primary.get(p), []).append(p)
    columns = [by_host[host] for host in sorted(by_host, key=str)]
    return [column[row] for row in range(max(map(len, columns))) for column in columns if row < len(column)]


def plan_transactions(ids_by_partition, primary, count, width, inflight):
    """*count* lists of *width* ids, each in distinct partitions whose primaries are on as many
    hosts as can be (windows of :func:`interleaved` partitions), taking every partition's
    elements in turn: an element comes back only after every other element of its partition
    was used (with the defaults, never: 2,000 transactions of 8 use 250 elements of each
    partition), so no two transactions in flight at once share one."""
    partitions = interleaved([p for p, ids in ids_by_partition.items() if ids], primary)
    if len(partitions) < width:
        raise BenchError(f"only {len(partitions)} partitions hold elements; a transaction of {width} partitions needs as many")
    smallest = min(len(ids_by_partition[p]) for p in partitions)
    # Each transaction takes one element from each of its partitions; partitions are taken in
    # windows, so a partition is used by about width/len(partitions) of the transactions.
    if smallest * len(partitions) < width * (inflight + 1):
        raise BenchError("too few elements per partition for the transactions in flight (raise --count)")
    used = {p: 0 for p in partitions}
    plans = []
    for j in range(count):
        start = (j * width) % len(partitions)
        chosen = [partitions[(start + m) % len(partitions)] for m in range(width)]
        ids = []
        for p in chosen:
            pool = ids_by_partition[p]
            ids.append(pool[used[p] % len(pool)])
            used[p] += 1
        plans.append(ids)
    return plans


async def transactions(clients, nodes, plans, inflight):
    """Commit every plan (a list of ids) as one transaction of updates, *inflight* at once;
    :return: ``(figures, {failure name: count})``."""
    failures = {}
    cpu = CPU(nodes)

    def one(j):
        tx = clients[j % len(clients)].transaction()
        for element_id in plans[j]:
            tx.update(RECORD_TYPE, element_id, {"tx": j, "n": element_id & 0xFFFF})
        d = tx.commit()

        def failed(failure):
            failure.trap(NodeDBError)
            name = type(failure.value).__name__
            failures[name] = failures.get(name, 0) + 1
            return failure.value

        return d.addErrback(failed)

    elapsed, latencies, results = await drive(len(plans), inflight, one)
    committed = [latency for latency, result in zip(latencies, results) if not isinstance(result, Exception)]
    ordered = sorted(committed)
    figures = {
        "tx_per_s": len(committed) / elapsed,
        "p50_ms": percentile(ordered, 50) * 1000 if ordered else float("nan"),
        "p99_ms": percentile(ordered, 99) * 1000 if ordered else float("nan"),
        "committed": len(committed),
        "conflicts": failures.get(Conflict.__name__, 0),
        "other_failures": sum(n for name, n in failures.items() if name != Conflict.__name__),
        **cpu.figures(elapsed),
    }
    # The last transaction of each element is what it holds now: check a sample.
    last = {}
    for j, (ids, result) in enumerate(zip(plans, results)):
        if not isinstance(result, Exception):
            for element_id in ids:
                last[element_id] = j
    for element_id in sorted(last)[:: max(1, len(last) // 200)]:
        doc, _version = await clients[0].get(RECORD_TYPE, element_id)
        if doc.get("tx") != last[element_id]:
            raise BenchError(f"element {element_id} holds {doc}, expected the update of transaction {last[element_id]}")
    return figures, failures


async def run_once(reactor, work_dir, args):
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir)
    clients = []
    try:
        figures = {"formed_s": await cluster.form()}
        nodes = cluster.nodes
        for i in range(NODES):
            # Plain clients: each request through the client's first node, as measured before
            # the client became partition-aware (bench/cluster.py compares the two).
            clients.append(await connect(reactor, [n.address for n in nodes[i:] + nodes[:i]], partition_aware=False))

        if args.spread:
            # Element N near partition N mod 64, through the client of the node that leads it.
            led = await cluster.led()
            leader = {}
            for index, node in enumerate(nodes):
                for partition in led.get(node.host_id, ()):
                    leader[partition] = index
            if sorted(leader) != list(range(PARTITIONS)):
                raise BenchError(f"{PARTITIONS - len(leader)} partitions without a primary")

            def insert(i):
                return clients[leader[i % PARTITIONS]].insert(RECORD_TYPE, document(i), near=LAYOUT.make(i % PARTITIONS, 1))

        else:

            def insert(i):
                return clients[i % NODES].insert(RECORD_TYPE, document(i))

        figures["load"], ids = await measured(nodes, drive(args.count, args.inflight, insert))
        if len(set(ids)) != args.count:
            raise BenchError(f"{len(set(ids))} distinct ids for {args.count} inserts")
        by_partition = {}
        for element_id in ids:
            by_partition.setdefault(LAYOUT.partition_of(element_id), []).append(element_id)
        figures["load"]["partitions_used"] = len(by_partition)
        expected_matches = sum(1 for n in range(args.count) if matches(document(n)))

        for key, where, expected in (("scan", None, args.count), ("filtered_scan", FILTER, expected_matches)):
            scans = []
            for s in range(args.scans):
                scans.append(await scan_once(clients[s % NODES], nodes, where, args.page, expected, f"{key} {s + 1}"))
            seconds = statistics.median(s["seconds"] for s in scans)
            figures[key] = {
                "elements_per_s": args.count / seconds,
                "first_page_ms": statistics.median(s["first_page_ms"] for s in scans),
                "seconds": seconds,
                "pages": statistics.median(s["pages"] for s in scans),
                "matched": expected,
                "client_cpu_pct": statistics.median(s["client_cpu_pct"] for s in scans),
                "servers_cpu_pct": statistics.median(s.get("servers_cpu_pct", float("nan")) for s in scans),
            }

        failures_seen = {}
        primary = {p: host for host, partitions in (await cluster.led()).items() for p in partitions}
        for width in args.tx_partitions:
            plans = plan_transactions(by_partition, primary, args.transactions, width, args.tx_inflight)
            figures[f"tx{width}"], failures = await transactions(clients, nodes, plans, args.tx_inflight)
            hosts = [len({primary.get(LAYOUT.partition_of(i)) for i in plan}) for plan in plans]
            figures[f"tx{width}"]["hosts_per_tx"] = statistics.mean(hosts)
            failures_seen[width] = failures
        figures["failures_by_kind"] = failures_seen
        return figures
    except NodeDBError as e:
        raise cluster.failed(e) from None
    finally:
        await cluster.shutdown(clients)


def report(args, m, runs, temp_root, took):
    print(
        f"nodedb queries: {NODES} nodes on loopback, --replicas {REPLICAS}, {PARTITIONS} partitions; "
        f"{args.count:,} elements, {args.scans} scans of each kind a run, {runs_summary(args)}"
    )
    print(f"{environment(temp_root)}, load average before: {' '.join(f'{x:.2f}' for x in m['load_average'])}")
    ld = m["load"]
    print()
    print(
        f"load: {args.count:,} inserts{' (--spread)' if args.spread else ''}, {args.inflight} in flight over the three nodes: {ld['ops_per_s']:,.0f}/s "
        f"(p50 {ld['p50_ms']:.1f} ms, p99 {ld['p99_ms']:.1f} ms), into {ld['partitions_used']:.0f} partitions"
    )
    print()
    print(f"  {'scan (pages of ' + str(args.page) + ')':<40} {'elements/s':>11} {'first page':>11} {'total':>8} {'pages':>6} {'cli%':>5} {'srv%':>5}")
    for key, label in (("scan", "every element, no filter"), ("filtered_scan", f"filter 200 <= r < 300 ({m['filtered_scan']['matched']:,.0f} match)")):
        f = m[key]
        print(
            f"  {label:<40} {f['elements_per_s']:>11,.0f} {f['first_page_ms']:>8.1f} ms {f['seconds']:>6.2f} s {f['pages']:>6.0f} "
            f"{f['client_cpu_pct']:>5.0f} {f['servers_cpu_pct']:>5.0f}"
        )
    print("  (elements/s: elements covered, all of them, over the scan's time; first page: from the first request)")
    print()
    print(
        f"  {'transactions of K updates':<34} {'tx/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'committed':>9} {'conflicts':>9} "
        f"{'other':>5} {'hosts':>5} {'cli%':>5} {'srv%':>5}"
    )
    for width in args.tx_partitions:
        f = m[f"tx{width}"]
        print(
            f"  {f'K = {width} partitions, {args.tx_inflight} in flight':<34} {f['tx_per_s']:>6,.0f} {f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} "
            f"{f['committed']:>9,.0f} {f['conflicts']:>9.0f} {f['other_failures']:>5.0f} {f['hosts_per_tx']:>5.2f} "
            f"{f['client_cpu_pct']:>5.0f} {f.get('servers_cpu_pct', float('nan')):>5.0f}"
        )
    print("  (hosts: distinct primary hosts a transaction's partitions had, on average; latencies of committed ones)")
    kinds = {}
    for run in runs:
        for width, failures in run["failures_by_kind"].items():
            for name, n in failures.items():
                kinds[f"K={width} {name}"] = kinds.get(f"K={width} {name}", 0) + n
    if kinds:
        print(f"  failures in all runs: {', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}")
    print(f"cluster formed (3 nodes up, replication complete, primaries balanced) in {m['formed_s']:.2f} s; took {took:.1f} s")
    if args.json:
        print(json.dumps({"config": vars(args), "median": m, "runs": runs, "seconds": took}, indent=2))


async def bench(reactor, args, outcome):
    began = time.monotonic()
    temp_root = outcome["temp_root"] = tempfile.mkdtemp(prefix="nodedb-query-bench-")
    runs = []
    for k in range(args.repeat):
        started = time.monotonic()
        load_average = os.getloadavg()
        print(f"run {k + 1}/{args.repeat} ...", end="", file=sys.stderr, flush=True)
        r = await run_once(reactor, os.path.join(temp_root, f"run{k + 1}"), args)
        r["load_average"] = list(load_average)
        runs.append(r)
        txs = ", ".join(f"tx{w} {r[f'tx{w}']['tx_per_s']:,.0f}/s" for w in args.tx_partitions)
        print(
            f" {time.monotonic() - started:.1f} s (load {r['load']['ops_per_s']:,.0f}/s, scan {r['scan']['elements_per_s']:,.0f} elements/s, "
            f"first page {r['scan']['first_page_ms']:.0f} ms, filtered {r['filtered_scan']['elements_per_s']:,.0f}/s, {txs})",
            file=sys.stderr,
            flush=True,
        )
    median = median_tree([{k: v for k, v in r.items() if k != "failures_by_kind"} for r in runs])
    report(args, median, runs, os.path.dirname(temp_root), time.monotonic() - began)
    outcome["done"] = True


def widths(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of partition counts, such as 2,8") from None
    if not values or not all(1 <= v <= PARTITIONS for v in values):
        raise argparse.ArgumentTypeError(f"each partition count must be between 1 and {PARTITIONS}")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=positive, default=100_000, help="elements loaded and scanned (default 100000)")
    parser.add_argument("--inflight", type=positive, default=64, help="inserts in flight while loading (default 64)")
    parser.add_argument("--page", type=positive, default=1000, help="scan page limit (default 1000)")
    parser.add_argument("--scans", type=positive, default=3, help="scans of each kind in a run; the median counts (default 3)")
    parser.add_argument("--transactions", type=positive, default=2000, help="transactions of each size (default 2000)")
    parser.add_argument("--tx-inflight", type=positive, default=32, help="transactions in flight (default 32)")
    parser.add_argument("--tx-partitions", type=widths, default=[2, 8], help="partitions per transaction, comma-separated (default 2,8)")
    parser.add_argument(
        "--spread",
        action="store_true",
        help="load element N near partition N mod 64, through the node leading it (default: where each node puts it)",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.page > 10_000:
        parser.error("--page must be at most 10000 (the largest scan page)")
    warn_unless_working_tree()
    return run_bench(bench, args, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
