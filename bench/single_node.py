"""Single-node throughput and latency of nodedb, beside two ceilings measured in the same run.

    python bench/single_node.py [--count 50000] [--inflight 64] [--doc-size 100] [--repeat 1] [--json]

Each run:

1. raw LMDB, in this process with the lmdb module: COUNT puts of DOC_SIZE-byte values in
   synced transactions of INFLIGHT puts, one put per synced transaction for reference (for at
   most SINGLE_PUT_BUDGET seconds), then COUNT gets, one read transaction each;
2. a bare Twisted CBOR echo (bench/cbor_echo.py) in a subprocess, driven from this process
   with INFLIGHT requests in flight, insert-shaped then get-shaped frames;
3. nodedb: a real ``twistd -n nodedb`` subprocess on a loopback port with a fresh data
   directory, driven from this process through nodedb.client: COUNT inserts, then COUNT gets
   of the ids they returned, INFLIGHT requests in flight.

The client side always runs in this process and the servers in subprocesses, so that client
and server get a core each. With --repeat K every figure printed is the median of K runs.
"""

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from importlib import metadata

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # bench the working tree, not an installed nodedb

import cbor2  # noqa: E402
import lmdb  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.protocols.basic import Int32StringReceiver  # noqa: E402

import nodedb  # noqa: E402
from nodedb.client import connect  # noqa: E402
from nodedb.errors import NodeDBError  # noqa: E402

RECORD_TYPE = "bench"
INSERT_TARGET = 20_000  # inserts/s through the network, each synced before it is acknowledged
GET_TARGET = 40_000  # gets/s through the network
ECHO_EXPECTED = 100_000  # round trips/s the bare echo is expected to reach here
SINGLE_PUT_BUDGET = 2.0  # seconds spent on the one-put-per-synced-transaction reference
READY_DEADLINE = 30.0  # seconds a server may take to start listening
STOP_TIMEOUT = 10.0  # seconds a server may take to exit after SIGTERM
FIRST_ID = 1 << 48  # raw LMDB keys: ids of partition 1, 8 bytes big-endian like nodedb's
_ID = struct.Struct(">Q")


class BenchError(Exception):
    pass


# -- documents and figures ------------------------------------------------------------------


def make_document(size):
    """A document whose CBOR encoding is exactly *size* bytes."""
    templates = (
        lambda n: {"data": "x" * n},
        lambda n: {"data": "x" * n, "n": 0},
        lambda n: {"d": "x" * n},
    )
    for template in templates:
        for n in range(size, -1, -1):
            doc = template(n)
            if len(cbor2.dumps(doc)) == size:
                return doc
    raise BenchError(f"cannot build a document of exactly {size} encoded bytes (try 8 or more)")


def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def phase_figures(count, elapsed, latencies=None):
    figures = {"ops_per_s": count / elapsed}
    if latencies:
        ordered = sorted(latencies)
        figures["p50_ms"] = percentile(ordered, 50) * 1000
        figures["p99_ms"] = percentile(ordered, 99) * 1000
    return figures


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid):
    """The fields of ``/proc/PID/stat`` after the command name (None if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid):
    """User plus system CPU seconds so far of process *pid* and its live descendants (a node
    started with ``--workers`` runs its workers as child processes); None where /proc is
    missing."""
    if _stat_fields(pid) is None:
        return None
    stats = {}
    children = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None:
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, pending = 0, [pid]
    while pending:
        process = pending.pop()
        fields = stats.get(process)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
        pending.extend(children.get(process, ()))
    return total / _TICK


async def measured(child, phase):
    """Run *phase* (a Deferred of ``(elapsed, latencies, results)``) and add the CPU use of
    this process (the client) and of *child* (the server), in percent of one core."""
    client_before, server_before = time.process_time(), cpu_seconds(child.proc.pid)
    elapsed, latencies, results = await phase
    client_cpu, server_after = time.process_time() - client_before, cpu_seconds(child.proc.pid)
    figures = phase_figures(len(latencies), elapsed, latencies)
    figures["client_cpu_pct"] = 100 * client_cpu / elapsed
    if server_before is not None and server_after is not None:
        figures["server_cpu_pct"] = 100 * (server_after - server_before) / elapsed
    return figures, results


def median_tree(runs):
    """The median of every leaf across *runs* (dicts of the same shape)."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: median_tree([run[key] for run in runs]) for key in first}
    return statistics.median(runs)


