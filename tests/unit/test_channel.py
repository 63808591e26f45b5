"""The framed request/reply Channel, over StringTransport and in-memory connections."""

import random
import struct

import pytest
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.errors import InvalidRequest, NodeDBError, NotFound, ProtocolError, Timeout, Unavailable
from nodedb.testing import failure_result_of, no_result, success_result_of, written_frames
from nodedb.testing.network import connect
from nodedb import codec
from nodedb.wire.channel import FLUSH_EVERY, PROTOCOL_VERSION, Channel, hello_request


def frame(message):
    data = message if isinstance(message, bytes) else codec.encode(message)
    return struct.pack(">I", len(data)) + data


replies = written_frames  # every frame the node wrote, decoded


class Recorder:
    """A dispatch function that records requests and answers from a table of handlers."""

    def __init__(self, **handlers):
        self.requests = []
        self.handlers = handlers

    def __call__(self, request, channel):
        self.requests.append(request)
        handler = self.handlers.get(request["op"])
        if handler is None:
            raise InvalidRequest(f"unknown op {request['op']!r}")
        return handler(request)


def serving(dispatch, max_frame=1024):
    channel = Channel(dispatch, max_frame=max_frame)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def echo():
    return Recorder(echo=lambda request: request.get("value"))


class SocketTransport(FileDescriptor):
    """A socket transport whose socket takes everything it is given, into *sent*."""

    def __init__(self):
        super().__init__(MemoryReactor())
        self.connected = 1
        self.sent = []

    def writeSomeData(self, data):
        self.sent.append(bytes(data))
        return len(data)

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 9)

    getHost = getPeer

    def sent_frames(self):
        data, frames = b"".join(self.sent), []
        while data:
            (length,) = struct.unpack(">I", data[:4])
            frames.append(codec.decode(data[4 : 4 + length]))
            data = data[4 + length :]
        return frames


