"""The two lifecycles of a :class:`~nodedb.wire.channel.Channel`, as automat machines.

They are pure: each input changes a small state object and says what to do; the channel does
the I/O. They move on lifecycle events only (a connection made, a hello, a close, the in-flight
limit or the write buffer crossed), never once per frame: automat's cost per input is kept off
that path.

The connection (drawn in ``docs/state-machines/channel-connection.dot``)::

    unconnected --made--> awaiting hello --hello--> greeted
                               |                       |
                               +---close, closing_seen-+--> closing --lost--> closed
    (lost also from awaiting hello and greeted; closing loops on aborted)

- **awaiting hello**: connected; the other end has not been greeted yet. On a connection this
  end made, where this end sends the hello, it stays here until it closes.
- **greeted**: the serving side accepted the other end's hello, which gave its role (``client``
  or ``peer``) and, from a peer, its host.
- **closing**: this end closes the connection (:meth:`close`, a refusal, or the transport
  closing otherwise, which the guard's sweep notices); ``closing_since`` is when, on the
  guard's clock, so that a connection not gone in time is aborted.
- **closed**: the connection is gone.

Reading back-pressure, on connections a guard holds to its limits (drawn in
``docs/state-machines/channel-reading.dot``)::

    reading <--limit_reached/limit_freed--> held
       ^                                      ^
       write_blocked/write_unblocked          write_blocked/write_unblocked
       v                                      v
    blocked <--limit_reached/limit_freed--> held and blocked

Reading stops on leaving **reading** (requests in service reached the in-flight limit, or the
other end does not read its replies so the transport's write buffer is full) and starts again
on coming back to it.
"""

from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder

UNCONNECTED, AWAITING_HELLO, GREETED, CLOSING, CLOSED = "unconnected", "awaiting hello", "greeted", "closing", "closed"
#: The phases in which the connection is up (from connectionMade until connectionLost).
CONNECTED = frozenset((AWAITING_HELLO, GREETED, CLOSING))
READING, HELD, BLOCKED, HELD_AND_BLOCKED = "reading", "held", "blocked", "held and blocked"


@dataclass
class ConnectionState:
    """Where a connection is: written only by the machine's transitions."""

    phase: str = UNCONNECTED
    role: str | None = None  # what the other end's hello said it is
    host: str | None = None  # the host id a peer's hello gave
    closing_since: float | None = None  # when this end began closing (None without a clock)


class ConnectionEvents(Protocol):
    """The inputs of a connection's lifecycle."""

    # from the transport
    def made(self) -> None:
        "The connection is up."

    def lost(self) -> None:
        "The connection is gone."

    # from the serving side's dispatch
    def hello(self, role: str, host: str | None) -> None:
        "The other end's hello was accepted."

    # from this end
    def close(self, now: float | None) -> bool:
        "This end closes the connection: :return: whether to (False once closing, or not up)."

    # from the guard's sweep
    def closing_seen(self, now: float) -> None:
        "The transport is closing, though not through close()."

    def aborted(self, now: float) -> None:
        "Closing took too long: the connection was aborted (again) at *now*."


