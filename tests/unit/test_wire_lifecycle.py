"""The connection lifecycle and the read back-pressure of a Channel (nodedb/wire/lifecycle.py),
alone and as a Channel drives them."""

import re
from pathlib import Path

import pytest
from automat import NoTransition
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from nodedb.wire import lifecycle
from nodedb.wire.channel import Channel
from nodedb.wire.limits import CLOSE_GRACE, ConnectionGuard, Limits
from nodedb.wire.lifecycle import (
    AWAITING_HELLO,
    BLOCKED,
    CLOSED,
    CLOSING,
    GREETED,
    HELD,
    HELD_AND_BLOCKED,
    READING,
    UNCONNECTED,
    ConnectionState,
    ReadingState,
    connection_lifecycle,
    reading_lifecycle,
)


def connection():
    state = ConnectionState()
    return state, connection_lifecycle(state)


def reading():
    state = ReadingState()
    return state, reading_lifecycle(state)


# -- the connection ---------------------------------------------------------------------------


class TestConnection:
    def test_a_greeted_connection_closes_once_and_is_lost(self):
        state, machine = connection()
        assert state.phase == UNCONNECTED
        machine.made()
        assert (state.phase, state.role) == (AWAITING_HELLO, None)
        machine.hello("peer", "h2")
        assert (state.phase, state.role, state.host) == (GREETED, "peer", "h2")
        assert machine.close(5.0) is True
        assert (state.phase, state.closing_since) == (CLOSING, 5.0)
        assert machine.close(6.0) is False  # closing already: nothing to do again
        assert state.closing_since == 5.0
        machine.lost()
        assert (state.phase, state.role, state.closing_since) == (CLOSED, "peer", 5.0)
        assert machine.close(7.0) is False

    def test_a_connection_not_up_does_not_close(self):
        state, machine = connection()
        assert machine.close(1.0) is False
        assert (state.phase, state.closing_since) == (UNCONNECTED, None)

    def test_a_connection_may_close_or_be_lost_before_its_hello(self):
        state, machine = connection()
        machine.made()
        assert machine.close(None) is True  # no clock: no time
        assert (state.phase, state.closing_since, state.role) == (CLOSING, None, None)
        state, machine = connection()
        machine.made()
        machine.lost()
        assert state.phase == CLOSED

    def test_a_hello_is_taken_once(self):
        state, machine = connection()
        machine.made()
        machine.hello("client", None)
        with pytest.raises(NoTransition):
            machine.hello("peer", "h2")
        assert state.role == "client"

    def test_a_hello_or_a_loss_after_closing_changes_nothing(self):
        # The other end's bytes may still be served as this end closes: they must not raise.
        state, machine = connection()
        machine.made()
        machine.close(2.0)
        machine.hello("peer", "h2")
        assert (state.phase, state.role, state.host) == (CLOSING, None, None)
        machine.lost()
        machine.hello("client", None)
        machine.lost()
        assert (state.phase, state.role) == (CLOSED, None)

    @pytest.mark.parametrize("greet", [False, True])
    def test_a_transport_seen_closing_is_closing_from_then_and_aborts_move_the_time(self, greet):
        state, machine = connection()
        machine.made()
        if greet:
            machine.hello("client", None)
        machine.closing_seen(3.0)
        assert (state.phase, state.closing_since) == (CLOSING, 3.0)
        machine.aborted(8.0)
        assert (state.phase, state.closing_since) == (CLOSING, 8.0)
        assert machine.close(9.0) is False


# -- reading ----------------------------------------------------------------------------------


class TestReading:
    def test_the_in_flight_limit_stops_and_starts_reading(self):
        state, machine = reading()
        assert machine.limit_reached() is True
        assert state.state == HELD
        assert machine.limit_freed() is True
        assert state.state == READING

    def test_a_full_write_buffer_stops_and_starts_reading(self):
        state, machine = reading()
        assert machine.write_blocked() is True
        assert state.state == BLOCKED
        assert machine.write_blocked() is False  # said twice
        assert machine.write_unblocked() is True
        assert state.state == READING
        assert machine.write_unblocked() is False
        assert state.state == READING

    def test_reading_starts_only_once_neither_holds_it(self):
        state, machine = reading()
        assert machine.limit_reached() is True
        assert machine.write_blocked() is False
        assert state.state == HELD_AND_BLOCKED
        assert machine.write_blocked() is False
        assert machine.limit_freed() is False
        assert state.state == BLOCKED
        assert machine.limit_reached() is False
        assert machine.write_unblocked() is False
        assert state.state == HELD
        assert machine.write_unblocked() is False
        assert machine.limit_freed() is True
        assert state.state == READING


# -- as a Channel drives them -----------------------------------------------------------------


def guarded_channel(clock, dispatch=None, **limits):
    channel = Channel(dispatch, guard=ConnectionGuard(clock, Limits(**limits)))
    channel.makeConnection(StringTransport())
    return channel


class TestChannel:
    def test_the_channel_shows_its_lifecycle_read_only(self):
        clock = Clock()
        channel = Channel(guard=ConnectionGuard(clock))
        assert (channel.connected_, channel.greeted, channel.role, channel.closing_since) == (False, False, None, None)
        channel.makeConnection(StringTransport())
        assert (channel.connected_, channel.greeted) == (True, False)
        channel.accept_hello("peer", "h2")
        assert (channel.greeted, channel.role, channel.peer_host) == (True, "peer", "h2")
        clock.advance(4)
        channel.close()
        assert (channel.connected_, channel.greeted, channel.closing_since) == (True, True, 4)
        channel.connectionLost(None)
        assert (channel.connected_, channel.greeted, channel.role) == (False, True, "peer")
        for name in ("connected_", "greeted", "role", "peer_host", "closing_since", "held"):
            with pytest.raises(AttributeError):
                setattr(channel, name, None)

    def test_a_refused_connection_is_closing_at_once(self):
        clock = Clock()
        channel = guarded_channel(clock, max_connections=0)
        assert channel.transport.disconnecting
        assert (channel.connected_, channel._connection.phase) == (True, CLOSING)
        channel.close("again")  # nothing more is sent
        assert channel.transport.value().count(b"ProtocolError") == 1

    def test_the_sweep_aborts_a_connection_closing_on_its_own_after_a_grace(self):
        clock = Clock()
        channel = guarded_channel(clock)
        guard = channel.guard
        aborted = []
        channel.transport.abortConnection = lambda: aborted.append(clock.seconds())
        channel.transport.loseConnection()  # not through Channel.close
        clock.advance(1)
        guard.sweep()
        assert (channel._connection.phase, channel.closing_since, aborted) == (CLOSING, 1, [])
        clock.advance(CLOSE_GRACE)
        guard.sweep()
        assert aborted == [1 + CLOSE_GRACE] and channel.closing_since == aborted[0]


# -- the drawings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "machine, drawing",
    [(lifecycle.connection_lifecycle, "channel-connection.dot"), (lifecycle.reading_lifecycle, "channel-reading.dot")],
)
def test_the_drawings_match_the_machines(machine, drawing):
    """docs/state-machines/ has exactly each machine's transitions."""
    automaton = machine.__automat_automaton__
    transitions = {(old.name, symbol, new.name) for old, symbol, new, _outputs in automaton.allTransitions()}
    dot = Path(__file__).parents[2] / "docs" / "state-machines" / drawing
    drawn = set(re.findall(r'"([^"]+)" -> "([^"]+)" \[label="([^"]+)"\]', dot.read_text()))
    assert {(old, symbol, new) for old, new, symbol in drawn} == transitions
