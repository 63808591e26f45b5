"""Seeded fault runs of the simulated cluster, many at a time, with the history checked.

Each run: N hosts (replicas 3), a few clients inserting, updating, deleting and reading a
small set of elements, while the busiest primary (mostly) is crashed and restarted, cut off
or paused, over a network that drops and reorders messages (TCP never duplicates one). At the end every
acknowledged write must be there, and every element's history must be linearizable.

    python bench/replication_faults.py --runs 50 --hosts 5 --seconds 40

Prints one line per failing run (with its seed, to replay with NODEDB_SEED in
tests/cluster/test_replication.py) and the totals.
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodedb.testing.cluster import SimCluster  # noqa: E402
from nodedb.testing.history import NotLinearizable  # noqa: E402
from nodedb.testing.simulation import Faults  # noqa: E402
from nodedb.testing.workload import FaultSchedule, Workload  # noqa: E402


def one_run(seed, hosts, seconds, kinds=("crash", "partition", "pause")):
    cluster = SimCluster(seed)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.settled, timeout=60)
    workload = Workload(cluster, random.Random(seed))
    workload.start()
    cluster.network.faults = Faults(drop=0.01, reorder=0.05)
    schedule = FaultSchedule(cluster, random.Random(seed), kinds)
    schedule.run(seconds)
    cluster.network.faults = Faults()
    workload.stop()
    cluster.run_until(workload.finished, timeout=30)
    cluster.run_until(cluster.replicated, timeout=180)
    try:
        report = workload.check()
        violation = None
    except NotLinearizable as e:
        report, violation = None, e
    cluster.stop()
    return report, violation, schedule.events


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument(
        "--kinds",
        default="crash,partition,pause",
        help="faults to draw from: crash, partition, pause, join (default crash,partition,pause)",
    )
    args = parser.parse_args(argv)
    totals = {"runs": 0, "operations": 0, "acknowledged": 0, "unknown": 0, "lost": 0, "violations": 0, "faults": 0}
    started = time.time()
    for seed in range(args.first_seed, args.first_seed + args.runs):
        try:
            report, violation, events = one_run(seed, args.hosts, args.seconds, tuple(args.kinds.split(",")))
        except AssertionError as e:
            print(f"seed {seed}: did not settle: {e}")
            totals["runs"] += 1
            totals["stuck"] = totals.get("stuck", 0) + 1
            continue
        totals["runs"] += 1
        totals["faults"] += len(events)
        if violation is not None:
            totals["violations"] += 1
            print(f"seed {seed}: NOT LINEARIZABLE: {violation}; faults {events}")
            continue
        totals["operations"] += report.operations
        totals["acknowledged"] += report.acknowledged
        totals["unknown"] += report.unknown
        totals["lost"] += len(report.lost)
        if report.lost:
            print(f"seed {seed}: {len(report.lost)} acknowledged writes lost; faults {events}")
    elapsed = time.time() - started
    print(
        f"{totals['runs']} runs x {args.seconds:.0f} s simulated, {args.hosts} hosts: "
        f"{totals['faults']} faults, {totals['operations']} operations "
        f"({totals['acknowledged']} acknowledged writes, {totals['unknown']} of unknown outcome), "
        f"{totals['lost']} lost writes, {totals['violations']} linearizability violations, "
        f"{totals.get('stuck', 0)} runs that did not settle; "
        f"{elapsed:.0f} s real time"
    )
    return 1 if totals["lost"] or totals["violations"] or totals.get("stuck") else 0


if __name__ == "__main__":
    sys.exit(main())
