"""The test helpers themselves: nodedb.testing, nodedb.testing.network and the error observer
of tests/conftest.py."""

import gc

import pytest
from twisted.internet import defer
from twisted.logger import Logger

from nodedb.testing import Recorder, failure_result_of, no_result, success_result_of
from nodedb.testing.network import connect


class TestResults:
    def test_success_result_of(self):
        assert success_result_of(defer.succeed(5)) == 5

    def test_success_result_of_a_failure_or_nothing(self):
        with pytest.raises(AssertionError, match="failed; expected a result"):
            success_result_of(defer.fail(KeyError("k")))
        with pytest.raises(AssertionError, match="has not fired yet"):
            success_result_of(defer.Deferred())
        with pytest.raises(TypeError):
            success_result_of(5)

    def test_failure_result_of(self):
        failure = failure_result_of(defer.fail(KeyError("k")), KeyError)
        assert failure.check(KeyError)
        assert failure_result_of(defer.fail(KeyError("k"))).check(LookupError)
        with pytest.raises(AssertionError, match="failed with KeyError, not one of ValueError"):
            failure_result_of(defer.fail(KeyError("k")), ValueError)
        with pytest.raises(AssertionError, match="succeeded with 1"):
            failure_result_of(defer.succeed(1))
        with pytest.raises(AssertionError, match="has not fired yet"):
            failure_result_of(defer.Deferred())

    def test_no_result(self):
        d = defer.Deferred()
        no_result(d)
        d.callback("later")
        assert success_result_of(d) == "later"
        with pytest.raises(AssertionError, match="already fired"):
            no_result(defer.succeed(1))

    def test_looking_at_a_result_leaves_it_for_later_callbacks(self):
        d = defer.succeed(7)
        assert success_result_of(d) == 7
        assert success_result_of(d) == 7

    def test_a_failure_that_was_looked_at_is_not_reported_as_lost(self, logged_errors):
        d = defer.fail(RuntimeError("seen"))
        failure_result_of(d, RuntimeError)
        del d
        gc.collect()
        assert logged_errors.flush() == []


class TestLoggedErrors:
    log = Logger()

    def test_errors_and_failures_are_collected(self, logged_errors):
        self.log.info("fine")
        self.log.warn("also fine")
        self.log.error("broken {thing}", thing="x")
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("while dividing")
        assert len(logged_errors.events) == 2
        [failure_event] = logged_errors.flush(ZeroDivisionError)
        assert failure_event["log_format"] == "while dividing"
        [error_event] = logged_errors.flush()
        assert error_event["thing"] == "x"
        assert logged_errors.events == []

    def test_a_lost_failed_deferred_is_caught(self, logged_errors):
        def lose():
            defer.fail(ValueError("nobody handles me"))

        lose()
        gc.collect()
        # Twisted logs two critical events: the headline, then the failure.
        [headline, event] = logged_errors.flush()
        assert headline["log_format"] == "Unhandled error in Deferred:"
        assert event["log_failure"].check(ValueError)


class Echo(Recorder):
    def dataReceived(self, data):
        super().dataReceived(data)
        self.transport.write(data.upper())


class TestMemoryConnection:
    def test_bytes_move_only_when_pumped(self):
        server, client = Echo(), Recorder()
        pair = connect(server, client)
        client.transport.write(b"hello")
        assert server.received == b""
        assert pair.pump()
        assert (server.received, client.received) == (b"hello", b"HELLO")
        assert not pair.pump()

    def test_pause_holds_the_bytes(self):
        server, client = Echo(), Recorder()
        pair = connect(server, client)
        pair.pause()
        client.transport.write(b"x")
        assert not pair.pump()
        pair.resume()
        assert pair.pump() and client.received == b"X"

    def test_lose_connection_closes_both_sides_after_the_bytes(self):
        server, client = Echo(), Recorder()
        pair = connect(server, client)
        client.transport.write(b"bye")
        client.transport.loseConnection()
        pair.pump()
        assert server.received == b"bye"
        assert pair.closed and server.lost is not None and client.lost is not None
