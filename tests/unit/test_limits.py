"""Connection limits: back-pressure at the in-flight limit, connection caps, idle, handshake
and half-sent-frame timeouts, frame size both ways, and the settings behind them.

Everything runs on a Clock and StringTransports (or connections pumped in memory)."""

import dataclasses
import random
import struct

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from zope.interface import directlyProvides

from nodedb import config, errors, tap
from nodedb.config import ConfigError, NodeConfig
from nodedb.metrics import NodeMetrics
from nodedb.testing import failure_result_of, no_result, success_result_of, written_frames
from nodedb.testing.network import MemoryEndpoint, connect, pump_all
from nodedb import codec
from nodedb.wire.channel import Channel, hello_request
from nodedb.wire.connection import ChannelFactory, PersistentConnection
from nodedb.wire.limits import CLOSE_GRACE, SPARE_FILES, SWEEP_INTERVAL, WARN_EVERY, ConnectionGuard, Limits, raise_open_files_limit
from nodedb.wire.transport import PeerTransport


def frame(message):
    data = message if isinstance(message, bytes) else codec.encode(message)
    return struct.pack(">I", len(data)) + data


def request(request_id, op="hold", **arguments):
    return frame({"id": request_id, "op": op, **arguments})


replies = written_frames  # every frame the node wrote, decoded


class Server:
    """A dispatch that greets as RequestAPI does and holds ``hold`` requests until the test
    fires them; it records the order requests were dispatched in and the most ever held."""

    def __init__(self, max_frame=None):
        self.dispatched = []
        self.held = {}  # request id -> Deferred
        self.peak = 0
        self.max_frame = max_frame

    def in_service(self):
        return sum(not d.called for d in self.held.values())

    def __call__(self, message, channel):
        op = message["op"]
        if op == "hello":
            channel.accept_hello(message.get("role", "client"))
            return {"max_frame": self.max_frame} if self.max_frame else {}
        self.dispatched.append(message["id"])
        if op == "hold":
            d = self.held[message["id"]] = defer.Deferred()
            self.peak = max(self.peak, self.in_service())
            return d
        if op == "echo":
            return message.get("value")
        if op == "big":
            return "x" * message["size"]
        raise errors.InvalidRequest(f"unknown op {op!r}")

    def release(self, request_id, value=None):
        self.held[request_id].callback(value if value is not None else request_id)


class Transport(StringTransport):
    """A StringTransport that records when the channel pauses and resumes reading."""

    def __init__(self, host="10.0.0.1", port=50000, peer=None):
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7400), peerAddress=peer or IPv4Address("TCP", host, port)
        )
        self.events = []

    def pauseProducing(self):
        super().pauseProducing()
        self.events.append("pause")

    def resumeProducing(self):
        super().resumeProducing()
        self.events.append("resume")


def guarded(guard, dispatch=None, host="10.0.0.1", port=50000, peer=None, max_frame=1024 * 1024):
    """A server-side channel under *guard*, connected to a fresh :class:`Transport`."""
    channel = Channel(dispatch, max_frame=max_frame, guard=guard)
    transport = Transport(host, port, peer)
    channel.makeConnection(transport)
    return channel, transport


def greeted(guard, dispatch, role="client", **kwargs):
    channel, transport = guarded(guard, dispatch, **kwargs)
    channel.dataReceived(request(0, "hello", **hello_request(role)))
    transport.clear()
    return channel, transport


@pytest.fixture
def clock():
    return task.Clock()


def make_guard(clock, **limits):
    guard = ConnectionGuard(clock, Limits(**limits))
    guard.start()
    return guard


# -- requests in flight ------------------------------------------------------------------


