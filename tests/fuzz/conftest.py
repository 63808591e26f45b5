"""Fuzz tests: property-based tests of the frame decoder and of every request handler.

Two hypothesis profiles set how many examples each property runs; ``NODEDB_FUZZ_PROFILE``
picks one:

- ``ci`` (the default, what ``pytest`` runs): the count each property states with
  :func:`fuzzkit.fuzz_settings` (200 for the frame properties, 50 for each operation's),
  derandomized, so that every run tries the same examples and a failure reproduces as is.
- ``long``: ``NODEDB_FUZZ_EXAMPLES`` examples per property (20,000 by default), random, for
  campaigns (``python bench/fuzz.py``). A failure prints its ``@reproduce_failure`` blob.

Neither profile has a deadline: a handler example runs a simulated cluster for a while. The
profiles apply only to the properties here (through ``fuzz_settings``); the rest of the suite
keeps hypothesis's defaults.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

import fuzzkit

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture]

settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=_HEALTH
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("NODEDB_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_HEALTH,
)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Call the fuzz tests directly. They are synchronous (fake clocks, no reactor), and
    pytest-twisted's own call would run every example through the reactor's greenlet; it
    also wraps a hypothesis test's inner function in place, once per item, so a parametrized
    property ends up wrapped twice and fails from its second parameter on."""
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    pyfuncitem.obj(**arguments)
    return True


def pytest_report_header(config):
    return f"fuzz profile: {fuzzkit.PROFILE} (NODEDB_FUZZ_PROFILE)"


def pytest_terminal_summary(terminalreporter):
    if not fuzzkit.EXAMPLES:
        return
    total = sum(fuzzkit.EXAMPLES.values())
    terminalreporter.write_line(
        f"fuzz ({fuzzkit.PROFILE} profile): {total:,} examples over {len(fuzzkit.EXAMPLES)} properties"
        + ("" if os.environ.get("NODEDB_FUZZ_REPORT") else "; NODEDB_FUZZ_REPORT=1 lists them")
    )
    if os.environ.get("NODEDB_FUZZ_REPORT"):
        for name, count in sorted(fuzzkit.EXAMPLES.items()):
            terminalreporter.write_line(f"  {count:>8,}  {name}")