# -- subprocesses ---------------------------------------------------------------------------

_children = []


class Child:
    """A server subprocess with its output in a log file."""

    def __init__(self, name, argv, log_path):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        _children.append(self)

    def tail(self, lines=15):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited in time. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        if self in _children:
            _children.remove(self)


def stop_all_children():
    for child in list(_children):
        child.stop()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_port(reactor, child, port):
    """Poll until *port* accepts connections; fail if *child* exits or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        if child.proc.poll() is not None:
            raise BenchError(f"{child.name} exited with status {child.proc.returncode} before listening:\n{child.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not listen on port {port} within {READY_DEADLINE:.0f} s:\n{child.tail()}")
        await task.deferLater(reactor, 0.02, lambda: None)


def start_node(data_dir, port, log_path):
    argv = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "nodedb",
        "--data",
        data_dir,
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--admin",
        "none",
    ]
    return Child("twistd nodedb", argv, log_path)


def start_echo(port, log_path):
    return Child("cbor echo server", [sys.executable, os.path.join(REPO_ROOT, "bench", "cbor_echo.py"), str(port)], log_path)


# -- drivers --------------------------------------------------------------------------------


def drive(count, inflight, request):
    """Keep *inflight* calls of ``request(i) -> Deferred`` under way until *count* are done.

    :return: a Deferred firing with ``(elapsed seconds, latencies, results)``, latencies
        measured per request with perf_counter; it fails with the first failure.
    """
    perf = time.perf_counter
    latencies = [0.0] * count
    results = [None] * count
    done = defer.Deferred()
    issued = completed = 0
    failed = False

    def issue():
        nonlocal issued
        index = issued
        issued += 1
        start = perf()
        request(index).addCallbacks(finished, failure, (index, start))

    def finished(result, index, start):
        nonlocal completed
        latencies[index] = perf() - start
        results[index] = result
        completed += 1
        if failed:
            return
        if issued < count:
            issue()
        elif completed == count:
            done.callback(perf() - began)

    def failure(reason):
        nonlocal failed
        if not failed:
            failed = True
            done.errback(reason)

    began = perf()
    for _ in range(min(inflight, count)):
        issue()
    return done.addCallback(lambda elapsed: (elapsed, latencies, results))


class EchoDriver(Int32StringReceiver):
    """The bare client of the echo ceiling: nodedb-shaped request frames, *inflight* at a time,
    no Deferred per request."""

    MAX_LENGTH = 4 * 1024 * 1024

    def __init__(self):
        self._next_id = 1
        self._done = None
        self.lost = None

    def run(self, count, inflight, make_arguments):
        """:return: a Deferred firing with ``(elapsed seconds, latencies, results)``."""
        self._count = count
        self._make = make_arguments
        self._issued = self._completed = 0
        self._sent = {}  # request id -> (index, start)
        self._latencies = [0.0] * count
        self._results = [None] * count
        self._done = defer.Deferred()
        self._began = time.perf_counter()
        for _ in range(min(inflight, count)):
            self._send()
        return self._done

    def _send(self):
        index = self._issued
        self._issued += 1
        request_id = self._next_id
        self._next_id += 1
        start = time.perf_counter()
        message = {"id": request_id}
        message.update(self._make(index))
        self._sent[request_id] = (index, start)
        self.sendString(cbor2.dumps(message))

    def stringReceived(self, frame):
        reply = cbor2.loads(frame)
        index, start = self._sent.pop(reply["id"])
        now = time.perf_counter()
        self._latencies[index] = now - start
        self._results[index] = reply["ok"]
        self._completed += 1
        if self._issued < self._count:
            self._send()
        elif self._completed == self._count:
            done, self._done = self._done, None
            done.callback((now - self._began, self._latencies, self._results))

    def connectionLost(self, reason):
        self.lost = reason
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(BenchError(f"echo connection lost: {reason.getErrorMessage()}"))


# -- the three measurements -----------------------------------------------------------------


def bench_lmdb(work_dir, count, group, value):
    """Raw LMDB with nodedb's durability settings (sync and metasync on)."""
    perf = time.perf_counter
    keys = [_ID.pack(FIRST_ID + i) for i in range(count)]
    map_size = max(1 << 30, count * (len(value) + 64) * 4)
    figures = {}

    env = lmdb.open(os.path.join(work_dir, "grouped"), map_size=map_size, max_dbs=2, sync=True, metasync=True)
    try:
        db = env.open_db(b"t:bench")
        txn_latencies = []
        began = perf()
        for first in range(0, count, group):
            start = perf()
            with env.begin(write=True, db=db) as txn:
                for key in keys[first : first + group]:
                    txn.put(key, value)
            txn_latencies.append(perf() - start)
        figures["put_grouped"] = phase_figures(count, perf() - began, txn_latencies)

        missing = 0
        began = perf()
        for key in keys:
            with env.begin(db=db) as txn:
                if txn.get(key) is None:
                    missing += 1
        figures["get"] = phase_figures(count, perf() - began)
        if missing:
            raise BenchError(f"raw LMDB: {missing} of {count} keys not found")
    finally:
        env.close()

    env = lmdb.open(os.path.join(work_dir, "single"), map_size=map_size, max_dbs=2, sync=True, metasync=True)
    try:
        db = env.open_db(b"t:bench")
        latencies = []
        began = perf()
        stop_at = began + SINGLE_PUT_BUDGET
        for key in keys:
            start = perf()
            with env.begin(write=True, db=db) as txn:
                txn.put(key, value)
            latencies.append(perf() - start)
            if start > stop_at:
                break
        figures["put_single"] = phase_figures(len(latencies), perf() - began, latencies)
        figures["put_single"]["puts"] = len(latencies)
    finally:
        env.close()
    return figures