class TestBackPressure:
    def test_reading_pauses_at_the_limit_and_resumes_when_one_is_answered(self, clock):
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=3), server)
        channel.dataReceived(b"".join(request(n) for n in range(1, 6)))
        assert server.dispatched == [1, 2, 3]
        assert (channel.serving, channel.held, transport.producerState) == (3, True, "paused")
        assert transport.events == ["pause"]
        assert transport.value() == b""  # no error, no reply: the sender simply waits
        server.release(2)
        # One slot freed: reading resumed, the next buffered frame took the slot, and
        # reading paused again.
        assert server.dispatched == [1, 2, 3, 4]
        assert transport.events == ["pause", "resume", "pause"]
        assert replies(transport) == [{"id": 2, "ok": 2}]
        server.release(1)
        assert server.dispatched == [1, 2, 3, 4, 5]
        server.release(3)
        # Nothing is buffered any more: reading stays on.
        assert (channel.serving, channel.held, transport.producerState) == (2, False, "producing")
        assert server.peak == 3

    def test_buffered_frames_are_served_later_in_order_never_beyond_the_limit(self, clock):
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=4), server)
        # 40 requests, cut into chunks at arbitrary bytes, as TCP might deliver them.
        data = b"".join(request(n) for n in range(1, 41))
        rng = random.Random(7)
        cuts = sorted(rng.sample(range(1, len(data)), 25))
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            channel.dataReceived(data[start:end])
        answered = []
        while len(answered) < 40:
            pending = [n for n, d in server.held.items() if not d.called]
            assert 0 < len(pending) <= 4
            server.release(rng.choice(pending))
            answered += [reply["id"] for reply in replies(transport)]
        assert server.dispatched == list(range(1, 41))
        assert sorted(answered) == list(range(1, 41))
        assert server.peak == 4
        assert (channel.serving, channel.held, transport.producerState) == (0, False, "producing")
        assert not transport.disconnecting

    def test_frames_that_keep_arriving_while_paused_wait_too(self, clock):
        # A StringTransport (like the simulator's) delivers whatever is written to it, paused
        # or not: the channel must hold those frames itself.
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=1), server)
        channel.dataReceived(request(1))
        for n in range(2, 6):
            channel.dataReceived(request(n, "echo", value=n))
        assert server.dispatched == [1]
        server.release(1)
        assert server.dispatched == [1, 2, 3, 4, 5]
        assert [reply["id"] for reply in replies(transport)] == [1, 2, 3, 4, 5]

    def test_replies_that_are_ready_at_once_take_no_slot(self, clock):
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=2), server)
        channel.dataReceived(b"".join(request(n, "echo", value=n) for n in range(1, 101)))
        assert len(replies(transport)) == 100
        assert transport.events == [] and channel.serving == 0

    def test_a_failed_request_frees_its_slot(self, clock):
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=1), server)
        channel.dataReceived(request(1) + request(2))
        server.held[1].errback(errors.NotFound("gone"))
        assert server.dispatched == [1, 2]
        assert replies(transport) == [{"id": 1, "error": {"type": "NotFound", "message": "gone"}}]

    def test_a_peer_connection_has_the_peer_limit(self, clock):
        guard = make_guard(clock, max_in_flight=2, max_peer_in_flight=5)
        client_server, peer_server = Server(), Server()
        client, _ = greeted(guard, client_server, role="client")
        peer, _ = greeted(guard, peer_server, role="peer", host="10.0.0.2")
        for channel in (client, peer):
            channel.dataReceived(b"".join(request(n) for n in range(1, 11)))
        assert (client_server.dispatched, peer_server.dispatched) == ([1, 2], [1, 2, 3, 4, 5])
        assert guard.held == 2
        assert guard.status()["held"] == 2

    def test_the_limit_counts_requests_not_connections(self, clock):
        guard = make_guard(clock, max_in_flight=2)
        first, second = Server(), Server()
        a, _ = greeted(guard, first, port=1)
        b, _ = greeted(guard, second, port=2)
        a.dataReceived(request(1) + request(2) + request(3))
        b.dataReceived(request(1))
        assert (first.dispatched, second.dispatched) == ([1, 2], [1])
        assert (a.held, b.held) == (True, False)

    def test_a_reader_that_does_not_read_its_replies_pauses_reading(self, clock):
        # The transport calls pauseProducing when its write buffer fills (the other end
        # reads nothing) and resumeProducing once it has drained.
        server = Server()
        channel, transport = greeted(make_guard(clock), server)
        assert transport.producer is channel and transport.streaming
        channel.pauseProducing()
        channel.dataReceived(request(1, "echo", value=1) + request(2, "echo", value=2))
        assert server.dispatched == [] and transport.producerState == "paused"
        channel.resumeProducing()
        assert server.dispatched == [1, 2]
        assert [reply["id"] for reply in replies(transport)] == [1, 2]
        assert transport.producerState == "producing"

    def test_a_full_write_buffer_and_the_in_flight_limit_both_hold_reading(self, clock):
        server = Server()
        channel, transport = greeted(make_guard(clock, max_in_flight=1), server)
        channel.dataReceived(request(1) + request(2, "echo"))
        channel.pauseProducing()  # write buffer full
        server.release(1)  # a slot is free, but the other end still reads nothing
        assert server.dispatched == [1] and transport.producerState == "paused"
        channel.resumeProducing()
        assert server.dispatched == [1, 2] and transport.producerState == "producing"

    def test_a_write_buffer_that_fills_during_a_reply_stops_the_frames_after_it(self, clock):
        server = Server()
        channel = Channel(server, guard=make_guard(clock))

        class FillingTransport(Transport):
            def write(self, data):
                super().write(data)
                if len(self.value()) > 40 and self.producer is not None:
                    self.producer.pauseProducing()  # as a TCP transport does past its buffer size

        transport = FillingTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"".join(request(n, "echo", value="x" * 10) for n in range(1, 6)))
        first = len(server.dispatched)
        assert 0 < first < 5
        transport.clear()
        channel.resumeProducing()  # drained
        assert server.dispatched == [1, 2, 3, 4, 5][: len(server.dispatched)]
        while len(server.dispatched) < 5:
            transport.clear()
            channel.resumeProducing()
        assert server.dispatched == [1, 2, 3, 4, 5]

    def test_no_limit_on_connections_this_end_made(self):
        # A channel without a guard (a client's, or one to a peer) serves as it always did.
        server = Server()
        channel = Channel(server)
        transport = Transport()
        channel.makeConnection(transport)
        channel.dataReceived(b"".join(request(n) for n in range(1, 501)))
        assert len(server.dispatched) == 500 and transport.events == [] and transport.producer is None

    def test_in_memory_both_ends(self, clock):
        # A client channel sends 10 calls at once; the server serves 3 at a time and TCP
        # (here, the pump) simply carries the rest later.
        server = Server()
        guard = make_guard(clock, max_in_flight=3)
        server_channel, client = Channel(server, guard=guard), Channel()
        connection = connect(server_channel, client)
        hello = client.call("hello", hello_request("client"))
        calls = [client.call("hold") for _ in range(10)]
        connection.pump()
        success_result_of(hello)
        assert server.dispatched == [2, 3, 4]
        for request_id in range(2, 12):
            server.release(request_id, f"r{request_id}")
            connection.pump()
            assert server.in_service() <= 3
        assert [success_result_of(d) for d in calls] == [f"r{n}" for n in range(2, 12)]
        assert server.peak == 3


