"""A longer soak of the seeded Raft simulation (nodedb.testing.raft_sim.run) over many seeds.

    python bench/raft_soak.py [--runs 2000] [--steps 1000] [--members 5] [--start 0]

Each run is the one the CI test runs (tests/cluster/test_raft_safety.py: 200 runs of 500
steps): proposals, crashes (leaders more often) and restarts from what was persisted,
partitions, loss, duplication, delay, reordering, membership changes and compaction, with the
safety checks after every step; then the faults stop and every member must catch up. Even
seeds run with pre-vote, odd seeds without. Seeds are --start, --start + 1, ...; a failing seed
replays alone with --start SEED --runs 1 (or NODEDB_SEED=SEED pytest
tests/cluster/test_raft_safety.py, which uses 500 steps).

Exit status 1 if any run broke safety (SafetyViolation), got stuck (Stuck) or raised anything
else; 0 otherwise.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nodedb.testing.raft_sim import SafetyViolation, Stuck, run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="number of seeds to run (default 2000)")
    parser.add_argument("--steps", type=int, default=1000, help="faulty steps per run (default 1000)")
    parser.add_argument("--members", type=int, default=5, help="members of the Raft group (default 5)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1 or args.members < 1 or args.start < 0:
        parser.error("--runs, --steps and --members must be at least 1, --start at least 0")

    failures = {"violations": [], "stuck": [], "errors": []}
    runs = steps = elections = proposals = 0
    started = time.perf_counter()

    def line(label):
        elapsed = time.perf_counter() - started
        print(
            f"{label}: runs {runs}, steps {steps}, elections {elections}, proposals {proposals}, "
            f"violations {len(failures['violations'])}, stuck {len(failures['stuck'])}, "
            f"errors {len(failures['errors'])}, {elapsed:.1f} s",
            flush=True,
        )

    print(
        f"raft soak: seeds {args.start}..{args.start + args.runs - 1}, {args.steps} steps, "
        f"{args.members} members",
        flush=True,
    )
    for seed in range(args.start, args.start + args.runs):
        try:
            outcome = run(seed, steps=args.steps, members=args.members)
        except SafetyViolation as e:
            failures["violations"].append(seed)
            print(f"seed {seed}: SafetyViolation: {e}", flush=True)
        except Stuck as e:
            failures["stuck"].append(seed)
            print(f"seed {seed}: Stuck: {e}", flush=True)
        except Exception as e:  # a crash inside Raft is a finding too; keep soaking
            failures["errors"].append(seed)
            print(f"seed {seed}: {type(e).__name__}: {e}", flush=True)
        else:
            steps += outcome.steps
            elections += outcome.elections
            proposals += outcome.proposals
        runs += 1
        if runs % 100 == 0 and runs != args.runs:
            line("progress")
    line("total")
    print(f"real time {time.perf_counter() - started:.1f} s")
    for name, label in (("violations", "safety violations"), ("stuck", "stuck runs"), ("errors", "other errors")):
        if failures[name]:
            print(f"{label} (seeds): {' '.join(map(str, failures[name]))}")
    failed = any(failures.values())
    print("FAILED" if failed else "OK: no safety violation, no stuck run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
