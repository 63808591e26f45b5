"""YCSB workloads A, B, C, E and F against nodedb, on one node and on three, zipfian keys.

    python bench/ycsb.py [--nodes 1,3] [--workloads a,b,c,f,e] [--records 100000]
                         [--operations 10000 | --seconds S] [--inflight 64] [--tls] [--workers N]
                         [--fields 10] [--field-length 100] [--max-scan-length 100]
                         [--repeat 1] [--json] [--keep]

For each node count of --nodes, each run starts that many real ``twistd -n nodedb`` processes
as bench/cluster.py does (each on its own loopback address with a fresh data directory, the
first with ``--replicas 3``, the others joining it; replication complete and primaries
balanced), every one with ``--tls`` (its own certificate from a CA made for the run) if asked,
and ``--workers N`` if asked. Then, from this process through nodedb.client (one client per
node, the operations in flight spread over them):

1. Load: RECORDS inserts of YCSB records (FIELDS fields ``field0``... of FIELD_LENGTH
   characters), INFLIGHT in flight. nodedb allocates the ids, so YCSB's key number k is the
   id of the k-th acknowledged insert.
2. Each workload of --workloads, OPERATIONS operations (or for SECONDS), INFLIGHT in flight,
   each operation drawn by the workload's proportions and its key by YCSB's scrambled
   zipfian distribution (constant 0.99):

   - A (update heavy): 50% read, 50% update;
   - B (read mostly): 95% read, 5% update;
   - C (read only): 100% read;
   - F (read-modify-write): 50% read, 50% get then update with ``if_version`` (one operation);
   - E (short ranges): 95% scan of 1 to MAX_SCAN_LENGTH records (uniform) from the key, 5%
     insert of a new record (which later operations may choose once acknowledged).

A read is a linearizable ``get``; an update replaces the whole record (nodedb has no partial
update). A scan is one page: ``scan(limit=length)`` from a cursor that names the key's id as
its position, so it returns the records from that id on in id order, as YCSB scans from a key
in key order. Figures: successful operations per second over the workload's wall time, p50 and
p99 latency of the successful operations (per operation kind too), the failed operations, and
the CPU of this process and of the nodes. With --repeat K every figure is the median of K runs.
"""

import argparse
import bisect
import collections
import itertools
import json
import math
import os
import random
import string
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import PARTITIONS, REPLICAS, Cluster, measured  # noqa: E402  (puts the working tree first on sys.path)
from single_node import (  # noqa: E402
    BenchError,
    add_run_options,
    environment,
    median_tree,
    phase_figures,
    positive,
    run_bench,
    runs_summary,
    warn_unless_working_tree,
)

from twisted.internet import defer, task  # noqa: E402

from nodedb.client import connect  # noqa: E402
from nodedb.errors import NodeDBError  # noqa: E402
from nodedb.query.cursor import encode_cursor  # noqa: E402
from nodedb.tap import Options as NodeOptions  # noqa: E402

RECORD_TYPE = "usertable"
WATCH_EVERY = 1.0  # seconds between checks that every node still runs
VALUE_POOL = 1000  # distinct random field values records are made of (making a record costs little)

# YCSB's scrambled zipfian: a zipfian over SCRAMBLED_ITEMS items (Gray et al., "Quickly
# generating billion-record synthetic databases", SIGMOD 1994), hashed into the key range so
# that the popular keys are spread over it instead of being the first ones.
ZIPFIAN_CONSTANT = 0.99
SCRAMBLED_ITEMS = 10_000_000_000
SCRAMBLED_ZETA = 26.46902820178302  # zeta(SCRAMBLED_ITEMS, 0.99): the sum of i ** -0.99, i = 1..10**10
FNV_OFFSET_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 0x100000001B3
_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True)
class Workload:
    name: str
    about: str
    mix: tuple  # ((operation kind, proportion), ...)

    def describe(self):
        mix = ", ".join(f"{share:.0%} {kind}" for kind, share in self.mix)
        return f"{self.name} {self.about}: {mix}" if self.about else f"{self.name}: {mix}"

    def share(self, kind):
        return dict(self.mix).get(kind, 0.0)