# -- connections per address and in all ------------------------------------------------------


class TestConnectionCaps:
    def test_connections_past_the_per_address_cap_are_closed_at_once(self, clock):
        guard = make_guard(clock, max_connections_per_address=2)
        admitted = [guarded(guard, Server(), host="10.0.0.1", port=n) for n in (1, 2)]
        with capturedLogs() as events:
            refused, transport = guarded(guard, Server(), host="10.0.0.1", port=3)
        assert transport.disconnecting and transport.producer is None
        assert replies(transport) == [
            {"id": None, "error": {"type": "ProtocolError", "message": "too many connections from 10.0.0.1"}}
        ]
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        assert (warning["address"], warning["limit"], warning["kind"]) == ("10.0.0.1", 2, "per_address")
        # The refused connection is not served, even if the client went on sending.
        refused.dataReceived(request(0, "hello", **hello_request("client")) + request(1, "echo"))
        assert transport.value() == b""
        # Another address is not affected.
        _other, other_transport = guarded(guard, Server(), host="10.0.0.2")
        assert not other_transport.disconnecting
        assert guard.refused == {"per_address": 1, "total": 0}
        # A closed connection makes room again.
        channel, first_transport = admitted[0]
        refused.connectionLost(None)
        channel.connectionLost(None)
        _again, again_transport = guarded(guard, Server(), host="10.0.0.1", port=4)
        assert not again_transport.disconnecting
        assert guard.status()["open"] == 3 and guard.status()["addresses"] == 2

    def test_the_total_cap(self, clock):
        guard = make_guard(clock, max_connections=3)
        for n in range(3):
            guarded(guard, Server(), host=f"10.0.0.{n + 1}")
        with capturedLogs():
            _channel, transport = guarded(guard, Server(), host="10.0.0.9")
        assert transport.disconnecting
        assert replies(transport)[0]["error"]["message"] == "this node has too many connections"
        assert guard.refused == {"per_address": 0, "total": 1}

    def test_a_refused_address_is_logged_once_a_minute(self, clock):
        guard = make_guard(clock, max_connections_per_address=1)
        guarded(guard, Server(), host="10.0.0.1")
        guarded(guard, Server(), host="10.0.0.2")
        with capturedLogs() as events:
            for n in range(5):
                guarded(guard, Server(), host="10.0.0.1", port=n)
                guarded(guard, Server(), host="10.0.0.2", port=n)
                clock.advance(1)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert sorted(e["address"] for e in warnings) == ["10.0.0.1", "10.0.0.2"]
        with capturedLogs() as events:
            clock.advance(WARN_EVERY)
        summaries = sorted((e["address"], e["count"]) for e in events if "count" in e)
        assert summaries == [("10.0.0.1", 4), ("10.0.0.2", 4)]
        with capturedLogs() as events:
            guarded(guard, Server(), host="10.0.0.1", port=99)
        assert [e["address"] for e in events if e["log_level"] == LogLevel.warn] == ["10.0.0.1"]
        assert guard.refused["per_address"] == 11

    def test_unix_socket_connections_share_only_the_total_cap(self, clock):
        guard = make_guard(clock, max_connections_per_address=1, max_connections=3)
        with capturedLogs():
            transports = [guarded(guard, Server(), peer=UNIXAddress(None))[1] for _ in range(4)]
        assert [t.disconnecting for t in transports] == [False, False, False, True]

    def test_under_tls_a_refused_connection_is_aborted_without_a_reply(self, clock):
        guard = make_guard(clock, max_connections=1)
        guarded(guard, Server(), host="10.0.0.1")
        channel = Channel(Server(), guard=guard)
        transport = Transport(host="10.0.0.2")
        directlyProvides(transport, ISSLTransport)
        with capturedLogs():
            channel.makeConnection(transport)
        assert transport.disconnected and transport.value() == b""

    def test_in_memory_a_client_past_the_cap_is_refused_and_tries_again(self, clock):
        # A client whose connection is refused reports the reason and reconnects with
        # backoff; once there is room, it gets in.
        guard = make_guard(clock, max_connections_per_address=1)
        factory = ChannelFactory(Server(), guard=guard)
        blocker, _ = guarded(guard, Server(), host="127.0.0.1")
        endpoint = MemoryEndpoint(factory)
        connection = PersistentConnection(clock, [("127.0.0.1:7400", endpoint)], hello_request("client"))
        connection.start()
        ready = connection.when_connected()
        with capturedLogs() as events:
            pump_all([endpoint], clock, until=defer.Deferred(), limit=60)
        no_result(ready)
        assert guard.refused["per_address"] >= 2
        assert any("too many connections" in str(e.get("error", "")) for e in events)
        blocker.connectionLost(None)
        assert pump_all([endpoint], clock, until=ready, limit=200)
        assert connection.connected
        connection.stop()
        clock.advance(1)