class TestServing:
    def test_replies_carry_the_request_id(self):
        channel, transport = serving(echo())
        channel.dataReceived(frame({"id": 7, "op": "echo", "value": [1, "x"]}) + frame({"id": 8, "op": "echo"}))
        assert replies(transport) == [{"id": 7, "ok": [1, "x"]}, {"id": 8, "ok": None}]

    def test_a_burst_of_replies_reaches_the_socket_while_it_is_served(self):
        channel, transport = Channel(echo()), SocketTransport()
        channel.makeConnection(transport)
        count = 2 * FLUSH_EVERY + 3
        channel.dataReceived(b"".join(frame({"id": i, "op": "echo", "value": i}) for i in range(count)))
        assert transport.sent_frames() == [{"id": i, "ok": i} for i in range(2 * FLUSH_EVERY)]
        transport.doWrite()  # the reactor's turn sends the rest
        assert transport.sent_frames() == [{"id": i, "ok": i} for i in range(count)]

    def test_a_closing_socket_is_left_to_the_reactor(self):
        waiting = [defer.Deferred() for _ in range(FLUSH_EVERY)]
        channel, transport = Channel(Recorder(wait=lambda request: waiting[request["value"]])), SocketTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"".join(frame({"id": i, "op": "wait", "value": i}) for i in range(FLUSH_EVERY)))
        transport.disconnecting = True  # as loseConnection leaves it, the buffer still to send
        for d in waiting:
            d.callback("done")
        assert transport.sent == []

    def test_frames_may_be_split_at_any_byte(self):
        data = frame({"id": 1, "op": "echo", "value": "a" * 40}) + frame({"id": 2, "op": "echo", "value": {"k": b"v"}})
        expected = [{"id": 1, "ok": "a" * 40}, {"id": 2, "ok": {"k": b"v"}}]
        for cut in range(len(data) + 1):
            channel, transport = serving(echo())
            channel.dataReceived(data[:cut])
            channel.dataReceived(data[cut:])
            assert replies(transport) == expected, cut
        channel, transport = serving(echo())
        for index in range(len(data)):
            channel.dataReceived(data[index : index + 1])
        assert replies(transport) == expected
        assert not transport.disconnecting

    def test_a_node_error_is_replied_and_the_connection_stays_up(self):
        def missing(request):
            raise NotFound("user 5 not found")

        channel, transport = serving(Recorder(get=missing, echo=lambda r: "still here"))
        channel.dataReceived(frame({"id": 1, "op": "get"}) + frame({"id": 2, "op": "nope"}) + frame({"id": 3, "op": "echo"}))
        assert replies(transport) == [
            {"id": 1, "error": {"type": "NotFound", "message": "user 5 not found"}},
            {"id": 2, "error": {"type": "InvalidRequest", "message": "unknown op 'nope'"}},
            {"id": 3, "ok": "still here"},
        ]
        assert not transport.disconnecting

    def test_an_unexpected_exception_is_an_internal_error_and_logged(self, logged_errors):
        def broken(request):
            raise ZeroDivisionError("secret detail")

        channel, transport = serving(Recorder(bad=broken, echo=lambda r: 1))
        channel.dataReceived(frame({"id": 4, "op": "bad"}) + frame({"id": 5, "op": "echo"}))
        assert replies(transport) == [{"id": 4, "error": {"type": "NodeDBError", "message": "internal error"}}, {"id": 5, "ok": 1}]
        [event] = logged_errors.flush(ZeroDivisionError)
        assert event["op"] == "bad"
        assert not transport.disconnecting

    def test_deferred_results_are_replied_when_they_fire(self, logged_errors):
        pending = {}

        def later(request):
            pending[request["id"]] = defer.Deferred()
            return pending[request["id"]]

        channel, transport = serving(Recorder(later=later))
        channel.dataReceived(b"".join(frame({"id": n, "op": "later"}) for n in (1, 2, 3, 4)))
        assert transport.value() == b""
        pending[3].callback({"third": True})
        pending[1].errback(Conflict("changed"))
        pending[4].errback(KeyError("bug"))
        pending[2].callback(None)
        assert replies(transport) == [
            {"id": 3, "ok": {"third": True}},
            {"id": 1, "error": {"type": "Conflict", "message": "changed"}},
            {"id": 4, "error": {"type": "NodeDBError", "message": "internal error"}},
            {"id": 2, "ok": None},
        ]
        assert len(logged_errors.flush(KeyError)) == 1

    def test_no_reply_is_written_after_the_connection_is_lost(self):
        pending = defer.Deferred()
        channel, transport = serving(Recorder(later=lambda r: pending))
        channel.dataReceived(frame({"id": 1, "op": "later"}))
        channel.connectionLost(Failure(ConnectionError("gone")))
        pending.callback("late")
        assert transport.value() == b""

    def test_a_channel_without_dispatch_serves_nothing(self):
        channel, transport = serving(None)
        channel.dataReceived(frame({"id": 1, "op": "get"}))
        assert replies(transport) == [{"id": 1, "error": {"type": "InvalidRequest", "message": "this end serves no requests"}}]
        assert not transport.disconnecting

    def test_a_protocol_error_from_dispatch_closes_the_connection(self):
        def refuse(request):
            raise ProtocolError("the first request on a connection must be hello")

        channel, transport = serving(Recorder(get=refuse))
        with capturedLogs() as events:
            channel.dataReceived(frame({"id": 1, "op": "get"}) + frame({"id": 2, "op": "get"}))
        assert replies(transport)[0] == {"id": 1, "error": {"type": "ProtocolError", "message": "the first request on a connection must be hello"}}
        assert transport.disconnecting
        assert any("closing" in e["log_format"] for e in events)


