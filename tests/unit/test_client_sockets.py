"""The client over real sockets in one reactor: docs/client.md's example against a node on a
UNIX socket, ``connect`` through an endpoint description, and a client that fails over to a
host it only learned of."""

import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from nodedb import errors
from nodedb.client import connect
from nodedb.config import NodeConfig
from nodedb.node import make_node
from nodedb.storage.memory import MemoryStorage
from nodedb.wire.channel import PROTOCOL_VERSION
from nodedb.wire.connection import ChannelFactory

ROOT = Path(__file__).resolve().parents[2]


def example_program():
    """docs/client.md's example, as a module that was not run as a script."""
    page = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
    [block] = re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
    namespace = {"__name__": "client_example"}
    exec(compile(block, "docs/client.md", "exec"), namespace)
    return namespace


@pytest.fixture
def socket_path(tmp_path_factory):
    # A UNIX socket path must be short (about 100 bytes); pytest's own paths can be longer.
    return str(tmp_path_factory.mktemp("s", numbered=True) / "n.sock")


@pytest_twisted.async_yield_fixture
async def unix_node(tmp_path, socket_path):
    config = NodeConfig(data_dir=str(tmp_path), listen=f"unix:{socket_path}", advertise="127.0.0.1:7400", admin=None)
    node = make_node(config, global_reactor, storage=MemoryStorage(), cpu_rating=1.0)  # no start-up CPU measurement
    node.startService()
    try:
        assert await node.when_ready() is node
        yield node
    finally:
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_the_documented_example_runs_against_a_node_on_a_unix_socket(unix_node, socket_path, capsys):
    main = example_program()["main"]
    doc, version = await main(global_reactor, f"unix:{socket_path}")
    assert doc == {"name": "ada"} and version >= 1
    assert re.fullmatch(r"user \d+ is \{'name': 'ada'\} at version \d+\n", capsys.readouterr().out)


@pytest_twisted.ensureDeferred
async def test_connect_takes_a_unix_endpoint_description(unix_node, socket_path):
    client = await connect(global_reactor, f"unix:{socket_path}", timeout=5)
    try:
        assert client.server["host"] == unix_node.identity.host_id
        element = await client.insert("user", {"n": 1})
        assert await client.get("user", element) == ({"n": 1}, 1)
    finally:
        await client.close()


class ListingServer:
    """A stand-in node on a loopback port: it answers the handshake, pings, and ``status``
    with the hosts in *listed*."""

    def __init__(self, name, listed):
        self.name = name
        self.listed = listed
        self.channels = []
        factory = ChannelFactory(self.dispatch)
        factory.on_connected = self.channels.append
        self.port = global_reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.address = f"127.0.0.1:{self.port.getHost().port}"

    def dispatch(self, request, channel):
        op = request["op"]
        if op == "hello":
            return {"version": PROTOCOL_VERSION, "host": self.name}
        if op == "status":
            return {"host": {"id": self.name}, "hosts": self.listed}
        if op == "ping":
            return "pong"
        raise errors.InvalidRequest(f"unknown op {op!r}")

    async def go_away(self):
        await self.port.stopListening()
        for channel in self.channels:
            channel.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_connect_fails_over_to_a_host_it_learned_of():
    listed = []
    first, second = ListingServer("first", listed), ListingServer("second", listed)
    listed += [{"id": "first", "address": first.address}, {"id": "second", "address": second.address}]
    client = await connect(global_reactor, [first.address], timeout=5)
    try:
        assert client.server["host"] == "first"
        # The client asked for the hosts as it connected, before this request: the replies
        # come in order, so it knows of the second host by now.
        assert (await client.status())["host"]["id"] == "first"
        await first.go_away()
        status = await client.status()
        assert status["host"]["id"] == "second"
    finally:
        await client.close()
        await second.go_away()