# -- timeouts ----------------------------------------------------------------------------------


class TestTimeouts:
    def test_a_connection_without_hello_is_closed_after_the_handshake_timeout(self, clock):
        guard = make_guard(clock, handshake_timeout=10)
        channel, transport = guarded(guard, Server())
        clock.advance(9)
        assert not transport.disconnecting
        with capturedLogs() as events:
            clock.advance(1)
        assert transport.disconnecting
        assert replies(transport) == [{"id": None, "error": {"type": "ProtocolError", "message": "no hello within 10 s"}}]
        assert guard.closed["handshake"] == 1
        [event] = [e for e in events if e["log_level"] == LogLevel.warn]
        assert event["kind"] == "handshake" and event["peer"] == "10.0.0.1:50000"

    def test_a_hello_in_time_is_enough(self, clock):
        guard = make_guard(clock, handshake_timeout=10)
        channel, transport = guarded(guard, Server())
        clock.advance(9)
        channel.dataReceived(request(0, "hello", **hello_request("client")))
        clock.advance(60)
        assert not transport.disconnecting and guard.closed["handshake"] == 0

    def test_an_idle_connection_is_closed_quietly(self, clock):
        guard = make_guard(clock, idle_timeout=300)
        channel, transport = greeted(guard, Server())
        clock.advance(200)
        channel.dataReceived(request(1, "echo"))  # anything received restarts the count
        transport.clear()
        clock.advance(299)
        assert not transport.disconnecting
        with capturedLogs() as events:
            clock.advance(1)
        assert transport.disconnecting and transport.value() == b""
        assert guard.closed == {"idle": 1, "handshake": 0, "frame_timeout": 0}
        assert [e["log_level"] for e in events] == [LogLevel.info]

    def test_heartbeats_keep_a_connection_up(self, clock):
        guard = make_guard(clock, idle_timeout=5)
        channel, transport = greeted(guard, Server(), role="peer")
        for n in range(1, 100):
            clock.advance(1)
            channel.dataReceived(request(n, "echo"))
        assert not transport.disconnecting

    def test_a_connection_waiting_for_a_reply_is_not_idle(self, clock):
        guard = make_guard(clock, idle_timeout=300)
        server = Server()
        channel, transport = greeted(guard, server)
        channel.dataReceived(request(1))
        clock.advance(1000)
        assert not transport.disconnecting
        server.release(1)
        clock.advance(299)
        assert not transport.disconnecting  # idle time counts from the reply
        with capturedLogs():
            clock.advance(1)
        assert transport.disconnecting

    def test_a_half_sent_frame_is_closed_after_the_frame_timeout(self, clock):
        guard = make_guard(clock, frame_timeout=30)
        channel, transport = greeted(guard, Server())
        data = request(1, "echo", value="x" * 100)
        channel.dataReceived(data[:20])
        for _ in range(29):
            clock.advance(1)
            channel.dataReceived(b"")  # nothing new: still the same half frame
        assert not transport.disconnecting
        with capturedLogs() as events:
            clock.advance(1)
        assert transport.disconnecting
        assert replies(transport) == [
            {"id": None, "error": {"type": "ProtocolError", "message": "a frame not completed within 30 s"}}
        ]
        assert guard.closed["frame_timeout"] == 1
        assert [e["kind"] for e in events if e["log_level"] == LogLevel.warn] == ["frame_timeout"]

    def test_a_slow_frame_within_the_timeout_is_fine(self, clock):
        guard = make_guard(clock, frame_timeout=30)
        channel, transport = greeted(guard, Server())
        data = request(1, "echo", value="x" * 5)
        assert len(data) == 29
        for index in range(len(data)):  # one byte a second: the last one 28 s after the first
            channel.dataReceived(data[index : index + 1])
            clock.advance(1)
        assert replies(transport) == [{"id": 1, "ok": "x" * 5}]
        clock.advance(100)
        assert not transport.disconnecting

    def test_a_steady_stream_of_frames_cut_anywhere_never_times_out(self, clock):
        # Every chunk ends in the middle of a frame, for longer than the frame timeout; but
        # each frame completes quickly, so none is late.
        guard = make_guard(clock, frame_timeout=5)
        channel, transport = greeted(guard, Server())
        data = b"".join(request(n, "echo") for n in range(1, 201))
        step = 7
        for offset in range(0, len(data), step):
            channel.dataReceived(data[offset : offset + step])
            clock.advance(0.1)
        assert clock.seconds() > 5 * 5
        assert len(replies(transport)) == 200 and not transport.disconnecting

    def test_frames_held_by_back_pressure_are_not_late(self, clock):
        guard = make_guard(clock, frame_timeout=5, max_in_flight=1)
        server = Server()
        channel, transport = greeted(guard, server)
        half = request(3, "echo")[:5]
        channel.dataReceived(request(1) + request(2, "echo") + half)
        clock.advance(60)
        assert not transport.disconnecting
        server.release(1)
        # Reading resumed: from now on the half frame is the sender's to finish.
        clock.advance(4)
        assert not transport.disconnecting
        with capturedLogs():
            clock.advance(1)
        assert transport.disconnecting

    def test_a_closed_connection_that_does_not_go_away_is_aborted(self, clock):
        guard = make_guard(clock, idle_timeout=10)
        channel, transport = greeted(guard, Server())
        with capturedLogs():
            clock.advance(10)
        assert transport.disconnecting and not transport.disconnected
        clock.advance(CLOSE_GRACE)
        assert transport.disconnected  # aborted
        channel.connectionLost(None)
        assert guard.status()["open"] == 0

    def test_one_timer_for_every_connection(self, clock):
        guard = make_guard(clock)
        for n in range(50):
            guarded(guard, Server(), port=n, host=f"10.0.{n}.1")
        assert len(clock.getDelayedCalls()) == 1
        assert clock.getDelayedCalls()[0].getTime() == SWEEP_INTERVAL
        guard.stop()
        assert clock.getDelayedCalls() == []


