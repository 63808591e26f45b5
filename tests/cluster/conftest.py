"""Simulated-cluster tests: many real nodes in one process, on a seeded in-memory network.

Each test runs for several seeds. A failure names its seed; rerun just that one with
``NODEDB_SEED=<seed> pytest tests/cluster -k <test>``, and the run replays exactly.
"""

import pytest

from nodedb.testing.simulation import replay_hint

@pytest.fixture
def seed_report(request):
    """Print the seed of a failing simulated test, so that it can be replayed."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        seed = request.node.callspec.params.get("seed") if hasattr(request.node, "callspec") else None
        print(f"\n*** simulated test failed: {replay_hint(seed)} ***")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


@pytest.fixture(autouse=True)
def no_logged_failures():
    """A simulated test fails if any node logged a failure or an error (an unhandled error
    in a Deferred included): bugs that do not break the run's checks still show."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    seen = []

    def observe(event):
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    if seen:
        first = seen[0]
        detail = first["log_failure"].getTraceback() if "log_failure" in first else formatEvent(first)
        pytest.fail(f"{len(seen)} failures logged; the first:\n{detail}")