async def bench_echo(reactor, work_dir, count, inflight, doc):
    port = free_port()
    child = start_echo(port, os.path.join(work_dir, "echo.log"))
    try:
        await wait_for_port(reactor, child, port)
        driver = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), EchoDriver())
        figures = {}
        figures["insert"], ids = await measured(
            child, driver.run(count, inflight, lambda i: {"op": "insert", "type": RECORD_TYPE, "doc": doc})
        )
        figures["get"], replies = await measured(
            child, driver.run(count, inflight, lambda i: {"op": "get", "type": RECORD_TYPE, "key": ids[i]})
        )
        if replies[-1][0] != doc:
            raise BenchError("echo server answered a get with the wrong document")
        driver.transport.loseConnection()
        return figures
    finally:
        child.stop()


async def bench_nodedb(reactor, work_dir, count, inflight, doc):
    port = free_port()
    data_dir = os.path.join(work_dir, "node")
    os.mkdir(data_dir)
    child = start_node(data_dir, port, os.path.join(work_dir, "node.log"))
    try:
        await wait_for_port(reactor, child, port)
        client = await connect(reactor, [f"127.0.0.1:{port}"])
        try:
            figures = {}
            figures["insert"], ids = await measured(child, drive(count, inflight, lambda i: client.insert(RECORD_TYPE, doc)))
            if len(set(ids)) != count:
                raise BenchError(f"nodedb returned {len(set(ids))} distinct ids for {count} inserts")
            figures["get"], replies = await measured(child, drive(count, inflight, lambda i: client.get(RECORD_TYPE, ids[i])))
            wrong = sum(1 for got, _version in replies if got != doc)
            if wrong:
                raise BenchError(f"nodedb returned the wrong document for {wrong} of {count} gets")
        finally:
            await client.close()
        return figures
    except NodeDBError as e:
        raise BenchError(f"nodedb request failed: {type(e).__name__}: {e}\nnode log:\n{child.tail()}") from None
    finally:
        child.stop()