# -- frame size, both ways ---------------------------------------------------------------------


class TestFrameSize:
    def test_a_call_over_the_other_ends_limit_fails_without_being_sent(self):
        channel = Channel()
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.peer_max_frame = 100
        error = failure_result_of(channel.call("insert", {"doc": {"x": "y" * 200}}), errors.InvalidRequest).value
        assert "over the 100-byte frame limit" in error.message
        assert transport.value() == b"" and channel.in_flight() == 0 and not transport.disconnecting
        channel.call("ping")
        assert transport.value()  # smaller calls still go

    def test_the_client_learns_the_limit_from_the_hello_reply(self, clock):
        server = Server(max_frame=500)
        endpoint = MemoryEndpoint(ChannelFactory(server))
        connection = PersistentConnection(clock, [("127.0.0.1:7400", endpoint)], hello_request("client"))
        connection.start()
        ready = connection.when_connected()
        assert pump_all([endpoint], clock, until=ready)
        channel = success_result_of(ready)
        assert channel.peer_max_frame == 500
        failure_result_of(connection.call("echo", {"value": "v" * 600}, timeout=5), errors.InvalidRequest)
        d = connection.call("echo", {"value": "v" * 100}, timeout=5)
        pump_all([endpoint])
        assert success_result_of(d) == "v" * 100
        connection.stop()
        clock.advance(1)

    def test_a_frame_too_long_for_the_client_closes_its_connection(self):
        channel = Channel(max_frame=64)
        transport = StringTransport()
        channel.makeConnection(transport)
        call = channel.call("get")
        transport.clear()
        with capturedLogs():
            channel.dataReceived(struct.pack(">I", 65) + b"x" * 65)
        assert replies(transport) == [{"id": None, "error": {"type": "ProtocolError", "message": "frame too long (65 bytes)"}}]
        assert transport.disconnecting
        channel.connectionLost(None)
        failure_result_of(call, errors.ConnectionLost)

    def test_a_frame_too_long_for_the_node_closes_the_connection(self, clock):
        guard = make_guard(clock)
        channel, transport = greeted(guard, Server(), max_frame=64)
        with capturedLogs():
            channel.dataReceived(struct.pack(">I", 65))
        assert replies(transport)[0]["error"]["message"] == "frame too long (65 bytes)"
        assert transport.disconnecting and transport.producer is None  # free to close

    def test_a_reply_over_the_nodes_own_limit_is_an_error_reply(self, clock, logged_errors):
        channel, transport = greeted(make_guard(clock), Server(), max_frame=200)
        channel.dataReceived(request(1, "big", size=500) + request(2, "big", size=10))
        assert replies(transport) == [
            {"id": 1, "error": {"type": "NodeDBError", "message": "internal error"}},
            {"id": 2, "ok": "x" * 10},
        ]
        assert not transport.disconnecting
        [event] = logged_errors.flush()
        assert event["length"] > 500 and event["limit"] == 200