class TestBadInput:
    """Input that breaks the protocol: one error reply if possible, a log line, and close."""

    def check_closed_with(self, data, message, max_frame=1024):
        channel, transport = serving(echo(), max_frame=max_frame)
        with capturedLogs() as events:
            channel.dataReceived(data)
        [reply] = replies(transport)
        assert reply["id"] is None
        assert reply["error"]["type"] == "ProtocolError"
        assert message in reply["error"]["message"]
        assert transport.disconnecting
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "closing" in e["log_format"]]
        assert len(warnings) == 1
        return warnings[0]

    def test_a_frame_too_long(self):
        event = self.check_closed_with(struct.pack(">I", 1025) + b"x" * 10, "frame too long (1025 bytes)")
        assert (event["length"], event["limit"]) == (1025, 1024)

    def test_a_frame_at_the_limit_is_fine(self):
        channel, transport = serving(echo(), max_frame=64)
        request = {"id": 1, "op": "echo", "value": ""}
        request["value"] = "x" * (64 - len(codec.encode(request)) - 1)
        assert len(codec.encode(request)) == 64
        channel.dataReceived(frame(request))
        assert replies(transport)[0]["id"] == 1

    @pytest.mark.parametrize("garbage", [b"\xff\xfe\xfd", b"", b"\x1c", codec.encode({"a": 1}) + b"\x00"])
    def test_undecodable_bytes(self, garbage):
        self.check_closed_with(frame(garbage), "undecodable CBOR")

    def test_a_tagged_item(self):
        self.check_closed_with(frame(bytes.fromhex("a2 62 6964 01 62 6f70 c1 00")), "undecodable CBOR")

    @pytest.mark.parametrize("message", [[1, 2], "text", 5, None])
    def test_a_message_that_is_not_a_map(self, message):
        self.check_closed_with(frame(message), "a message must be a CBOR map")

    @pytest.mark.parametrize("request_id", [None, "1", 1.0, [1], True])
    def test_a_request_without_an_integer_id(self, request_id):
        message = {"op": "echo"} if request_id is None else {"op": "echo", "id": request_id}
        self.check_closed_with(frame(message), "a request needs an integer id")

    @pytest.mark.parametrize("bad", [frame(b"\xff"), frame([1]), frame({"op": "echo"})], ids=["garbage", "not-a-map", "no-id"])
    def test_nothing_after_the_bad_frame_is_served(self, bad):
        dispatch = echo()
        channel, transport = serving(dispatch)
        with capturedLogs():
            channel.dataReceived(bad + frame({"id": 2, "op": "echo"}))
        assert [reply["id"] for reply in replies(transport)] == [None]
        assert dispatch.requests == []

    @pytest.mark.parametrize("bad", [struct.pack(">I", 1025), frame(b"\xff")], ids=["too-long", "garbage"])
    def test_what_arrives_after_the_close_is_neither_read_nor_kept(self, bad):
        # Found by tests/fuzz: after a too-long length prefix the channel kept every later
        # byte (and answered each later piece with another error); a TLS connection goes on
        # delivering until its close completes.
        dispatch = echo()
        channel, transport = serving(dispatch)
        with capturedLogs() as events:
            channel.dataReceived(bad)
            for _ in range(3):
                channel.dataReceived(frame({"id": 2, "op": "echo"}) + b"\x00\x00")
        assert [reply["id"] for reply in replies(transport)] == [None]
        assert dispatch.requests == [] and channel.recvd == b""
        assert len([e for e in events if "closing" in e.get("log_format", "")]) == 1


# -- calls from this end --------------------------------------------------------------------


@pytest.fixture
def pair():
    """A client channel connected in memory to a server channel with an echo and a slow op."""
    server_dispatch = Recorder(echo=lambda r: r.get("value"), fail=lambda r: _raise(NotFound("no such thing")))
    server, client = Channel(server_dispatch), Channel()
    connection = connect(server, client)
    return server, client, connection, server_dispatch


def _raise(error):
    raise error