WORKLOADS = {
    "a": Workload("A", "update heavy", (("read", 0.5), ("update", 0.5))),
    "b": Workload("B", "read mostly", (("read", 0.95), ("update", 0.05))),
    "c": Workload("C", "read only", (("read", 1.0),)),
    "e": Workload("E", "short ranges", (("scan", 0.95), ("insert", 0.05))),
    "f": Workload("F", "read-modify-write", (("read", 0.5), ("rmw", 0.5))),
}
LOAD = Workload("load", "", (("insert", 1.0),))
DEFAULT_ORDER = "a,b,c,f,e"  # YCSB's recommended order; E last, as it inserts


# -- keys and records -----------------------------------------------------------------------


def fnv_hash64(value):
    """YCSB's hash of a key number: FNV-1a of its 8 little-endian bytes, as the absolute value
    of a signed 64-bit integer (Java's ``Math.abs`` of a long)."""
    hashed = FNV_OFFSET_64
    for _ in range(8):
        hashed = ((hashed ^ (value & 0xFF)) * FNV_PRIME_64) & _MASK_64
        value >>= 8
    return (1 << 64) - hashed if hashed >> 63 else hashed


class ScrambledZipfian:
    """Key numbers as YCSB's ScrambledZipfianGenerator draws them over *items* keys: a
    zipfian value over SCRAMBLED_ITEMS items, hashed, modulo *items*."""

    def __init__(self, items, rng):
        self.items = items
        self._random = rng.random
        self._alpha = 1 / (1 - ZIPFIAN_CONSTANT)
        self._second = 0.5**ZIPFIAN_CONSTANT  # the weight of the second item; zeta(2) = 1 + this
        self._eta = (1 - (2 / SCRAMBLED_ITEMS) ** (1 - ZIPFIAN_CONSTANT)) / (1 - (1 + self._second) / SCRAMBLED_ZETA)

    def _zipfian(self):
        u = self._random()
        uz = u * SCRAMBLED_ZETA
        if uz < 1:
            return 0
        if uz < 1 + self._second:
            return 1
        return int(SCRAMBLED_ITEMS * (self._eta * u - self._eta + 1) ** self._alpha)

    def next(self, existing):
        """:return: a key number below *existing* (as YCSB, draw again past the records that
        exist: the range counts the inserts a workload is expected to make)."""
        while True:
            key = fnv_hash64(self._zipfian()) % self.items
            if key < existing:
                return key


class Records:
    """YCSB records: *fields* fields ``field0``... of *length* random characters."""

    def __init__(self, fields, length, rng):
        self.names = [f"field{i}" for i in range(fields)]
        letters = string.ascii_letters + string.digits
        self._values = ["".join(rng.choices(letters, k=length)) for _ in range(VALUE_POOL)]
        self._choice = rng.choice

    def new(self):
        return {name: self._choice(self._values) for name in self.names}

    def modified(self, record):
        """*record* with one field given a new value, as YCSB's read-modify-write does."""
        changed = dict(record)
        changed[self._choice(self.names)] = self._choice(self._values)
        return changed


class Operations:
    """The operations of YCSB's core workload on a store whose key number k is ``ids[k]``.
    Each takes the client to use and returns a Deferred that fires once it is done (plain
    callbacks rather than coroutines: the bench process is the client, its cost per
    operation is in every figure)."""

    def __init__(self, ids, records, rng, chooser=None, max_scan_length=0):
        self.ids = ids  # key number -> element id; inserts append
        self.records = records
        self.chooser = chooser
        self.max_scan_length = max_scan_length
        self._randint = rng.randint
        self.scanned = 0  # records the scans returned

    def _key(self):
        return self.ids[self.chooser.next(len(self.ids))]

    def read(self, client):
        return client.get(RECORD_TYPE, self._key()).addCallback(self._check)

    def _check(self, reply):
        doc, _version = reply
        if len(doc) != len(self.records.names):
            raise BenchError(f"a read returned a document that is no record: {sorted(doc)}")

    def update(self, client):
        return client.update(RECORD_TYPE, self._key(), self.records.new())

    def insert(self, client):
        return client.insert(RECORD_TYPE, self.records.new()).addCallback(self.ids.append)

    def scan(self, client):
        start = self._key()
        d = client.scan(RECORD_TYPE, limit=self._randint(1, self.max_scan_length), cursor=encode_cursor(start - 1))
        return d.addCallback(self._scanned, start)

    def _scanned(self, page, start):
        if page.items and page.items[0][0] < start:
            raise BenchError(f"a scan from {start} returned {page.items[0][0]}")
        self.scanned += len(page.items)

    def rmw(self, client):
        key = self._key()
        return client.get(RECORD_TYPE, key).addCallback(self._modify, client, key)

    def _modify(self, reply, client, key):
        doc, version = reply
        return client.update(RECORD_TYPE, key, self.records.modified(doc), if_version=version)


