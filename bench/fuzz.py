"""A long fuzzing campaign: the properties of tests/fuzz with many more examples, at random.

    python bench/fuzz.py [--examples 20000] [--seed N] [-k EXPRESSION] [--list]

It runs ``pytest tests/fuzz`` in this process under the ``long`` hypothesis profile
(tests/fuzz/conftest.py): ``--examples`` examples per property instead of CI's 200 (frames)
and 50 (each operation's handlers), not derandomized, from the hypothesis seed ``--seed``
(random by default, and printed, so that a campaign can be run again exactly). ``-k`` selects
properties as pytest's ``-k`` does (``frames``, ``logsync``, ``mutated``...); ``--list`` only
names them.

It prints each property as it finishes (examples run, seconds, passed or FAILED), then a
total, then every failure: the falsifying example as hypothesis printed it, with its
``@reproduce_failure`` blob, and the command that runs the campaign's examples of that
property again. (The handler properties run against simulated clusters that live for the
whole module, so a failure found after other properties ran replays best with the same
``-k`` and seed: the cluster then goes through the same history.)

Exit status 1 if any property failed, 0 otherwise.
"""

import argparse
import contextlib
import io
import os
import random
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


class _Progress:
    """A pytest plugin that prints each property's outcome and keeps the failures."""

    def __init__(self, out):
        self.out = out
        self.failures = []
        self.outcomes = []
        self._started = {}

    def pytest_runtest_logstart(self, nodeid, location):
        self._started[nodeid] = time.perf_counter()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            seconds = time.perf_counter() - self._started.get(report.nodeid, time.perf_counter())
            examples = _examples_of(report.nodeid)
            label = "passed" if report.passed else ("skipped" if report.skipped else "FAILED")
            self.outcomes.append((report.nodeid, examples, seconds, label))
            print(f"  {examples:>9,}  {seconds:8.1f} s  {label:7}  {report.nodeid.split('::', 1)[1]}", file=self.out, flush=True)
            if report.failed:
                self.failures.append((report.nodeid, report.longreprtext))


def _examples_of(nodeid):
    fuzzkit = sys.modules.get("fuzzkit")
    if fuzzkit is None:
        return 0
    name = nodeid.split("::", 1)[1]
    return fuzzkit.EXAMPLES.get(name, 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per property (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    parser.add_argument("-k", dest="select", default=None, help="run only the properties matching this pytest -k expression")
    parser.add_argument("--list", action="store_true", help="list the properties and exit")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)

    # Read by tests/fuzz/conftest.py and fuzzkit when pytest imports them, below.
    os.environ["NODEDB_FUZZ_PROFILE"] = "long"
    os.environ["NODEDB_FUZZ_EXAMPLES"] = str(args.examples)
    os.chdir(ROOT)
    import pytest

    pytest_args = ["tests/fuzz", "-q", "-p", "no:cacheprovider", "--no-header", f"--hypothesis-seed={seed}"]
    if args.select:
        pytest_args += ["-k", args.select]
    if args.list:
        return pytest.main([*pytest_args, "--collect-only"])

    print(f"fuzz campaign: {args.examples:,} examples per property, hypothesis seed {seed}", flush=True)
    print(f"  {'examples':>9}  {'time':>10}  {'outcome':7}  property", flush=True)
    progress = _Progress(sys.stdout)
    started = time.perf_counter()
    # pytest's own report goes to a buffer: the plugin prints each property instead.
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        status = pytest.main([*pytest_args, "--tb=short"], plugins=[progress])
    elapsed = time.perf_counter() - started
    if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(report.getvalue())
        return 2

    total = sum(examples for _nodeid, examples, _s, _label in progress.outcomes)
    failed = len(progress.failures)
    print(
        f"total: {total:,} examples over {len(progress.outcomes)} properties in {elapsed:.0f} s; "
        f"{failed} failed; hypothesis seed {seed}",
        flush=True,
    )
    for nodeid, text in progress.failures:
        command = (
            f"NODEDB_FUZZ_PROFILE=long NODEDB_FUZZ_EXAMPLES={args.examples} "
            f"python -m pytest '{nodeid}' --hypothesis-seed={seed}"
        )
        print(f"\n=== FAILED {nodeid}\n{text}\nrun again: {command}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