# -- the service, the status, the metrics -----------------------------------------------------------


class _Endpoint:
    def listen(self, factory):
        self.factory = factory
        return defer.succeed(None)


def test_the_peer_transport_guards_what_it_accepts(clock):
    endpoint = _Endpoint()
    transport = PeerTransport(clock, endpoint, None, lambda: {}, limits=Limits(max_in_flight=7), heartbeat_interval=0)
    transport.listen()
    channel = endpoint.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    assert channel.guard is transport.guard and transport.guard.limits.max_in_flight == 7
    transport.startService()
    assert transport.guard._sweeper.running
    success_result_of(transport.stopService())
    assert not transport.guard._sweeper.running
    assert PeerTransport(clock, endpoint, None, lambda: {}).guard.limits == Limits()


def test_status_and_metrics_count_what_the_limits_did(clock):
    guard = make_guard(clock, max_connections_per_address=1, idle_timeout=10, max_in_flight=1)
    server = Server()
    channel, _ = greeted(guard, server)
    peer, _ = greeted(guard, Server(), role="peer", host="10.0.0.2")
    with capturedLogs():
        guarded(guard, Server())
        guarded(guard, Server(), host="10.0.0.3")  # never says hello
    channel.dataReceived(request(1) + request(2))
    status = guard.status()
    assert (status["open"], status["clients"], status["peers"], status["handshaking"]) == (3, 1, 1, 1)
    assert (status["held"], status["held_total"]) == (1, 1)
    assert status["refused"] == {"per_address": 1, "total": 0}
    assert status["limits"]["max_in_flight"] == 1
    with capturedLogs():
        clock.advance(10)
    assert guard.status()["closed"] == {"idle": 1, "handshake": 1, "frame_timeout": 0}
    metrics = NodeMetrics()
    metrics.watch_connections(guard)
    text = metrics.render().decode()
    assert 'nodedb_connections{role="client"} 1.0' in text
    assert 'nodedb_connections_refused_total{limit="per_address"} 1.0' in text
    assert 'nodedb_connections_closed_total{reason="idle"} 1.0' in text
    assert 'nodedb_connections_closed_total{reason="handshake"} 1.0' in text
    assert "nodedb_connections_held_total 1.0" in text