# -- running a workload ---------------------------------------------------------------------


class WorkloadRun:
    """Keeps *inflight* operations of *workload* going, each slot on its client of *clients*
    in turn, until *count* were started or *stop_at* (perf_counter) passed, or *halt* (a
    list) holds something. A failed operation (a NodeDBError) is counted, not fatal; any
    other failure stops the run and is its result."""

    def __init__(self, clients, operations, workload, rng, count, stop_at, halt):
        self.clients = clients
        self.kinds = [kind for kind, _share in workload.mix]
        self.cumulative = list(itertools.accumulate(share for _kind, share in workload.mix))
        self.operation = {kind: getattr(operations, kind) for kind in self.kinds}
        self.random = rng.random
        self.count, self.stop_at, self.halt = count, stop_at, halt
        self.by_kind = {kind: [] for kind in self.kinds}  # latencies of the successful operations
        self.errors = collections.Counter()  # names of the NodeDBErrors
        self.issued = self.active = 0
        self.fatal = None

    def run(self, inflight):
        """:return: a Deferred of ``(elapsed seconds, latencies, self)``, as
        cluster.measured wants it."""
        self.done = defer.Deferred()
        self.began = time.perf_counter()
        self.active = inflight
        for slot in range(inflight):
            self._next(slot)
        return self.done

    def _next(self, slot):
        now = time.perf_counter()
        if self.issued >= self.count or now >= self.stop_at or self.halt or self.fatal:
            self.active -= 1
            if not self.active:
                self._finish(now)
            return
        self.issued += 1
        kind = self.kinds[min(bisect.bisect(self.cumulative, self.random() * self.cumulative[-1]), len(self.kinds) - 1)]
        d = self.operation[kind](self.clients[slot % len(self.clients)])
        d.addCallbacks(self._succeeded, self._failed, (slot, kind, now), None, (slot,))

    def _succeeded(self, _result, slot, kind, start):
        self.by_kind[kind].append(time.perf_counter() - start)
        self._next(slot)

    def _failed(self, failure, slot):
        if failure.check(NodeDBError):
            self.errors[type(failure.value).__name__] += 1
        elif self.fatal is None:
            self.fatal = failure
        self._next(slot)

    def _finish(self, now):
        self.elapsed = now - self.began
        if self.fatal is not None:
            self.done.errback(self.fatal)
        else:
            latencies = [latency for kind in self.kinds for latency in self.by_kind[kind]]
            self.done.callback((self.elapsed, latencies, self))


def latency_figures(count, elapsed, latencies):
    """ops/s, and p50 and p99 in ms: NaN without a successful operation, so that every run has
    the same figures to take the medians of."""
    return {"p50_ms": math.nan, "p99_ms": math.nan, **phase_figures(count, elapsed, latencies)}