class TestCalling:
    def test_a_call_gets_its_reply(self, pair):
        server, client, connection, dispatch = pair
        d = client.call("echo", {"value": {"x": [1, 2]}})
        no_result(d)
        assert client.in_flight() == 1
        connection.pump()
        assert success_result_of(d) == {"x": [1, 2]}
        assert client.in_flight() == 0
        assert dispatch.requests == [{"id": 1, "op": "echo", "value": {"x": [1, 2]}}]

    def test_a_remote_error_fails_the_call_with_the_same_class(self, pair):
        _server, client, connection, _dispatch = pair
        d = client.call("fail")
        connection.pump()
        error = failure_result_of(d, NotFound).value
        assert error.message == "no such thing"

    def test_many_calls_in_flight_with_replies_in_any_order(self):
        pending = {}

        def hold(request):
            pending[request["n"]] = defer.Deferred()
            return pending[request["n"]]

        server, client = Channel(Recorder(hold=hold)), Channel()
        connection = connect(server, client)
        calls = [client.call("hold", {"n": n}) for n in range(50)]
        connection.pump()
        assert sorted(pending) == list(range(50))
        order = list(range(50))
        random.Random(4).shuffle(order)
        for index, n in enumerate(order):
            pending[n].callback(n * 10)
            if index % 7 == 0:
                connection.pump()
        connection.pump()
        assert [success_result_of(d) for d in calls] == [n * 10 for n in range(50)]
        assert client.in_flight() == 0

    def test_both_ends_may_call(self):
        a = Channel(Recorder(who=lambda r: "a"))
        b = Channel(Recorder(who=lambda r: "b"))
        connection = connect(a, b)
        from_b, from_a = b.call("who"), a.call("who")
        connection.pump()
        assert (success_result_of(from_b), success_result_of(from_a)) == ("a", "b")

    def test_a_call_when_not_connected_is_unavailable(self):
        failure_result_of(Channel().call("echo"), Unavailable)

    def test_losing_the_connection_fails_every_call_in_flight(self, pair):
        _server, client, connection, _dispatch = pair
        lost = []
        client.on_lost = lost.append
        calls = [client.call("echo"), client.call("echo")]
        connection.close()
        for d in calls:
            failure_result_of(d, Unavailable)
        assert len(lost) == 1 and not client.connected_
        failure_result_of(client.call("echo"), Unavailable)

    def test_expire_fails_late_calls_with_timeout(self):
        server, client = Channel(Recorder(hold=lambda r: defer.Deferred())), Channel()
        connection = connect(server, client)
        early = client.call("hold", deadline=10.0)
        late = client.call("hold", deadline=20.0)
        forever = client.call("hold")
        connection.pump()
        client.expire(10.0)
        no_result(early)
        client.expire(10.5)
        assert "in time" in str(failure_result_of(early, Timeout).value)
        no_result(late)
        client.expire(1e9)
        failure_result_of(late, Timeout)
        no_result(forever)
        assert client.in_flight() == 1

    def test_a_reply_after_the_timeout_is_ignored(self):
        held = defer.Deferred()
        server, client = Channel(Recorder(hold=lambda r: held)), Channel()
        connection = connect(server, client)
        d = client.call("hold", deadline=1.0)
        connection.pump()
        client.expire(2.0)
        failure_result_of(d, Timeout)
        held.callback("late")
        with capturedLogs() as events:
            connection.pump()
        assert [e["log_level"] for e in events] == [LogLevel.debug]
        assert not connection.closed

    def test_an_error_reply_to_no_request_is_logged_as_a_warning(self):
        client = Channel()
        transport = StringTransport()
        client.makeConnection(transport)
        with capturedLogs() as events:
            client.dataReceived(frame({"id": None, "error": {"type": "ProtocolError", "message": "frame too long"}}))
        [event] = events
        assert event["log_level"] == LogLevel.warn and "frame too long" in event["error"]

    def test_a_malformed_error_reply_is_a_plain_node_error(self):
        client = Channel()
        transport = StringTransport()
        client.makeConnection(transport)
        d = client.call("x")
        client.dataReceived(frame({"id": 1, "error": "oops"}))
        error = failure_result_of(d, NodeDBError).value
        assert type(error) is NodeDBError and error.message == "malformed error reply"

    def test_the_peer_name_comes_from_the_transport(self, pair):
        server, client, _connection, _dispatch = pair
        assert client.peer == "127.0.0.1:7400"
        assert server.peer == "127.0.0.1:50000"


def test_hello_request():
    assert hello_request("client", client="x") == {"version": PROTOCOL_VERSION, "role": "client", "client": "x"}


class TestWireErrors:
    @pytest.mark.parametrize("cls", [NodeDBError, NotFound, errors.Conflict, Timeout, Unavailable, InvalidRequest, ProtocolError])
    def test_round_trip(self, cls):
        error = errors.from_wire(errors.to_wire(cls("why")))
        assert type(error) is cls and error.message == "why"

    def test_other_exceptions_are_hidden(self):
        assert errors.to_wire(ValueError("/etc/secret")) == {"type": "NodeDBError", "message": "internal error"}

    @pytest.mark.parametrize("value", [None, "x", {"type": "Nope", "message": "m"}, {"type": "NotFound", "message": 5}])
    def test_unknown_or_malformed_errors(self, value):
        error = errors.from_wire(value)
        assert isinstance(error, NodeDBError)
        assert type(error) is NodeDBError or error.message == ""

    def test_str_falls_back_to_the_wire_name(self):
        assert str(NotFound()) == "NotFound"
        assert str(NotFound("x")) == "x"


Conflict = errors.Conflict
