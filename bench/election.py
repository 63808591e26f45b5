"""How long Voting takes to elect a new leader after the leader dies, in the simulator.

    python bench/election.py [--seeds 20] [--start 1] [--hosts 5]

For each seed: a SimCluster (nodedb.testing.cluster: the production NodeService on the
simulated network, fake clock, one-way delays of 0.5-1.5 ms, no faults) starts --hosts hosts,
runs until every host is a member, the Raft group has min(hosts, 5) voters (the largest odd
number) and all hosts agree, then crashes the leader and measures the simulated time until
exactly one live host leads. Prints each seed's figure and the median, mean, min and max.
The times are simulated seconds (Raft ticks every 0.1 s; an election timeout is 10-20
ticks), not wall time.

"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


from nodedb.testing.cluster import SimCluster  # noqa: E402


def voters(host):
    return host.node.voting.raft.config.voters


def measure(seed, hosts):
    cluster = SimCluster(seed)
    cluster.start_hosts(hosts)
    want = min(hosts, 5)
    want -= 1 - want % 2
    cluster.run_until(
        lambda: cluster.agreed()
        and cluster.leader() is not None
        and len(voters(cluster.leader())) == want
        and len(cluster.leader().node.voting.state.members) == hosts,
        timeout=120,
    )
    old = cluster.leader()
    term = old.node.voting.raft.term
    cluster.crash(old)
    took = cluster.run_until(lambda: cluster.leader() is not None, timeout=60, check_every=0.01)
    new = cluster.leader()
    new_term = new.node.voting.raft.term
    assert new_term > term
    cluster.stop()
    return took, old.name, new.name, new_term


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds (default 20)")
    parser.add_argument("--start", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--hosts", type=int, default=5, help="hosts in the cluster (default 5)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.hosts < 2:
        parser.error("--seeds must be at least 1 and --hosts at least 2")
    started = time.perf_counter()
    times = []
    for seed in range(args.start, args.start + args.seeds):
        took, old, new, term = measure(seed, args.hosts)
        times.append(took)
        print(f"seed {seed}: leader {old} crashed, {new} leads term {term} after {took:.2f} s", flush=True)
    print(
        f"new leader after the leader crashed, {args.hosts} hosts, {len(times)} seeds, "
        f"(simulated seconds): "
        f"median {statistics.median(times):.2f}, mean {statistics.mean(times):.2f}, "
        f"min {min(times):.2f}, max {max(times):.2f}"
    )
    print(f"real time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