async def measure(cluster, clients, operations, workload, count, seconds, inflight, rng):
    """Run *workload* on *cluster* and :return: ``(figures, Counter of the errors' names)``.
    A node that exits stops the run (rather than every operation waiting for its timeout)."""
    halt = []

    def watch():
        exited = [node for node in cluster.nodes if node.child.proc.poll() is not None]
        if exited and not halt:
            node = exited[0]
            halt.append(BenchError(f"{node.name} exited with status {node.child.proc.returncode}:\n{node.child.tail()}"))

    watchdog = task.LoopingCall(watch)
    watchdog.clock = cluster.reactor
    watchdog.start(WATCH_EVERY, now=False)
    stop_at = time.perf_counter() + seconds if seconds else math.inf
    try:
        phase = WorkloadRun(clients, operations, workload, rng, count, stop_at, halt).run(inflight)
        figures, outcome = await measured(cluster.nodes, phase)
    finally:
        watchdog.stop()
    if halt:
        raise halt[0]
    figures = {"p50_ms": math.nan, "p99_ms": math.nan, **figures, "errors": sum(outcome.errors.values()), "kinds": {}}
    for kind, latencies in outcome.by_kind.items():
        figures["kinds"][kind] = latency_figures(len(latencies), outcome.elapsed, latencies)
    if "scan" in outcome.by_kind:
        scans = len(outcome.by_kind["scan"])
        figures["kinds"]["scan"]["items_per_scan"] = operations.scanned / scans if scans else math.nan
    return figures, outcome.errors


# -- one configuration ----------------------------------------------------------------------


def configuration_name(size):
    return f"{size} node" if size == 1 else f"{size} nodes"


async def run_configuration(reactor, work_dir, size, args):
    """Start *size* nodes, load them and run every workload on them.

    :return: ``(figures, errors)``, both by phase (``"load"``, then the workloads' names):
        the figures, and a Counter of the names of the errors.
    """
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir, size, ["--workers", str(args.workers)] if args.workers else [], tls=args.tls)
    clients = []
    try:
        figures = {"formed_s": await cluster.form()}
        nodes = cluster.nodes
        for i in range(size):
            clients.append(await connect(reactor, [n.address for n in nodes[i:] + nodes[:i]], tls=cluster.client_tls))
        rng = random.Random()
        records = Records(args.fields, args.field_length, rng)
        ids = []
        errors = {}
        figures["load"], errors["load"] = await measure(
            cluster, clients, Operations(ids, records, rng), LOAD, args.records, None, args.inflight, rng
        )
        if not ids:
            raise BenchError(f"no insert of the load succeeded: {dict(errors['load'])}")
        count = math.inf if args.seconds else args.operations
        for letter in args.workloads:
            workload = WORKLOADS[letter]
            # As YCSB's: the key range also counts twice the inserts the workload should make.
            chooser = ScrambledZipfian(len(ids) + int(2 * workload.share("insert") * args.operations), rng)
            operations = Operations(ids, records, rng, chooser, args.max_scan_length)
            figures[workload.name], errors[workload.name] = await measure(
                cluster, clients, operations, workload, count, args.seconds, args.inflight, rng
            )
        return figures, errors
    except NodeDBError as e:
        raise cluster.failed(e) from None
    finally:
        await cluster.shutdown(clients)


# -- report ---------------------------------------------------------------------------------


def report(args, medians, runs, errors, temp_root, took):
    amount = f"{args.seconds:g} s" if args.seconds else f"{args.operations:,} operations"
    print(
        f"nodedb YCSB: {args.records:,} records of {args.fields} fields x {args.field_length} characters, "
        f"{amount} per workload, {args.inflight} in flight, scrambled zipfian keys ({ZIPFIAN_CONSTANT}), "
        f"{runs_summary(args)}"
    )
    print(environment(temp_root))
    for name, m in medians.items():
        extras = ", ".join(
            [f"--replicas {REPLICAS}, {PARTITIONS} partitions"] + (["--tls"] if args.tls else []) + ([f"--workers {args.workers}"] if args.workers else [])
        )
        print()
        print(f"{name} on loopback ({extras}), formed in {m['formed_s']:.1f} s:")
        print(f"  {'workload':<42} {'ops/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} {'cli%':>5} {'srv%':>5}")
        for workload in [LOAD] + [WORKLOADS[letter] for letter in args.workloads]:
            f = m[workload.name]
            print(
                f"  {workload.describe():<42} {f['ops_per_s']:>9,.0f} {f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} "
                f"{f['errors']:>7,.0f} {f['client_cpu_pct']:>5.0f} {f.get('servers_cpu_pct', math.nan):>5.0f}"
            )
            if len(workload.mix) > 1:
                for kind, k in f["kinds"].items():
                    label = f"{kind} (mean {k['items_per_scan']:.1f} records)" if kind == "scan" else kind
                    print(f"      {label:<38} {k['ops_per_s']:>9,.0f} {k['p50_ms']:>7.2f} {k['p99_ms']:>7.2f}")
        failed = [f"{phase}: " + ", ".join(f"{n} {what}" for what, n in counted.most_common()) for phase, counted in errors[name].items() if counted]
        if failed:
            print(f"  errors in {args.repeat} run{'s' if args.repeat > 1 else ''}: " + "; ".join(failed))
    print("  (ops/s: successful operations; p50/p99 of the successful ones; rmw = get + update with if_version;")
    print("   cli%/srv%: CPU of the bench process and of the nodes together, in % of one core)")
    print(f"took {took:.1f} s")
    if args.json:
        document = {"config": vars(args), "median": medians, "runs": runs, "errors": errors, "seconds": took}
        print(json.dumps(without_nan(document), indent=2, default=dict))


