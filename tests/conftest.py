"""Fixtures for every test: a test that logs an error through twisted.logger fails.

An error is an event at ``error`` or ``critical`` level, or any event that carries a failure
(``Logger.failure``, ``log.err``, and "Unhandled error in Deferred" when a failed Deferred is
garbage collected). A test that provokes one on purpose takes the ``logged_errors`` fixture
and consumes what it expected::

    def test_bad_frame(logged_errors):
        ...
        [event] = logged_errors.flush(ValueError)

A lost failed Deferred ("Unhandled error in Deferred") logs two events, a headline without a
failure and then the failure; ``flush()`` with no types takes both.
"""

import gc

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

_ERROR_LEVELS = (LogLevel.error, LogLevel.critical)


class LoggedErrors:
    """The error events logged during one test, until the test consumes them."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_level") in _ERROR_LEVELS or event.get("log_failure") is not None:
            self.events.append(event)

    def flush(self, *types):
        """Remove and return the logged error events; with *types*, only those whose failure
        wraps one of these exception types."""
        if types:
            taken = [e for e in self.events if e.get("log_failure") is not None and e["log_failure"].check(*types)]
        else:
            taken = list(self.events)
        self.events = [e for e in self.events if not any(e is t for t in taken)]
        return taken


def _describe(event):
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text


@pytest.fixture
def logged_errors():
    """The :class:`LoggedErrors` of this test; what is left in it at the end fails the test."""
    return LoggedErrors()


def _fail_if_any(errors, during):
    if errors.events:
        pytest.fail(
            f"{len(errors.events)} error(s) logged {during}:\n\n" + "\n\n".join(_describe(e) for e in errors.events),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _fail_on_logged_errors(logged_errors):
    globalLogPublisher.addObserver(logged_errors)
    try:
        yield
        # A failed Deferred that nobody handled is reported when it is collected. Collect
        # the young generations now (cheap), so that the test that lost one usually is the
        # test that fails; a full collection per test would cost more than the tests.
        gc.collect(1)
    finally:
        globalLogPublisher.removeObserver(logged_errors)
    _fail_if_any(logged_errors, "during the test")


@pytest.fixture(scope="module", autouse=True)
def _fail_on_lost_failures():
    """A full collection after each module, for lost failures that lived long enough to reach
    the oldest generation; they fail the module's last test."""
    yield
    errors = LoggedErrors()
    globalLogPublisher.addObserver(errors)
    try:
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(errors)
    _fail_if_any(errors, "by a test of this module (found by garbage collection)")
