"""Garbage on the request port: whatever arrives, the node closes that one connection with a
warning in its log (never a traceback), stays up, serves the next client, and loses nothing."""

import random
import re
import socket
import struct

import cbor2
import pytest

from .harness import TIMEOUT, WaitTimeout, WireClient, accept_queue, wait_for

pytestmark = pytest.mark.system

MAX_FRAME = 4 * 1024 * 1024  # the node's default --max-frame-size


@pytest.fixture(scope="module")
def node(module_processes):
    return module_processes.start_node("target")


@pytest.fixture(scope="module")
def stored(node):
    """What the node holds before any garbage: ``{id: (doc, version)}`` of type ``keep``,
    some of them updated so that versions differ."""
    with node.client() as client:
        ids = client.insert_many("keep", [{"n": n, "text": "é" * n, "blob": bytes(range(n))} for n in range(40)])
        client.pipeline([("update", {"type": "keep", "key": i, "doc": {"n": -1}}) for i in ids[::5]])
        return {element_id: (doc, version) for element_id, doc, version in client.scan_all("keep")}


@pytest.fixture
def healthy_after(node, stored):
    """Check, after the test, that the node is alive, answers a new client, holds exactly the
    same data, and logged no traceback or error during the test."""
    mark = node.log_mark()
    yield mark
    assert node.running, f"the node died\n{node.describe()}"
    with node.client() as client:
        assert client.call("ping") == "pong"
        assert {i: (d, v) for i, d, v in client.scan_all("keep")} == stored
        some = sorted(stored)[7]
        assert client.get("keep", some) == stored[some]
    assert node.problems(since=mark) == [], node.describe()


def expect_warning_for(node, client_address, mark):
    """The log has a warning about the connection from *client_address*."""
    return node.wait_for_log(rf"#warn\].*\b{re.escape(client_address)}\b", since=mark)


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def _random(seed, size):
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] |= 0x10  # a length prefix of 256 MiB or more, as almost any garbage has
    return bytes(data)


