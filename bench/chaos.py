"""A fault campaign on real processes: many seeded chaos runs of three real nodes, a table of
what was done and found.

    python bench/chaos.py [--runs 10] [--first-seed 1] [--seconds 25] [--kinds kill,stop,cut]
                          [--rate 100] [--keep]
    python bench/chaos.py --runs 100            # the long campaign

Each run is ``tests/system/chaos.py``'s :func:`chaos_run` (the same as
``tests/system/test_chaos.py`` runs for five seeds): three ``twistd -n nodedb`` on loopback
(``n0`` bootstraps with ``--replicas 3``, ``n1`` and ``n2`` join through it) while a nemesis
kills (-9, then restarts), freezes (SIGSTOP, then SIGCONT) or cuts off (policy routing in a
private network namespace; needs root, else SIGSTOP stands in) one random host at a time,
from the first second, under a load of inserts, updates and gets; then it checks for stuck
(no write through every host to every partition within 30 s of the last heal), lost
acknowledged writes and violations (non-linearizable elements, versions that disagree with
acknowledgements, inserts applied twice).

It prints a row per run as it ends, the report of each failing run (seed, fault schedule,
what was found, how to replay it) or why it could not be carried out, and the totals. Exit
status 1 if any run failed.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from single_node import environment, positive  # noqa: E402  (single_node also puts the working tree first on sys.path)

from tests.system.chaos import KINDS, RATE, chaos_run  # noqa: E402
from tests.system.harness import ProcessGroup  # noqa: E402

COLUMNS = (
    ("seed", 6), ("kill", 5), ("stop", 5), ("cut", 5), ("ok", 7), ("failed", 7), ("unknown", 8),
    ("lost", 5), ("viol.", 6), ("stuck", 6), ("errors", 7), ("secs", 6),
)


def row(values):
    return "  ".join(str(value).rjust(width) for value, (_name, width) in zip(values, COLUMNS))


def figures(result):
    return [
        result.faults["kill"], result.faults["stop"], result.faults["cut"],
        result.operations["ok"], result.operations["failed"], result.operations["unknown"],
        result.lost, result.violations, result.stuck, result.errors,
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=positive, default=10, help="how many runs (default 10)")
    parser.add_argument("--first-seed", type=int, default=1, help="seed of the first run; the others follow (default 1)")
    parser.add_argument("--seconds", type=float, default=25.0, help="seconds of faults per run (default 25)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"faults to draw from (default {','.join(KINDS)})")
    parser.add_argument("--rate", type=positive, default=RATE, help=f"load operations per second (default {RATE})")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory (failing runs' are always kept)")
    args = parser.parse_args(argv)
    if not args.seconds > 0:
        parser.error("--seconds: must be more than 0")
    kinds = tuple(args.kinds.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        parser.error(f"--kinds: {', '.join(sorted(unknown)) or 'none'} not among {', '.join(KINDS)}")

    temp_root = tempfile.mkdtemp(prefix="nodedb-chaos-")
    print(
        f"nodedb chaos: {args.runs} runs from seed {args.first_seed}, {args.seconds:.0f} s of faults each "
        f"({', '.join(kinds)}), 3 nodes --replicas 3, load {args.rate} ops/s"
    )
    print(environment(temp_root))
    print()
    print(row([name for name, _width in COLUMNS]))
    totals, failed, started = Counter(), [], time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.runs):
        directory = os.path.join(temp_root, f"seed-{seed}")
        processes = ProcessGroup(directory)
        try:
            result = chaos_run(processes, seed, args.seconds, kinds, rate=args.rate)
        except AssertionError as e:  # the harness could not carry the run out (a node never started...)
            failed.append(seed)
            print(f"{seed:>6}  the run could not be carried out: {e}\n    logs: {directory}", flush=True)
            continue
        finally:
            processes.cleanup()
        values = figures(result)
        totals.update(dict(enumerate(values)))
        print(row([seed, *values, f"{result.seconds:.0f}"]), flush=True)
        if result.failed:
            failed.append(seed)
            print("\n".join("    " + line for line in result.report().splitlines()) + f"\n    logs: {directory}", flush=True)
        elif not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    print(row(["all", *(totals[i] for i in range(len(COLUMNS) - 2)), f"{time.monotonic() - started:.0f}"]))
    print(f"{args.runs} runs, {len(failed)} failed{': seeds ' + ', '.join(map(str, failed)) if failed else ''}")
    if not failed and not args.keep:
        shutil.rmtree(temp_root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
