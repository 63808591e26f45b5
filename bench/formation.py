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

A few more moments show where the time goes (the first node up, all three up, gossip, the
Voting leader, members and voters), and (a) is also counted from the moment all three are up,
the part that does not depend on how fast Python starts. It prints the median and the range
of each figure per mode, the ratio of the medians, the environment and the load average at
the start and at the end.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import FORM_DEADLINE, NODES, PARTITIONS, POLL_EVERY, REPLICAS, Cluster, Node, get_json  # noqa: E402
from single_node import BenchError, environment, positive, run_bench, runs_summary  # noqa: E402

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


def knows_all(seen):
    """Gossip has brought it every host."""
    return up(seen) and len(seen["status"]["hosts"]) == NODES


def has_leader(seen):
    return up(seen) and seen["status"]["voting"] is not None and seen["status"]["voting"]["leader"] is not None


def all_members(seen):
    return has_leader(seen) and len(seen["status"]["voting"]["members"]) == NODES


def all_voters(seen):
    return has_leader(seen) and len(seen["status"]["voting"]["voters"]) == NODES


def writable(seen):
    """Every host of the cluster listed as ``write`` or ``read``."""
    return knows_all(seen) and all(h["status"] in LIVE_STATUSES for h in seen["status"]["hosts"])


def tolerant(seen):
    health = seen["status"]["health"] if up(seen) else None
    return health is not None and health["fault_tolerance"] >= 1


def on_first(condition):
    return lambda polls: bool(polls) and condition(polls[0])


def on_all(condition):
    return lambda polls: len(polls) == NODES and all(condition(seen) for seen in polls)


#: The moments measured, in the order they usually come: name -> (label, the condition on
#: the polls of the nodes launched so far, the endpoint it reads). (a), (b) and (c) are the
#: figures asked for; the others show where the time goes.
MOMENTS = {
    "first_up": ("the first node's /status answers", on_first(up), "status"),
    "up": ("/status answers (the processes are up)", on_all(up), "status"),
    "known": ("gossip: every node lists all 3 hosts", on_all(knows_all), "status"),
    "leader": ("every node knows a Voting leader", on_all(has_leader), "status"),
    "members": ("every node lists all 3 as Voting members", on_all(all_members), "status"),
    "voters": ("every node lists 3 Voting voters", on_all(all_voters), "status"),
    "healthy": ("(a) /health answers 200", on_all(healthy), "health"),
    "tolerant": ("(c) health fault_tolerance >= 1", on_all(tolerant), "status"),
    "writable": ("(b) every host listed as write or read", on_all(writable), "status"),
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
    """Start the three nodes as *mode* does (the first is started by the caller)."""
    first = cluster.nodes[0]
    if mode == WITHOUT:

        async def serving():
            return await cluster.status(first) is not None

        await cluster.wait(serving, FORM_DEADLINE, "n0 to serve /status", first)
    for i in range(1, NODES):
        node = Node(f"n{i}", cluster.hosts[i], cluster.work_dir, ["--seed", first.address])
        cluster.nodes.append(node)
        node.start()


async def watch(cluster, began):
    """Poll the nodes launched so far until each of MOMENTS held in one poll; :return:
    ``{moment: seconds from *began*}``."""
    reached = {}
    last = []
    while len(reached) < len(MOMENTS):
        pending = {endpoint for name, (_label, _condition, endpoint) in MOMENTS.items() if name not in reached}
        nodes = [node for node in cluster.nodes if node.child is not None]
        last = await defer.gatherResults(
            [threads.deferToThread(observe, node, "health" in pending, "status" in pending) for node in nodes],
            consumeErrors=True,
        )
        now = time.monotonic() - began
        for name, (_label, condition, _endpoint) in MOMENTS.items():
            if name not in reached and condition(last):
                reached[name] = now
        for node in nodes:
            if node.child.proc.poll() is not None:
                raise BenchError(f"{node.name} exited with status {node.child.proc.returncode}:\n{node.child.tail()}")
        if now > FORM_DEADLINE and len(reached) < len(MOMENTS):
            shown = "\n".join(f"  {node.name}: {where(seen)}" for node, seen in zip(nodes, last))
            missing = ", ".join(name for name in MOMENTS if name not in reached)
            raise BenchError(f"gave up after {FORM_DEADLINE:.0f} s waiting for {missing}; last seen:\n{shown}")
        await task.deferLater(cluster.reactor, POLL_EVERY, lambda: None)
    return reached


async def form_once(reactor, work_dir, mode):
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir)
    if mode == WITH:
        cluster.nodes[0].args += ["--bootstrap-expect", str(NODES)]
    try:
        began = time.monotonic()
        cluster.nodes[0].start()
        watching = defer.ensureDeferred(watch(cluster, began))
        try:
            await launch(cluster, mode)
        except BaseException:
            watching.addErrback(lambda _failure: None)
            watching.cancel()
            raise
        reached = await watching
    finally:
        cluster.stop()
    # The part that does not depend on how fast Python starts on a loaded machine.
    reached["healthy_after_up"] = reached["healthy"] - reached["up"]
    return reached


# -- report ---------------------------------------------------------------------------------


def spread(values):
    """``{"median", "min", "max"}`` of *values*."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: Every figure of a run, in the order printed, with its label.
FIGURES = {
    **{name: label for name, (label, _condition, _endpoint) in MOMENTS.items()},
    "healthy_after_up": "(a) counted from the moment all three are up",
}


def summarize(runs):
    """``{mode: {figure: spread}}`` over *runs* (``{mode: [{figure: seconds}, ...]}``)."""
    return {mode: {name: spread([r[name] for r in runs[mode]]) for name in FIGURES} for mode in MODES}


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
    for name, label in FIGURES.items():
        without, with_ = summary[WITHOUT][name], summary[WITH][name]
        ratio = f"{with_['median'] / without['median']:.2f}" if without["median"] else "-"
        print(f"  {label:<52} {cell(without):>28} {cell(with_):>28} {ratio:>12}")
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
    runs = {mode: [] for mode in MODES}
    for k in range(args.repeat):
        order = list(MODES) if k % 2 == 0 else list(reversed(MODES))
        for mode in order:
            print(f"run {k + 1}/{args.repeat} {MODES[mode]} ...", end="", file=sys.stderr, flush=True)
            r = await form_once(reactor, os.path.join(temp_root, f"run{k + 1}-{mode}"), mode)
            runs[mode].append(r)
            print(" " + ", ".join(f"{name} {r[name]:.2f} s" for name in FIGURES), file=sys.stderr, flush=True)
    loads["end"] = list(os.getloadavg())
    report(args, summarize(runs), runs, os.path.dirname(temp_root), loads, time.monotonic() - began)
    outcome["done"] = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=positive, default=3, help="formations per mode; figures are their median (default 3)")
    parser.add_argument("--json", action="store_true", help="also print every figure as a JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and node logs (the path is printed)")
    args = parser.parse_args(argv)
    return run_bench(bench, args, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
