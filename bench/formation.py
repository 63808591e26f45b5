"""How long three new nodes take to form a healthy, fault-tolerant cluster, with and without
``--bootstrap-expect 3``.

    python bench/formation.py [--repeat 3] [--json] [--keep]

Each repeat forms two clusters of three real ``twistd -n nodedb`` processes on their own
loopback addresses (127.0.0.x), with fresh data directories, one per mode (the order of the
two alternates from one repeat to the next, so that a change in the machine's load falls on
both alike):

- without: the first host starts alone with ``--replicas 3`` and the other two with
  ``--seed FIRST``, both launched as soon as the first answers ``/status`` (as bench/cluster.py
  and most scripts do);
- with: all three launched at once, the first with ``--bootstrap-expect 3 --replicas 3``, the
  other two with ``--seed FIRST``.

From the moment the first process is launched, every node's admin site is polled (every
POLL_EVERY seconds, the three nodes in parallel) for the first poll in which, on all three:

- up: ``/status`` answers (the processes have started and listen);
- (a) healthy: ``GET /health`` answers 200;
- (b) writable: ``/status`` lists every one of the three hosts as ``write`` or ``read``, the
  moment from which the contract (../shared/DESIGN.md) promises that one host may be lost;
- (c) tolerant: ``/status`` ``health.fault_tolerance`` is at least 1.

It prints the median and the range of each figure per mode, the ratio of the medians, the
environment and the load average at the start and at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import FORM_DEADLINE, NODES, PARTITIONS, POLL_EVERY, REPLICAS, Cluster, Node, get_json  # noqa: E402
from single_node import BenchError, environment, positive, run_bench, runs_summary, stop_all_children  # noqa: E402

from twisted.internet import defer, task, threads  # noqa: E402

WITHOUT = "without"
WITH = "with"
MODES = {WITHOUT: "without --bootstrap-expect", WITH: f"with --bootstrap-expect {NODES}"}
TARGET = 5.0  # seconds to /health 200 on all three with --bootstrap-expect
LIVE_STATUSES = ("write", "read")


# -- what a node shows ----------------------------------------------------------------------


def observe(node, want_health, want_status):
    """One poll of *node* (blocking, in a thread): ``{"health": HTTP status of /health,
    "status": the /status JSON}``, each None when not asked for or not answered."""
    health = get_json(node.host, node.admin_port, "/health", 2.0)[0] if want_health else None
    code, view = get_json(node.host, node.admin_port, "/status", 2.0) if want_status else (None, None)
    return {"health": health, "status": view if code == 200 else None}


def up(seen):
    return seen["status"] is not None


def healthy(seen):
    return seen["health"] == 200


def writable(seen):
    """Every host of the cluster listed as ``write`` or ``read``."""
    hosts = seen["status"]["hosts"] if up(seen) else []
    return len(hosts) == NODES and all(h["status"] in LIVE_STATUSES for h in hosts)


def tolerant(seen):
    health = seen["status"]["health"] if up(seen) else None
    return health is not None and health["fault_tolerance"] >= 1


#: The moments measured: name -> (the condition on one node's poll, which endpoint it reads).
MOMENTS = {
    "up": (up, "status"),
    "healthy": (healthy, "health"),
    "writable": (writable, "status"),
    "tolerant": (tolerant, "status"),
}


def where(seen):
    """What one node showed last, in a few words (for a run that gives up)."""
    view = seen["status"]
    if view is None:
        return "no /status"
    health = view["health"] or {}
    hosts = ", ".join(f"{h['id']} {h['status']}" for h in view["hosts"])
    return f"hosts {hosts}; problems: {'; '.join(health.get('problems', ['(no health yet)']))}"


# -- one formation --------------------------------------------------------------------------


async def launch(cluster, mode):
    """Start the three nodes as *mode* does; :return: the monotonic time the first was launched."""
    first = cluster.nodes[0]
    if mode == WITH:
        first.args += ["--bootstrap-expect", str(NODES)]
    joiners = [Node(f"n{i}", cluster.hosts[i], cluster.work_dir, ["--seed", first.address]) for i in range(1, NODES)]
    began = time.monotonic()
    if mode == WITH:
        first.start()
    else:
        await cluster.start_node(first)
    for node in joiners:
        cluster.nodes.append(node)
        node.start()
    return began


async def watch(cluster, began):
    """Poll every node until each of MOMENTS held on all of them in one poll; :return:
    ``{moment: seconds from *began*}``."""
    reached = {}
    last = []
    while len(reached) < len(MOMENTS):
        pending = [endpoint for name, (_condition, endpoint) in MOMENTS.items() if name not in reached]
        last = await defer.gatherResults(
            [threads.deferToThread(observe, node, "health" in pending, "status" in pending) for node in cluster.nodes],
            consumeErrors=True,
        )
        now = time.monotonic() - began
        for name, (condition, _endpoint) in MOMENTS.items():
            if name not in reached and all(condition(seen) for seen in last):
                reached[name] = now
        for node in cluster.nodes:
            if node.child.proc.poll() is not None:
                raise BenchError(f"{node.name} exited with status {node.child.proc.returncode}:\n{node.child.tail()}")
        if now > FORM_DEADLINE and len(reached) < len(MOMENTS):
            shown = "\n".join(f"  {node.name}: {where(seen)}" for node, seen in zip(cluster.nodes, last))
            missing = ", ".join(name for name in MOMENTS if name not in reached)
            raise BenchError(f"gave up after {FORM_DEADLINE:.0f} s waiting for {missing}; last seen:\n{shown}")
        await task.deferLater(cluster.reactor, POLL_EVERY, lambda: None)
    return reached


async def form_once(reactor, work_dir, mode):
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir)
    try:
        return await watch(cluster, await launch(cluster, mode))
    finally:
        cluster.stop()


# -- report ---------------------------------------------------------------------------------


def spread(values):
    """``{"median", "min", "max"}`` of *values*."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs):
    """``{mode: {moment: spread}}`` over *runs* (``{mode: [{moment: seconds}, ...]}``)."""
    return {mode: {name: spread([r[name] for r in runs[mode]]) for name in MOMENTS} for mode in MODES}