def without_nan(value):
    """*value* with NaN (a figure without a successful operation) as None, for JSON."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


# -- main -----------------------------------------------------------------------------------


async def bench(reactor, args, outcome):
    began = time.monotonic()
    temp_root = outcome["temp_root"] = tempfile.mkdtemp(prefix="nodedb-ycsb-")
    runs = {configuration_name(size): [] for size in args.nodes}
    errors = {name: {} for name in runs}
    for k in range(args.repeat):
        for size in args.nodes:
            name = configuration_name(size)
            started = time.monotonic()
            print(f"run {k + 1}/{args.repeat}, {name} ...", end="", file=sys.stderr, flush=True)
            figures, counted = await run_configuration(reactor, os.path.join(temp_root, f"run{k + 1}-{size}"), size, args)
            runs[name].append(figures)
            for phase, names in counted.items():
                errors[name].setdefault(phase, collections.Counter()).update(names)
            rates = ", ".join(f"{phase} {figures[phase]['ops_per_s']:,.0f}/s" for phase in figures if phase != "formed_s")
            print(f" {time.monotonic() - started:.1f} s ({rates})", file=sys.stderr, flush=True)
    medians = {name: median_tree(figures) for name, figures in runs.items()}
    report(args, medians, runs, errors, os.path.dirname(temp_root), time.monotonic() - began)
    outcome["done"] = True


def letters(text):
    chosen = [letter.strip().lower() for letter in text.split(",") if letter.strip()]
    unknown = [letter for letter in chosen if letter not in WORKLOADS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"a comma-separated list of distinct workloads among {','.join(WORKLOADS)}")
    return chosen


def node_counts(text):
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= count <= 5 for count in counts):
        raise argparse.ArgumentTypeError("a comma-separated list of node counts from 1 to 5")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=[1, 3], help="the configurations: node counts (default 1,3)")
    parser.add_argument("--workloads", type=letters, default=letters(DEFAULT_ORDER), help=f"in this order (default {DEFAULT_ORDER})")
    parser.add_argument("--records", type=positive, default=100_000, help="records loaded (default 100000)")
    parser.add_argument("--operations", type=positive, default=10_000, help="operations per workload (default 10000)")
    parser.add_argument("--seconds", type=float, help="run each workload this long instead of --operations")
    parser.add_argument("--inflight", type=positive, default=64, help="operations in flight (default 64)")
    parser.add_argument("--fields", type=positive, default=10, help="fields per record (default 10, as YCSB)")
    parser.add_argument("--field-length", type=positive, default=100, help="characters per field (default 100, as YCSB)")
    parser.add_argument("--max-scan-length", type=positive, default=100, help="longest scan of E (default 100, as YCSB)")
    parser.add_argument("--tls", action="store_true", help="run every node with --tls (a CA and certificates made for the run)")
    parser.add_argument("--workers", type=positive, help="pass --workers N to every node (needs nodes that have --workers)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.seconds is not None and not 0 < args.seconds <= 86_400:
        parser.error("--seconds must be more than 0 and at most 86400")
    if args.workers and "workers=" not in NodeOptions().longOpt:
        parser.error("--workers needs nodes that have the --workers option (issue 14); this nodedb has none")
    warn_unless_working_tree()
    return run_bench(bench, args, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