class _FakeResource:
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft, hard, refuse=False):
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which):
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = limits


class TestOpenFiles:
    def test_the_soft_limit_is_raised_to_what_the_connections_need(self):
        fake = _FakeResource(1024, 1_048_576)
        assert raise_open_files_limit(Limits(), fake) == 4096 + SPARE_FILES
        assert fake.limits == (4096 + SPARE_FILES, 1_048_576)

    def test_a_high_enough_limit_is_left_alone(self):
        fake = _FakeResource(100_000, 100_000)
        assert raise_open_files_limit(Limits(), fake) == 100_000

    def test_a_low_hard_limit_is_a_warning(self):
        fake = _FakeResource(1024, 2048)
        with capturedLogs() as events:
            assert raise_open_files_limit(Limits(), fake) == 2048
        [event] = events
        assert event["log_level"] == LogLevel.warn and event["soft"] == 2048

    def test_a_refused_raise_is_a_warning(self):
        with capturedLogs() as events:
            assert raise_open_files_limit(Limits(), _FakeResource(1024, 1_000_000, refuse=True)) == 1024
        assert [e["log_level"] for e in events] == [LogLevel.warn]


# -- the settings --------------------------------------------------------------------------------

LIMIT_FIELDS = [f.name for f in dataclasses.fields(Limits)]


