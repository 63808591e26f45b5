"""The frame decoder under arbitrary and mutated byte streams, split at arbitrary points.

A :class:`Channel` over a ``StringTransport`` is fed the stream in pieces. Whatever comes, it
never raises out of ``dataReceived`` and logs no error; it dispatches exactly the requests
of the well-formed frames before the first bad one, and nothing from a malformed frame; it
writes only well-formed replies: one per request it served, then at most one ``ProtocolError``
with id null, after which it has closed the connection (docs/protocol.md, "Bad input").

Two oracles say what each frame should do. For streams built by :mod:`fuzzkit`'s own encoder,
the verdict comes from each item's structure and the documented decoding rules, independent
of :mod:`nodedb.codec`. For streams mutated at the byte level (bits flipped, cut short,
length prefixes changed, bytes inserted or dropped), only the channel's own decoder can say
which frames are well formed, so there the property is about what the channel does with its
verdict.
"""

import struct
from datetime import timezone

import cbor2
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

import fuzzkit
from fuzzkit import counted, frame, fuzz_settings
from nodedb import errors
from nodedb import codec
from nodedb.wire.channel import Channel
from nodedb.wire.limits import ConnectionGuard

MAX_FRAME = 4096


class Recorder:
    """Dispatch of a test channel: ``echo`` answers its ``value``; every other op is unknown."""

    def __init__(self):
        self.requests = []

    def __call__(self, request, channel):
        self.requests.append(request)
        if request["op"] == "echo":
            return request.get("value")
        raise errors.InvalidRequest(f"unknown op {request['op']!r}")


def expected_reply(request):
    if request["op"] == "echo":
        return {"id": request["id"], "ok": request.get("value")}
    return {"id": request["id"], "error": {"type": "InvalidRequest", "message": f"unknown op {request['op']!r}"}}


def simulate(stream, classify, max_frame=MAX_FRAME):
    """What a channel should do with *stream*: ``(requests dispatched, replies, closed)``.

    :param classify: ``classify(payload)`` -> the decoded message, or None if the frame is
        not acceptable.
    """
    requests, replies, offset = [], [], 0
    while len(stream) - offset >= 4:
        (length,) = struct.unpack(">I", stream[offset : offset + 4])
        if length > max_frame:
            replies.append({"id": None, "error": {"type": "ProtocolError"}})
            return requests, replies, True
        if len(stream) - offset - 4 < length:
            break
        message = classify(stream[offset + 4 : offset + 4 + length])
        offset += 4 + length
        if type(message) is not dict or ("op" in message and type(message.get("id")) is not int):
            replies.append({"id": None, "error": {"type": "ProtocolError"}})
            return requests, replies, True
        if "op" in message:
            requests.append(message)
            replies.append(expected_reply(message))
        # A map without "op" is a reply; this end awaits none, so it is dropped.
    return requests, replies, False


def by_codec(payload):
    try:
        return codec.decode(payload)
    except errors.ProtocolError:
        return None