def load_text(load):
    return " ".join(f"{x:.2f}" for x in load)


def report(args, summary, runs, temp_root, loads, took):
    def cell(figures):
        return f"{figures['median']:6.2f} ({figures['min']:.2f}-{figures['max']:.2f})"

    print(
        f"nodedb formation: {NODES} nodes on loopback, --replicas {REPLICAS}, {PARTITIONS} partitions; "
        f"each mode {runs_summary(args)}, the modes alternated"
    )
    print(environment(temp_root))
    print(f"load average (1, 5, 15 min): {load_text(loads['start'])} at the start, {load_text(loads['end'])} at the end")
    print()
    print("seconds from launching the first process until, on all three nodes, median (min-max):")
    print(f"  {'':<52} {MODES[WITHOUT]:>28} {MODES[WITH]:>28} {'with/without':>12}")
    labels = {
        "up": "/status answers (the processes are up)",
        "healthy": "(a) /health answers 200",
        "writable": "(b) every host listed as write or read",
        "tolerant": "(c) health fault_tolerance >= 1",
    }
    for name, label in labels.items():
        without, with_ = summary[WITHOUT][name], summary[WITH][name]
        print(f"  {label:<52} {cell(without):>28} {cell(with_):>28} {with_['median'] / without['median']:>12.2f}")
    healthy_with = summary[WITH]["healthy"]["median"]
    verdict = "met" if healthy_with <= TARGET else "MISSED"
    print(f"target: (a) {MODES[WITH]} at most {TARGET:g} s: {verdict} ({healthy_with:.2f} s)")
    print(f"took {took:.1f} s")
    if args.json:
        print(json.dumps({"config": vars(args), "summary": summary, "runs": runs, "load_average": loads, "seconds": took}, indent=2))


# -- main -----------------------------------------------------------------------------------


async def bench(reactor, args, outcome):
    began = time.monotonic()
    loads = {"start": list(os.getloadavg())}
    temp_root = outcome["temp_root"] = tempfile.mkdtemp(prefix="nodedb-formation-bench-")
    try:
        runs = {mode: [] for mode in MODES}
        for k in range(args.repeat):
            order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
            for mode in order:
                print(f"run {k + 1}/{args.repeat} {MODES[mode]} ...", end="", file=sys.stderr, flush=True)
                r = await form_once(reactor, os.path.join(temp_root, f"run{k + 1}-{mode}"), mode)
                runs[mode].append(r)
                print(" " + ", ".join(f"{name} {r[name]:.2f} s" for name in MOMENTS), file=sys.stderr, flush=True)
        loads["end"] = list(os.getloadavg())
        report(args, summarize(runs), runs, os.path.dirname(temp_root), loads, time.monotonic() - began)
        outcome["done"] = True
    except BenchError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        stop_all_children()
        if args.keep:
            print(f"data directories and logs kept in {temp_root}", file=sys.stderr)
        else:
            shutil.rmtree(temp_root, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=positive, default=3, help="formations per mode; figures are their median (default 3)")
    parser.add_argument("--json", action="store_true", help="also print every figure as a JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs (the path is printed)")
    args = parser.parse_args(argv)
    return run_bench(bench, args, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