def _build_connection():
    builder = TypeMachineBuilder(ConnectionEvents, ConnectionState)
    unconnected = builder.state(UNCONNECTED)
    awaiting_hello = builder.state(AWAITING_HELLO)
    greeted = builder.state(GREETED)
    closing = builder.state(CLOSING)
    closed = builder.state(CLOSED)

    @unconnected.upon(ConnectionEvents.made).to(awaiting_hello)
    def connect(machine, state):
        state.phase = AWAITING_HELLO

    @awaiting_hello.upon(ConnectionEvents.hello).to(greeted)
    def greet(machine, state, role, host):
        state.role = role
        state.host = host
        state.phase = GREETED

    @awaiting_hello.upon(ConnectionEvents.close).to(closing)
    @greeted.upon(ConnectionEvents.close).to(closing)
    def close(machine, state, now):
        state.phase = CLOSING
        state.closing_since = now
        return True

    unconnected.upon(ConnectionEvents.close).loop().returns(False)
    closing.upon(ConnectionEvents.close).loop().returns(False)
    closed.upon(ConnectionEvents.close).loop().returns(False)
    # A hello served after this end began closing, or a second loss, changes nothing: the
    # other end's bytes must never raise here.
    closing.upon(ConnectionEvents.hello).loop().returns(None)
    closed.upon(ConnectionEvents.hello).loop().returns(None)
    closed.upon(ConnectionEvents.lost).loop().returns(None)

    @awaiting_hello.upon(ConnectionEvents.closing_seen).to(closing)
    @greeted.upon(ConnectionEvents.closing_seen).to(closing)
    def note_closing(machine, state, now):
        state.phase = CLOSING
        state.closing_since = now

    @closing.upon(ConnectionEvents.aborted).loop()
    def abort(machine, state, now):
        state.closing_since = now  # the next abort, if this one does not end it, a grace later

    @awaiting_hello.upon(ConnectionEvents.lost).to(closed)
    @greeted.upon(ConnectionEvents.lost).to(closed)
    @closing.upon(ConnectionEvents.lost).to(closed)
    def lose(machine, state):
        state.phase = CLOSED

    return builder.build()


@dataclass
class ReadingState:
    """Whether a connection is read, and if not why: written only by the machine's transitions."""

    state: str = READING


class ReadingEvents(Protocol):
    """The inputs of a connection's read back-pressure; each returns whether reading must
    stop (``limit_reached``, ``write_blocked``) or start again (the others) now."""

    # from the requests in service
    def limit_reached(self) -> bool:
        "The requests in service reached the in-flight limit."

    def limit_freed(self) -> bool:
        "The requests in service are below the in-flight limit again."

    # from the transport, whose write buffer fills and drains (IPushProducer)
    def write_blocked(self) -> bool:
        "The other end does not read its replies."

    def write_unblocked(self) -> bool:
        "The other end reads its replies again."


def _build_reading():
    builder = TypeMachineBuilder(ReadingEvents, ReadingState)
    reading = builder.state(READING)
    held = builder.state(HELD)
    blocked = builder.state(BLOCKED)
    held_and_blocked = builder.state(HELD_AND_BLOCKED)

    def moves(name, changes_reading):
        def move(machine, state):
            state.state = name
            return changes_reading

        return move

    reading.upon(ReadingEvents.limit_reached).to(held)(moves(HELD, True))
    blocked.upon(ReadingEvents.limit_reached).to(held_and_blocked)(moves(HELD_AND_BLOCKED, False))
    held.upon(ReadingEvents.limit_freed).to(reading)(moves(READING, True))
    held_and_blocked.upon(ReadingEvents.limit_freed).to(blocked)(moves(BLOCKED, False))

    reading.upon(ReadingEvents.write_blocked).to(blocked)(moves(BLOCKED, True))
    held.upon(ReadingEvents.write_blocked).to(held_and_blocked)(moves(HELD_AND_BLOCKED, False))
    blocked.upon(ReadingEvents.write_unblocked).to(reading)(moves(READING, True))
    held_and_blocked.upon(ReadingEvents.write_unblocked).to(held)(moves(HELD, False))

    # A transport may say twice that its buffer is full, or that it drained.
    blocked.upon(ReadingEvents.write_blocked).loop().returns(False)
    held_and_blocked.upon(ReadingEvents.write_blocked).loop().returns(False)
    reading.upon(ReadingEvents.write_unblocked).loop().returns(False)
    held.upon(ReadingEvents.write_unblocked).loop().returns(False)

    return builder.build()


#: ``connection_lifecycle(ConnectionState())``: the inputs (:class:`ConnectionEvents`) of a new machine.
connection_lifecycle = _build_connection()
#: ``reading_lifecycle(ReadingState())``: the inputs (:class:`ReadingEvents`) of a new machine.
reading_lifecycle = _build_reading()
