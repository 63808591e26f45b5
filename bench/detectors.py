"""Failure detectors compared: unreliability score, phi accrual, and the rule the code uses.

    python bench/detectors.py [--hosts 8] [--seeds 5] [--duration 3600] [--heartbeat-interval 1]

Every host keeps, per peer, an unreliability score and a phi-accrual detector
(``Reliability._peers[host_id].score`` and ``.detector``, nodedb/reliability/). Both are fed by
the same events: every successful call or heartbeat is a success (and a heartbeat arrival for
phi), every failed one or missed heartbeat a timeout. This script runs real nodes in the
simulator (SimCluster, heartbeats every second unless ``--heartbeat-interval`` says otherwise;
a heartbeat not answered within the interval is missed) and reads that state to judge a peer by
each rule:

- ``score``: unavailable once the score reaches 3, available again below 1 (hysteresis);
- ``phi >= T``: unavailable while phi >= T (T = 4, 8, 12; 8 is the usual default);
- ``combined``: what ``Reliability.is_available`` answers, score and phi >= 8 together.

(a) Detection: a host is crashed (``SimCluster.crash``: connections reset, new ones refused)
or paused (``SimNetwork.pause``: like SIGSTOP, connections stay up but nothing moves) after
the cluster has run for 30 s; the time until every other host judges it unavailable, sampled
every 0.1 simulated seconds, median over the seeds. Base latencies only, and a crash again
under the heavier jitter profile (phi adapts to jitter, so it detects later there).

(b) False positives: no host fails; per-pair latencies plus jitter run for ``--duration``
simulated seconds, and every 0.5 s each host's judgement of each peer is sampled. A false
positive is one change from available to unavailable of one host's view of one peer; the
figure is false positives per observing host per hour. "down" is the share of (host, peer)
samples judged unavailable.

Voting is frozen (its leader never runs its policy, so no host is accepted and Raft sends
nothing): Raft's calls do not feed Reliability, and its traffic would triple the run time.

Latencies: hosts sit at random points of a 50 ms square plus an access delay of 0.5-3 ms, as in
the coordinates test; one-way delay is half the round trip, +-5% (SimNetwork._delay). Jitter:
SimNetwork has no jitter setting of its own, so it is approximated with ``Faults.reorder``: a
share P of all writes is held back by an extra uniform(0, 10 * max_delay) seconds (later writes
may overtake it, which TCP would not allow; see docs/network.md).
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

from nodedb.reliability.state import PhiSettings  # noqa: E402
from nodedb.testing.cluster import SimCluster  # noqa: E402
from nodedb.testing.simulation import Faults  # noqa: E402
from nodedb.voting.service import VotingTiming  # noqa: E402

WARM_UP = 30.0  # simulated seconds before a failure: every pair connected, phi windows filled
DETECT_LIMIT = 60.0  # simulated seconds to wait for detection
DETECT_EVERY = 0.1
SAMPLE_EVERY = 0.5
PHI_DEFAULT = PhiSettings().threshold
#: Voting whose leader never looks at the cluster (see the module docstring).
FROZEN_VOTING = VotingTiming(policy_interval=1e9)


def _phi_rule(threshold):
    return lambda reliability, peer, now: peer.detector.phi(now) < threshold


#: name -> available(reliability, peer, now)
RULES = {
    "score": lambda reliability, peer, now: peer.score.available,
    "phi >= 4": _phi_rule(4.0),
    "phi >= 8": _phi_rule(8.0),
    "phi >= 12": _phi_rule(12.0),
    "combined (code)": lambda reliability, peer, now: reliability._available(peer),
}

#: name -> (share of writes delayed, Faults.max_delay: the extra delay is uniform(0, 10x this))
JITTER = {
    "20% +U(0,1.5s)": (0.2, 0.15),
    "30% +U(0,1.5s)": (0.3, 0.15),
}


def host_id(host):
    return host.node.identity.host_id


def build(seed, hosts, jitter=None, heartbeat=1.0):
    """A converged cluster with injected per-pair latencies (and *jitter*: (share, max_delay))."""
    faults = Faults(reorder=jitter[0], max_delay=jitter[1]) if jitter else None
    cluster = SimCluster(seed, heartbeat_interval=heartbeat, faults=faults, voting_timing=FROZEN_VOTING)
    rng = random.Random(seed)
    positions = [(rng.uniform(0, 0.05), rng.uniform(0, 0.05)) for _ in range(hosts)]
    access = [rng.uniform(0.0005, 0.003) for _ in range(hosts)]
    names = [cluster.address(i).split(":")[0] for i in range(hosts)]
    for i in range(hosts):
        for j in range(i + 1, hosts):
            rtt = math.dist(positions[i], positions[j]) + access[i] + access[j]
            cluster.network.set_latency(names[i], names[j], rtt / 2)
    cluster.start_hosts(hosts)
    cluster.run_until(cluster.converged, timeout=120)
    cluster.run(WARM_UP)
    return cluster


def detection(seed, hosts, failure, jitter=None, heartbeat=1.0):
    """:return: {rule: simulated seconds until every other host judges the victim
    unavailable (None: not within DETECT_LIMIT)}."""
    cluster = build(seed, hosts, jitter, heartbeat)
    victim = cluster.hosts[random.Random(seed).randrange(1, hosts)]
    victim_id = host_id(victim)
    observers = [h.node.reliability for h in cluster.hosts if h is not victim]
    if failure == "crash":
        cluster.crash(victim)
    else:
        cluster.network.pause(victim.host)
    start = cluster.clock.seconds()
    found = {}
    while len(found) < len(RULES) and cluster.clock.seconds() - start < DETECT_LIMIT:
        cluster.run(DETECT_EVERY)
        now = cluster.clock.seconds()
        for name, available in RULES.items():
            if name in found:
                continue
            # An observer that never talked to the victim has no state for it: not detected.
            if all(victim_id in r._peers and not available(r, r._peers[victim_id], now) for r in observers):
                found[name] = now - start
    cluster.stop()
    return {name: found.get(name) for name in RULES}


def false_positives(seed, hosts, jitter, duration, heartbeat=1.0):
    """:return: {rule: (false positives per host-hour, share of samples unavailable)}."""
    cluster = build(seed, hosts, jitter, heartbeat)
    reliabilities = [h.node.reliability for h in cluster.hosts]
    previous = {}
    flips = dict.fromkeys(RULES, 0)
    down = dict.fromkeys(RULES, 0)
    samples = 0
    for _ in range(int(duration / SAMPLE_EVERY)):
        cluster.run(SAMPLE_EVERY)
        now = cluster.clock.seconds()
        for observer, reliability in enumerate(reliabilities):
            for peer_id, peer in reliability._peers.items():
                samples += 1
                for name, available in RULES.items():
                    ok = available(reliability, peer, now)
                    key = (observer, peer_id, name)
                    if not ok:
                        down[name] += 1
                        if previous.get(key, True):
                            flips[name] += 1
                    previous[key] = ok
    cluster.stop()
    host_hours = hosts * duration / 3600
    return {name: (flips[name] / host_hours, down[name] / max(1, samples)) for name in RULES}


def seconds(values):
    """Median of the detection times, or '>LIMIT' if most runs did not detect."""
    done = [v for v in values if v is not None]
    if len(done) * 2 <= len(values):
        return f">{DETECT_LIMIT:.0f} s"
    missing = len(values) - len(done)
    # Undetected runs count as longer than any detected one.
    ordered = sorted(done) + [math.inf] * missing
    median = statistics.median(ordered)
    return f"{median:.1f} s" if math.isfinite(median) else f">{DETECT_LIMIT:.0f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=8, help="hosts in each simulated cluster (default 8)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds (runs) per detection figure (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the false-positive runs (default 1)")
    parser.add_argument(
        "--duration", type=float, default=3600.0, help="simulated seconds of each false-positive run (default 3600)"
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=1.0, metavar="S", help="seconds between heartbeats, also their deadline (default 1)"
    )
    args = parser.parse_args(argv)
    if args.hosts < 3 or args.seeds < 1 or args.duration < SAMPLE_EVERY or not 0.05 <= args.heartbeat_interval <= 60:
        parser.error("need --hosts >= 3, --seeds >= 1, a positive --duration and 0.05 <= --heartbeat-interval <= 60")
    wall = time.perf_counter()
    print(
        f"{args.hosts} hosts, heartbeats every {args.heartbeat_interval:g} s; detection: median of seeds 1..{args.seeds}; "
        f"false positives: seed {args.seed}, {args.duration:g} simulated s per jitter profile",
        flush=True,
    )
    detected = {}
    heavy = list(JITTER)[-1]
    scenarios = {"crash": ("crash", None), "pause": ("pause", None), f"crash, {heavy}": ("crash", JITTER[heavy])}
    for scenario, (failure, jitter) in scenarios.items():
        runs = [detection(seed, args.hosts, failure, jitter, args.heartbeat_interval) for seed in range(1, args.seeds + 1)]
        detected[scenario] = {name: seconds([run[name] for run in runs]) for name in RULES}
        print(f"  detection ({scenario}) done, {time.perf_counter() - wall:.0f} s real", flush=True)
    fp = {}
    for profile, jitter in JITTER.items():
        fp[profile] = false_positives(args.seed, args.hosts, jitter, args.duration, args.heartbeat_interval)
        print(f"  false positives ({profile}) done, {time.perf_counter() - wall:.0f} s real", flush=True)

    columns = ["rule", *(f"detect {scenario}" for scenario in scenarios)]
    for profile in JITTER:
        columns += [f"FP/host-h {profile}", "down"]
    rows = []
    for name in RULES:
        row = [name, *(detected[scenario][name] for scenario in scenarios)]
        for profile in JITTER:
            rate, share = fp[profile][name]
            row += [f"{rate:.1f}", f"{share:.2%}"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    line = "  ".join(f"{c:<{widths[0]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(columns))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{c:<{widths[0]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(row)))
    print(f"real time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