def written(transport):
    """The frames the channel wrote, decoded leniently (a reply may echo any value)."""
    data, out = transport.value(), []
    while data:
        assert len(data) >= 4, f"a partial length prefix was written: {data!r}"
        (length,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + length, "a partial frame was written"
        out.append(cbor2.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return out


def pieces(stream, cuts):
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


def feed(stream, cuts, logged_errors, guarded=False):
    """Feed *stream* in pieces to a new channel (*guarded*: held to a node's connection
    limits, as the channels of a node's listening port are); :return: (requests dispatched,
    replies, closed). Nothing may raise and no error may be logged."""
    recorder = Recorder()
    channel = Channel(recorder, max_frame=MAX_FRAME, guard=ConnectionGuard(Clock()) if guarded else None)
    transport = StringTransport()
    channel.makeConnection(transport)
    buffered = None
    with fuzzkit.no_errors_logged(logged_errors):
        for piece in pieces(stream, cuts):
            channel.dataReceived(piece)
            if transport.disconnecting and buffered is None:
                buffered = len(channel.recvd)
        replies = written(transport)
        closed = transport.disconnecting
        if closed:
            # Once closed (by a violation), what still arrives is neither read nor kept.
            assert len(channel.recvd) <= buffered, "a closed channel keeps buffering what arrives"
        channel.connectionLost(Failure(ConnectionDone()))
    return recorder.requests, replies, closed


def check(outcome, expected):
    requests, replies, closed = outcome
    want_requests, want_replies, want_closed = expected
    assert closed == want_closed
    assert len(requests) == len(want_requests) and all(fuzzkit.same(a, b) for a, b in zip(requests, want_requests)), (
        requests,
        want_requests,
    )
    assert len(replies) == len(want_replies), (replies, want_replies)
    for reply, want in zip(replies, want_replies):
        assert type(reply) is dict and reply.keys() in ({"id", "ok"}, {"id", "error"}), reply
        assert fuzzkit.same(reply["id"], want["id"])
        if "ok" in want:
            assert "ok" in reply and fuzzkit.same(reply["ok"], want["ok"])
        else:
            error = reply.get("error")
            assert type(error) is dict and error.keys() == {"type", "message"} and type(error["message"]) is str
            assert error["type"] == want["error"]["type"]
            if "message" in want["error"]:
                assert error["message"] == want["error"]["message"]


cuts = st.lists(st.integers(0, 1 << 16), max_size=8)
guarded = st.booleans()


@fuzz_settings(200)
@given(
    frames=st.lists(fuzzkit.request_items(), min_size=1, max_size=4),
    tail=st.binary(max_size=6),
    cuts=cuts,
    guarded=guarded,
)
@counted
def test_frames_of_any_cbor(frames, tail, cuts, guarded, logged_errors):
    """Frames holding CBOR of every shape: the channel serves exactly the acceptable request
    maps up to the first frame the protocol refuses, and closes there."""
    verdicts = {item.data: item.value if fuzzkit.acceptable(item) else None for item in frames}

    def classify(payload):
        # The tail may hold a short frame of its own: only the codec can judge that one.
        return verdicts[payload] if payload in verdicts else by_codec(payload)

    stream = b"".join(frame(item.data) for item in frames) + tail
    check(feed(stream, cuts, logged_errors, guarded), simulate(stream, classify))


@fuzz_settings(200)
@given(stream=st.binary(max_size=300), cuts=cuts, guarded=guarded)
@counted
def test_arbitrary_bytes(stream, cuts, guarded, logged_errors):
    check(feed(stream, cuts, logged_errors, guarded), simulate(stream, by_codec))


@fuzz_settings(200)
@given(
    prefix=st.lists(st.deferred(lambda: valid_requests()).map(codec.encode), max_size=2),
    length=st.integers(MAX_FRAME + 1, 2**32 - 1) | st.just(MAX_FRAME + 1),
    after=st.binary(max_size=64),
    cuts=cuts,
    guarded=guarded,
)
@counted
def test_a_length_prefix_past_the_limit(prefix, length, after, cuts, guarded, logged_errors):
    """A frame announced longer than the limit: refused once its 4 length bytes are in, with
    one ProtocolError; the frames before it are served, nothing after it is read."""
    stream = b"".join(frame(data) for data in prefix) + struct.pack(">I", length) + after
    outcome = feed(stream, cuts, logged_errors, guarded)
    check(outcome, simulate(stream, by_codec))
    assert outcome[1][-1]["error"]["message"] == f"frame too long ({length} bytes)"


# -- valid frames, mutated ------------------------------------------------------------------

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.text(max_size=6) | st.binary(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=10,
)


@st.composite
def valid_requests(draw):
    request_id = draw(st.integers(0, 2**64 - 1))
    kind = draw(st.sampled_from(["hello", "echo", "get", "insert", "transaction", "reply"]))
    if kind == "hello":
        return {"id": request_id, "op": "hello", "version": 1, "role": draw(st.sampled_from(["client", "peer"]))}
    if kind == "echo":
        return {"id": request_id, "op": "echo", "value": draw(documents)}
    if kind == "get":
        return {"id": request_id, "op": "get", "type": "user", "key": draw(st.integers(0, 2**64 - 1))}
    if kind == "insert":
        doc = draw(st.dictionaries(st.text(max_size=5), documents, max_size=4))
        return {"id": request_id, "op": "insert", "type": "user", "doc": doc}
    if kind == "transaction":
        delete = st.fixed_dictionaries({"op": st.just("delete"), "type": st.just("t"), "key": st.integers(0, 99)})
        ops = draw(st.lists(delete, min_size=1, max_size=3))
        return {"id": request_id, "op": "transaction", "ops": ops}
    return {"id": request_id, "ok": draw(documents)}


@fuzz_settings(200)
@given(data=st.data(), requests=st.lists(valid_requests(), min_size=1, max_size=4), cuts=cuts, guarded=guarded)
@counted
def test_mutated_valid_frames(data, requests, cuts, guarded, logged_errors):
    frames = [codec.encode(r) for r in requests]
    size = sum(4 + len(f) for f in frames)
    stream = frames
    for mutation in data.draw(st.lists(fuzzkit.byte_mutations(size), min_size=1, max_size=3), label="mutations"):
        stream = fuzzkit.mutate_stream(stream if isinstance(stream, list) else [stream], mutation)
    check(feed(stream, cuts, logged_errors, guarded), simulate(stream, by_codec))


@fuzz_settings(200)
@given(
    value=st.one_of(
        st.integers(2**64, 2**200).map(lambda n: {"id": 1, "op": "echo", "value": n}),
        st.integers(2**64, 2**200).map(lambda n: {"id": n, "op": "echo"}),
        st.integers(-(2**200), -(2**64) - 1).map(lambda n: {"id": 1, "op": "echo", "value": [n]}),
        st.sets(st.integers(0, 9), max_size=3).map(lambda s: {"id": 1, "op": "echo", "value": s}),
        st.datetimes(timezones=st.just(timezone.utc)).map(lambda t: {"id": 1, "op": "echo", "value": t}),
        st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: {"id": 1, "op": "echo", "value": d}),
        st.tuples(st.integers(0, 2**64 - 1), documents).map(lambda t: {"id": 1, "op": "echo", "value": cbor2.CBORTag(*t)}),
        documents.map(lambda d: [{"id": 1, "op": "echo", "value": d}]),
        st.integers(-(2**64), 2**64 - 1),
    ),
    cuts=cuts,
    guarded=guarded,
)
@counted
def test_values_cbor2_encodes_but_the_protocol_refuses(value, cuts, guarded, logged_errors):
    """What a careless peer's ``cbor2.dumps`` writes and the decoding rules refuse: bignums,
    sets, dates, decimals, any tag; a top level that is not a map. One ProtocolError, closed,
    nothing dispatched."""
    stream = frame(cbor2.dumps(value))
    requests, replies, closed = feed(stream, cuts, logged_errors, guarded)
    assert requests == [] and closed
    assert [r["error"]["type"] for r in replies] == ["ProtocolError"] and replies[0]["id"] is None