async def run_once(reactor, work_dir, args, doc):
    os.mkdir(work_dir)
    value = cbor2.dumps(doc)
    figures = {"lmdb": bench_lmdb(work_dir, args.count, args.inflight, value)}
    figures["echo"] = await bench_echo(reactor, work_dir, args.count, args.inflight, doc)
    figures["nodedb"] = await bench_nodedb(reactor, work_dir, args.count, args.inflight, doc)
    return figures


# -- report ---------------------------------------------------------------------------------


def ratios(m):
    return {
        "insert_vs_lmdb_put_grouped": m["nodedb"]["insert"]["ops_per_s"] / m["lmdb"]["put_grouped"]["ops_per_s"],
        "insert_vs_echo_insert": m["nodedb"]["insert"]["ops_per_s"] / m["echo"]["insert"]["ops_per_s"],
        "get_vs_lmdb_get": m["nodedb"]["get"]["ops_per_s"] / m["lmdb"]["get"]["ops_per_s"],
        "get_vs_echo_get": m["nodedb"]["get"]["ops_per_s"] / m["echo"]["get"]["ops_per_s"],
    }


def runs_summary(args):
    """How the figures were taken: the median of ``--repeat`` runs."""
    return "median of " + (f"{args.repeat} runs" if args.repeat > 1 else "1 run")


def environment(temp_root, versions=""):
    """One line on the software and machine a bench ran on (*versions*: more, such as lmdb's)."""
    return (
        f"python {platform.python_version()}, twisted {metadata.version('twisted')}, {versions}"
        f"{os.cpu_count()} CPUs, data in {temp_root} ({filesystem_of(os.path.realpath(temp_root))})"
    )


def filesystem_of(path):
    best_mount, best_type = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1]
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best_mount):
                    best_mount, best_type = mount, fields[2]
    except OSError:
        pass
    return best_type


def report(args, m, runs, temp_root, took):
    def column(figures, key, width, form):
        return format(figures[key], form).rjust(width) if key in figures else "-".rjust(width)

    def row(label, figures, note=""):
        print(
            f"  {label:<34} {figures['ops_per_s']:>10,.0f} {column(figures, 'p50_ms', 7, '.2f')} "
            f"{column(figures, 'p99_ms', 7, '.2f')} {column(figures, 'client_cpu_pct', 5, '.0f')} "
            f"{column(figures, 'server_cpu_pct', 5, '.0f')}   {note}".rstrip()
        )

    def verdict(value, target):
        return "met" if value >= target else "MISSED"

    n = m["nodedb"]
    print(
        f"nodedb single node: {args.count:,} ops per phase, {args.inflight} in flight, "
        f"{args.doc_size}-byte documents, {runs_summary(args)}"
    )
    print(environment(temp_root, f"lmdb {lmdb.__version__}, cbor2 {metadata.version('cbor2')}, "))
    print()
    print(f"  {'':<34} {'ops/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'cli%':>5} {'srv%':>5}   target")
    row("nodedb insert (network, synced)", n["insert"], f">= {INSERT_TARGET:,}/s  {verdict(n['insert']['ops_per_s'], INSERT_TARGET)}")
    row("nodedb get (network)", n["get"], f">= {GET_TARGET:,}/s  {verdict(n['get']['ops_per_s'], GET_TARGET)}")
    print("  (target: every insert synced before it is acknowledged; cli%/srv%: CPU of client/server, % of a core)")
    print("ceilings measured in the same run:")
    row(f"raw LMDB put, {args.inflight} per synced txn", m["lmdb"]["put_grouped"], "latency per txn")
    single = m["lmdb"]["put_single"]
    row("raw LMDB put, 1 per synced txn", single, f"reference only: {single['puts']:,.0f} puts in {single['puts'] / single['ops_per_s']:.1f} s")
    row("raw LMDB get, 1 per read txn", m["lmdb"]["get"])
    row("CBOR echo, insert-shaped", m["echo"]["insert"], f"expected ~{ECHO_EXPECTED:,}/s")
    row("CBOR echo, get-shaped", m["echo"]["get"], f"expected ~{ECHO_EXPECTED:,}/s")
    r = ratios(m)
    print("nodedb / ceiling:")
    print(
        f"  insert  {r['insert_vs_lmdb_put_grouped']:.2f} of raw LMDB put ({args.inflight}/txn), "
        f"{r['insert_vs_echo_insert']:.2f} of CBOR echo"
    )
    print(f"  get     {r['get_vs_lmdb_get']:.2f} of raw LMDB get, {r['get_vs_echo_get']:.2f} of CBOR echo")
    print(f"took {took:.1f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "config": {
                        "count": args.count,
                        "inflight": args.inflight,
                        "doc_size": args.doc_size,
                        "repeat": args.repeat,
                    },
                    "targets": {"insert_ops_per_s": INSERT_TARGET, "get_ops_per_s": GET_TARGET},
                    "median": m,
                    "ratios": r,
                    "runs": runs,
                    "seconds": took,
                },
                indent=2,
            )
        )


