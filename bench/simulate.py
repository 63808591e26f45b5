"""Gossip at scale: N real nodes on the simulated network, rounds to converge and to spread a change.

    python bench/simulate.py [--hosts 1000] [--seed 1] [--join-over 0] [--heartbeats] [--voting]
    python bench/simulate.py --hosts-list 10,30,100,300,1000

Each run builds a SimCluster (nodedb/testing/cluster.py): real NodeService instances with
memory stores on one seeded SimNetwork and one fake clock. Then:

1. join: host 0 bootstraps the cluster and every other host joins through it. By default all
   of them start at t=0, so the early joiners get an almost empty NI from the seed and the
   NI has to be assembled by gossip; ``--join-over S`` spreads the starts evenly over S
   simulated seconds instead (each joiner then copies a nearly complete NI from the seed).
   Measured: simulated time from the last host's start until every host holds the same NI
   (same checksum, all N entries), in gossip rounds (simulated seconds / round interval).
2. idle: a few rounds with no change (rumours of the join die out), to measure the steady
   gossip traffic.
3. change: one host (picked with the seed) calls ``gossip.update_local(status="read")``;
   measured: rounds until every host holds that version, and the messages it took.

Voting is frozen unless ``--voting`` is given: its leader never runs its policy, so no joiner
is accepted and the NI changes only through gossip (every joiner stays ``proposal``). With
``--voting`` the leader accepts the joiners and hands out replicas; each decision changes NI
entries, so the join figure is then the first moment at which all hosts agree, which may fall
between two waves of decisions.

"messages" are the writes SimNetwork delivered (``SimNetwork.delivered``): every request and
every reply counts once. Heartbeats on the peer connections are off unless ``--heartbeats``
is given: they do not carry the NI, and at large N they cost most of the simulation time.
Conditions are checked every 0.1 simulated seconds, so rounds are exact to 0.1.

Real time depends on the machine: the figures printed are wall-clock seconds and the CPU
seconds of this process (which differ when other processes compete for the CPU).
"""

import argparse
import math
import os
import random
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # bench the working tree, not an installed nodedb

from nodedb.testing.cluster import SimCluster  # noqa: E402
from nodedb.voting.service import VotingTiming  # noqa: E402

CHECK_EVERY = 0.1  # simulated seconds between checks of a condition
IDLE_ROUNDS = 3  # rounds over which the idle traffic is measured
#: Voting whose leader never looks at the cluster: nobody is accepted, nothing else changes.
FROZEN_VOTING = VotingTiming(policy_interval=1e9)


def host_id(host):
    return host.node.identity.host_id