def test_limits_config_and_options_share_their_defaults(tmp_path):
    node_config = NodeConfig(data_dir=str(tmp_path))
    assert Limits.from_config(node_config) == Limits()
    options = tap.Options()
    options.parseOptions(["--data", str(tmp_path)])
    assert Limits.from_config(options.config) == Limits()
    assert Limits() == Limits(256, 4096, 64, 4096, 300.0, 10.0, 30.0)


def test_every_limit_is_an_option(tmp_path):
    options = tap.Options()
    options.parseOptions(
        ["--data", str(tmp_path)]
        + ["--max-in-flight", "10", "--max-peer-in-flight", "20", "--max-connections-per-address", "3"]
        + ["--max-connections", "40", "--idle-timeout", "50", "--handshake-timeout", "6", "--frame-timeout", "7"]
    )
    assert Limits.from_config(options.config) == Limits(10, 20, 3, 40, 50.0, 6.0, 7.0)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"max_in_flight": 0}, "--max-in-flight must be an integer between 1 and 1000000"),
        ({"max_in_flight": 1.5}, "--max-in-flight"),
        ({"max_peer_in_flight": 0}, "--max-peer-in-flight"),
        ({"max_in_flight": 500, "max_peer_in_flight": 400}, "--max-peer-in-flight must be at least --max-in-flight"),
        ({"max_connections_per_address": 0}, "--max-connections-per-address"),
        ({"max_connections": 0}, "--max-connections must"),
        ({"max_connections": 1_000_001}, "--max-connections must"),
        ({"idle_timeout": 0.5}, "--idle-timeout must be between 1 and 86400"),
        ({"idle_timeout": 86401}, "--idle-timeout"),
        ({"idle_timeout": 20, "heartbeat_interval": 10}, "--idle-timeout must be at least 3 times --heartbeat-interval"),
        ({"handshake_timeout": 0}, "--handshake-timeout must be between 1 and 300"),
        ({"handshake_timeout": 301}, "--handshake-timeout"),
        ({"frame_timeout": 0.9}, "--frame-timeout must be between 1 and 86400"),
    ],
)
def test_limits_that_cannot_work_are_refused(tmp_path, fields, match):
    with pytest.raises(ConfigError, match=match):
        NodeConfig(data_dir=str(tmp_path), **fields)


def test_the_bounds_are_inclusive(tmp_path):
    NodeConfig(
        data_dir=str(tmp_path),
        max_in_flight=1,
        max_peer_in_flight=1,
        max_connections_per_address=1,
        max_connections=1,
        idle_timeout=3,
        heartbeat_interval=1,
        handshake_timeout=1,
        frame_timeout=1,
    )
    NodeConfig(
        data_dir=str(tmp_path),
        max_in_flight=1_000_000,
        max_peer_in_flight=1_000_000,
        max_connections_per_address=1_000_000,
        max_connections=1_000_000,
        idle_timeout=86400,
        handshake_timeout=300,
        frame_timeout=86400,
    )


@pytest.mark.parametrize("option", ["--max-in-flight", "--max-peer-in-flight", "--max-connections-per-address", "--max-connections"])
def test_a_count_option_must_be_a_positive_integer(tmp_path, option):
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(["--data", str(tmp_path), option, "0"])


def test_a_bad_timeout_stops_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["--data", str(tmp_path), "--frame-timeout", "0"])
    assert str(info.value) == "twistd nodedb: --frame-timeout must be between 1 and 86400 seconds"


def test_the_defaults_are_documented():
    import pathlib

    running = (pathlib.Path(__file__).parents[2] / "docs" / "running.md").read_text()
    for option, default in [
        ("--max-in-flight N", "256"),
        ("--max-peer-in-flight N", "4096"),
        ("--max-connections-per-address N", "64"),
        ("--max-connections N", "4096"),
        ("--idle-timeout SECONDS", "300"),
        ("--handshake-timeout SECONDS", "10"),
        ("--frame-timeout SECONDS", "30"),
    ]:
        assert f"| `{option}` | {default} |" in running, option
    assert config.NodeConfig.__dataclass_fields__.keys() >= set(LIMIT_FIELDS)