# -- main -----------------------------------------------------------------------------------


async def bench(reactor, args, outcome):
    began = time.monotonic()
    doc = make_document(args.doc_size)
    temp_root = outcome["temp_root"] = tempfile.mkdtemp(prefix="nodedb-bench-")
    runs = []
    for k in range(args.repeat):
        started = time.monotonic()
        print(f"run {k + 1}/{args.repeat} ...", end="", file=sys.stderr, flush=True)
        runs.append(await run_once(reactor, os.path.join(temp_root, f"run{k + 1}"), args, doc))
        n = runs[-1]["nodedb"]
        print(
            f" {time.monotonic() - started:.1f} s (inserts {n['insert']['ops_per_s']:,.0f}/s, "
            f"gets {n['get']['ops_per_s']:,.0f}/s)",
            file=sys.stderr,
            flush=True,
        )
    report(args, median_tree(runs), runs, os.path.dirname(temp_root), time.monotonic() - began)
    outcome["done"] = True


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=positive, default=50_000, help="operations per phase (default 50000)")
    parser.add_argument("--inflight", type=positive, default=64, help="requests in flight; also the raw LMDB group size (default 64)")
    parser.add_argument("--doc-size", type=positive, default=100, help="encoded size of each document in bytes (default 100)")
    add_run_options(parser, keep=False)
    args = parser.parse_args(argv)
    check_setup(parser, args)

    return run_bench(bench, args)


def add_run_options(parser, keep=True):
    """The options of a bench that starts nodes: --repeat, --json and (with *keep*) --keep."""
    parser.add_argument("--repeat", type=positive, default=1, help="runs; each figure is the median of them (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the figures as a JSON object")
    if keep:
        parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs (the path is printed)")


def warn_unless_working_tree():
    """Warn when nodedb is not imported from the working tree (the one to bench)."""
    if not os.path.abspath(nodedb.__file__).startswith(REPO_ROOT + os.sep):
        print(f"warning: nodedb imported from {nodedb.__file__}, not from {REPO_ROOT}", file=sys.stderr)


def check_setup(parser, args):
    """Warn when nodedb is not the working tree's; refuse a document size that cannot be."""
    warn_unless_working_tree()
    try:
        make_document(args.doc_size)
    except BenchError as e:
        parser.error(str(e))


def run_bench(bench, args, keep=False):
    """Run ``bench(reactor, args, outcome)`` under the reactor, then stop every child process
    and remove ``outcome["temp_root"]`` (unless *keep*: then print where it is), however the
    run ended. A BenchError ends it with its message and status 1.

    :return: the process exit status.
    """
    # SIGTERM before or after the reactor runs must still stop the servers (the reactor
    # handles it itself while it runs).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    outcome = {"done": False, "temp_root": None}

    async def guarded(reactor):
        try:
            await bench(reactor, args, outcome)
        except BenchError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    code = 0
    try:
        task.react(lambda reactor: defer.ensureDeferred(guarded(reactor)))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    finally:
        stop_all_children()
        if outcome["temp_root"] and keep:
            print(f"data directories and logs kept in {outcome['temp_root']}", file=sys.stderr)
        elif outcome["temp_root"]:  # also when the reactor was stopped mid-run (Ctrl-C)
            shutil.rmtree(outcome["temp_root"], ignore_errors=True)
    if code == 0 and not outcome["done"]:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    return code

if __name__ == "__main__":
    sys.exit(main())
