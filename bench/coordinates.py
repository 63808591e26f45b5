"""How well Vivaldi coordinates predict latency: the simulator's coordinate scenario, several seeds.

    python bench/coordinates.py [--seeds 5] [--hosts 20] [--settle 30] [--distortion 0]

The scenario of tests/cluster/test_network.py::test_coordinates_predict_injected_latencies:
HOSTS real nodes (SimCluster, heartbeats every second) sit at random points of a 50 ms square
and each has an access delay of 0.5-3 ms; the round trip between two hosts is the distance
between their points plus both access delays, and SimNetwork delays every write by half of
it (+-5%). The hosts join through one seed, converge, and run SETTLE more simulated seconds;
heartbeats (``gossip.ping``, whose reply carries the peer's live coordinate) feed Vivaldi.
Then, for every pair of hosts, the relative error of the predicted round trip
(``vivaldi.distance`` of the two live coordinates) against the injected one.

Such latencies fit the model exactly (a plane plus a height per host), which is the best case.
``--distortion F`` multiplies each pair's round trip by its own random factor in [1-F, 1+F],
so that latencies no longer fit any coordinate space (as on real networks, where the triangle
inequality does not always hold); errors are then measured against the distorted round trips.

Printed per seed and over all seeds: the share of pairs within 20% (the test asks >= 90%), the
median and the 90th percentile of the relative error, and the median absolute error in ms.
"""

import argparse
import math
import os
import random
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # bench the working tree, not an installed nodedb

from nodedb.testing.cluster import SimCluster  # noqa: E402
from nodedb.topology.vivaldi import distance  # noqa: E402


def run(seed, hosts, settle, distortion=0.0):
    """:return: ``[(relative error, absolute error in s), ...]`` over every pair of hosts."""
    rng = random.Random(seed)
    cluster = SimCluster(seed)
    positions = [(rng.uniform(0, 0.05), rng.uniform(0, 0.05)) for _ in range(hosts)]
    access = [rng.uniform(0.0005, 0.003) for _ in range(hosts)]
    # Drawn after the positions, so that --distortion 0 gives the test's latencies exactly.
    factor = {(i, j): 1 + rng.uniform(-distortion, distortion) for i in range(hosts) for j in range(i + 1, hosts)}

    def rtt(i, j):
        return (math.dist(positions[i], positions[j]) + access[i] + access[j]) * factor[i, j]

    names = [cluster.address(i).split(":")[0] for i in range(hosts)]
    for i in range(hosts):
        for j in range(i + 1, hosts):
            cluster.network.set_latency(names[i], names[j], rtt(i, j) / 2)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.converged, timeout=60)
    cluster.run(settle)
    coords = [h.node.gossip.coordinate for h in cluster.hosts]
    errors = []
    for i in range(hosts):
        for j in range(i + 1, hosts):
            predicted, actual = distance(coords[i], coords[j]), rtt(i, j)
            errors.append((abs(predicted - actual) / actual, abs(predicted - actual)))
    cluster.stop()
    return errors


def summary(errors):
    relative = sorted(e for e, _ in errors)
    within = sum(e <= 0.2 for e in relative) / len(relative)
    p90 = relative[min(len(relative) - 1, int(0.9 * len(relative)))]
    absolute_ms = statistics.median(a for _, a in errors) * 1000
    return f"{within:>10.1%} {statistics.median(relative):>10.1%} {p90:>10.1%} {absolute_ms:>12.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 1..N (default 5)")
    parser.add_argument("--hosts", type=int, default=20, help="hosts (default 20, as in the test)")
    parser.add_argument("--settle", type=float, default=30.0, help="simulated seconds after convergence (default 30, as in the test)")
    parser.add_argument(
        "--distortion", type=float, default=0.0, metavar="F", help="scale each pair's round trip by uniform(1-F, 1+F) (default 0)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.hosts < 3 or not 0 <= args.distortion < 1:
        parser.error("need --seeds >= 1, --hosts >= 3 and 0 <= --distortion < 1")
    wall = time.perf_counter()
    distorted = f", round trips distorted by up to {args.distortion:.0%} per pair" if args.distortion else ""
    print(f"{args.hosts} hosts, {args.settle:g} simulated s after convergence, heartbeats every 1 s{distorted}")
    header = f"{'seed':>6} {'within 20%':>10} {'median':>10} {'p90':>10} {'median ms':>12}"
    print(header)
    print("-" * len(header))
    everything = []
    for seed in range(1, args.seeds + 1):
        errors = run(seed, args.hosts, args.settle, args.distortion)
        everything += errors
        print(f"{seed:>6} {summary(errors)}", flush=True)
    print(f"{'all':>6} {summary(everything)}")
    print(f"real time {time.perf_counter() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