# Each case: the bytes to send, whether they need a hello first, and the error type the node
# answers with before closing (None: it may just close).
CASES = {
    "random-garbage-1": (_random(1, 4096), False, None),
    "random-garbage-2": (_random(2, 65536), False, None),
    "random-garbage-3": (_random(3, 17), False, None),
    "http-request": (b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", False, "ProtocolError"),
    "tls-client-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), False, "ProtocolError"),
    "length-just-over-limit": (struct.pack(">I", MAX_FRAME + 1) + b"\xa0" * 64, False, "ProtocolError"),
    "length-2**32-1": (b"\xff\xff\xff\xff" + b"x" * 100, False, "ProtocolError"),
    "not-cbor": (frame(b"\x1f\xff\xfe"), False, "ProtocolError"),
    "cbor-cut-short": (frame(b"\xa2\x62op\x65hel"), False, "ProtocolError"),
    "cbor-trailing-bytes": (frame(cbor2.dumps({"id": 1, "op": "hello", "version": 1, "role": "client"}) + b"\xff\x00"), False, "ProtocolError"),
    "cbor-array": (frame(cbor2.dumps([1, 2, 3])), False, "ProtocolError"),
    "cbor-text": (frame(cbor2.dumps("hello")), False, "ProtocolError"),
    "cbor-integer": (frame(cbor2.dumps(7)), False, "ProtocolError"),
    "cbor-tag": (frame(cbor2.dumps(cbor2.CBORTag(1, 0))), False, "ProtocolError"),
    "cbor-integer-map-key": (frame(cbor2.dumps({1: 2})), False, "ProtocolError"),
    "cbor-deep-nesting": (frame(b"\x81" * 10_000 + b"\x00"), False, "ProtocolError"),
    "request-before-hello": (frame(cbor2.dumps({"id": 1, "op": "get", "type": "keep", "key": 1})), False, "ProtocolError"),
    "insert-before-hello": (frame(cbor2.dumps({"id": 1, "op": "insert", "type": "keep", "doc": {"n": 1000}})), False, "ProtocolError"),
    "hello-wrong-version": (frame(cbor2.dumps({"id": 1, "op": "hello", "version": 99, "role": "client"})), False, "ProtocolError"),
    "request-without-id": (frame(cbor2.dumps({"op": "hello", "version": 1, "role": "client"})), False, "ProtocolError"),
    "garbage-after-hello": (_random(4, 1000), True, None),
    "non-map-after-hello": (frame(cbor2.dumps([{"id": 2, "op": "ping"}])), True, "ProtocolError"),
    "too-long-after-hello": (struct.pack(">I", MAX_FRAME + 1), True, "ProtocolError"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bytes_close_only_that_connection(node, healthy_after, case):
    data, after_hello, error_type = CASES[case]
    bystander = node.client()  # a well-behaved client connected throughout
    with WireClient(node.address, hello=after_hello) as bad:
        bad.send_raw(data)
        replies = bad.wait_closed()
        expect_warning_for(node, bad.local_address, healthy_after)
    if error_type is not None:
        assert [reply["error"]["type"] for reply in replies] == [error_type], replies
    for reply in replies:
        assert set(reply) == {"id", "error"}, replies
    with bystander:
        assert bystander.call("ping") == "pong"


@pytest.mark.parametrize(
    "case, data",
    [
        ("half-a-length-prefix", b"\x00\x00"),
        ("length-then-nothing", struct.pack(">I", 100)),
        ("frame-cut-in-the-middle", frame(cbor2.dumps({"id": 1, "op": "hello", "version": 1, "role": "client"}))[:-5]),
    ],
)
def test_truncated_frame_then_close(node, healthy_after, case, data):
    with WireClient(node.address, hello=False) as bad:
        address = bad.local_address
        bad.send_raw(data)
    expect_warning_for(node, address, healthy_after)


def test_truncated_frame_after_hello_then_reset(node, healthy_after):
    bad = WireClient(node.address)
    address = bad.local_address
    bad.send_raw(frame(cbor2.dumps({"id": 9, "op": "insert", "type": "keep", "doc": {"n": 1}}))[:10])
    bad.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    bad.close()
    expect_warning_for(node, address, healthy_after)


def test_thousands_of_connections_opened_and_dropped(node, healthy_after):
    baseline = node.open_fds()

    def settled():
        return node.open_fds() <= baseline + 2

    hello = frame(cbor2.dumps({"id": 1, "op": "hello", "version": 1, "role": "client"}))
    ping = frame(cbor2.dumps({"id": 2, "op": "ping"}))
    # Batches smaller than the listen backlog (50), each accepted by the node before it is
    # dropped: a full accept queue drops SYNs, and a retried SYN costs a second.
    total, batch = 3000, 40
    for start in range(0, total, batch):
        wait_for(settled, what="the node to close the previous batch", interval=0.005)
        sockets = [socket.create_connection((node.host, node.port), timeout=TIMEOUT) for _ in range(batch)]
        wait_for(lambda: accept_queue(node.host, node.port) == 0, what="the node to accept a batch", interval=0.005)
        for index, s in enumerate(sockets):
            kind = (start + index) % 5
            if kind == 1:  # reset instead of a clean close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif kind == 2:  # a hello and a request, then gone without reading the replies
                s.sendall(hello + ping)
            elif kind == 3:  # a single byte of a length prefix
                s.sendall(b"\x00")
            elif kind == 4:  # a hello, then reset
                s.sendall(hello)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    # The node notices every close and keeps no descriptor for a closed connection.
    try:
        wait_for(settled, what="the node to close the dropped connections")
    except WaitTimeout:
        raise AssertionError(f"the node holds {node.open_fds()} descriptors, {baseline} before") from None
    with node.client() as client:
        assert client.call("ping") == "pong"