class Clocks:
    """Wall-clock and CPU seconds since the last lap."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self):
        wall, cpu = time.perf_counter(), time.process_time()
        elapsed = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return elapsed


def run(hosts, seed, join_over=0.0, heartbeats=False, voting=False, timeout=600.0):
    """One simulation; :return: a dict of figures (see the module docstring)."""
    cluster = SimCluster(
        seed, heartbeat_interval=1.0 if heartbeats else None, voting_timing=None if voting else FROZEN_VOTING
    )
    network, round_interval = cluster.network, cluster.timing.round_interval
    clocks = Clocks()

    # 1. join
    gap = join_over / (hosts - 1) if hosts > 1 else 0.0
    for i in range(hosts):
        cluster.add_host()
        if gap and i < hosts - 1:
            cluster.run(gap)
    joined = cluster.run_until(cluster.converged, timeout, CHECK_EVERY)
    join_messages = network.delivered
    join_wall, join_cpu = clocks.lap()

    # 2. idle: let the join's rumours die out (they stay hot for ceil(log2 N) + 3 rounds),
    # then count the steady traffic.
    decay = cluster.hosts[0].node.gossip.state.initial_decay()
    cluster.run(decay * round_interval)
    idle_rounds = decay + IDLE_ROUNDS
    before = network.delivered
    cluster.run(IDLE_ROUNDS * round_interval)
    idle_per_round = (network.delivered - before) / IDLE_ROUNDS
    idle_wall, idle_cpu = clocks.lap()

    # 3. one change, from a host picked with the seed
    subject = cluster.hosts[random.Random(seed).randrange(hosts)]
    subject_id = host_id(subject)
    before = network.delivered
    stamp = subject.node.gossip.update_local(status="read").stamp

    def everywhere():
        return all(h.node.gossip.state.ni.entries[subject_id].stamp >= stamp for h in cluster.hosts)

    spread = cluster.run_until(everywhere, timeout, CHECK_EVERY)
    change_messages = network.delivered - before
    change_wall, change_cpu = clocks.lap()
    cluster.stop()
    return {
        "hosts": hosts,
        "log2": math.log2(hosts),
        "join_rounds": joined / round_interval,
        "join_messages": join_messages,
        "join_wall": join_wall,
        "join_cpu": join_cpu,
        "idle_per_round": idle_per_round,
        "idle_wall": idle_wall,
        "idle_cpu": idle_cpu,
        "idle_rounds": idle_rounds,
        "subject": subject.name,
        "change_rounds": spread / round_interval,
        "change_messages": change_messages,
        "change_wall": change_wall,
        "change_cpu": change_cpu,
        "round_interval": round_interval,
        "heartbeats": heartbeats,
        "voting": voting,
    }


def total(r, kind):
    return r[f"join_{kind}"] + r[f"idle_{kind}"] + r[f"change_{kind}"]


def describe_setup(args, hosts_text):
    joins = f"spread evenly over {args.join_over:g} simulated s" if args.join_over else "all starting at t=0"
    beats = "heartbeats on (1 s)" if args.heartbeats else "heartbeats off"
    voting = "voting on (joiners accepted)" if args.voting else "voting frozen (no joiner accepted: gossip only)"
    return f"{hosts_text} hosts, seed {args.seed}, joining through host 0 {joins}; {beats}; {voting}"


def print_one(r):
    n = r["hosts"]
    print(
        f"join:   NI converged on all {n} hosts {r['join_rounds']:.1f} rounds after the last start "
        f"(log2 N = {r['log2']:.1f}); {r['join_messages']} messages delivered since the first start; "
        f"real {r['join_wall']:.1f} s (cpu {r['join_cpu']:.1f} s)"
    )
    what = "pushes, replies, hellos of new connections" + (", heartbeats" if r["heartbeats"] else "")
    what += ", voting" if r["voting"] else ""
    print(
        f"idle:   {r['idle_per_round']:.0f} messages per round ({r['idle_per_round'] / n:.1f} per host: {what}); "
        f"real {r['idle_wall']:.1f} s (cpu {r['idle_cpu']:.1f} s) for {r['idle_rounds']} rounds"
    )
    print(
        f"change: {r['subject']} status=read reached all {n} hosts in {r['change_rounds']:.1f} rounds "
        f"(log2 N = {r['log2']:.1f}); {r['change_messages']} messages delivered meanwhile; "
        f"real {r['change_wall']:.1f} s (cpu {r['change_cpu']:.1f} s)"
    )
    print(f"total real time: {total(r, 'wall'):.1f} s (cpu {total(r, 'cpu'):.1f} s)")


def print_table(results):
    header = (
        f"{'hosts':>6} {'log2 N':>6} {'join rounds':>11} {'change rounds':>13} "
        f"{'join msgs':>10} {'idle msgs/rnd':>13} {'change msgs':>11} {'real s':>8} {'cpu s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['hosts']:>6} {r['log2']:>6.1f} {r['join_rounds']:>11.1f} {r['change_rounds']:>13.1f} "
            f"{r['join_messages']:>10} {r['idle_per_round']:>13.0f} {r['change_messages']:>11} "
            f"{total(r, 'wall'):>8.1f} {total(r, 'cpu'):>8.1f}"
        )


def host_counts(text):
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated host counts, got {text!r}") from None
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError("every host count must be at least 2")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000, help="number of hosts (default 1000)")
    parser.add_argument("--hosts-list", type=host_counts, metavar="N,N,...", help="run once per host count and print a table")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated network (default 1)")
    parser.add_argument(
        "--join-over", type=float, default=0.0, metavar="S", help="spread the hosts' starts over S simulated seconds (default 0: all at t=0)"
    )
    parser.add_argument("--heartbeats", action="store_true", help="keep heartbeats on (1 s) on the peer connections")
    parser.add_argument("--voting", action="store_true", help="let the voting leader accept the joiners")
    parser.add_argument("--timeout", type=float, default=600.0, help="simulated seconds allowed for each phase (default 600)")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts must be at least 2")
    counts = args.hosts_list or [args.hosts]
    print(describe_setup(args, ",".join(map(str, counts))), flush=True)
    results = []
    for hosts in counts:
        try:
            result = run(hosts, args.seed, args.join_over, args.heartbeats, args.voting, args.timeout)
        except AssertionError as e:  # run_until gave up; the message names the seed
            print(f"{hosts} hosts: {e}", file=sys.stderr)
            return 1
        results.append(result)
        if args.hosts_list:
            print(f"  {hosts} hosts: done in {total(result, 'wall'):.1f} s real", flush=True)
        else:
            print_one(result)
    if args.hosts_list:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
