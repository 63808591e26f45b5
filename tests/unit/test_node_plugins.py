"""A node built from a NodeConfig uses the transport and id allocator its settings name
(one reactor, a memory store)."""

import shutil
import tempfile

import pytest
import pytest_twisted
from twisted.internet import reactor

from nodedb import client as nodedb_client
from nodedb.config import ConfigError, NodeConfig
from nodedb.ids import IdAllocator, IdLayout, TimeOrderedIdAllocator, time_floor
from nodedb.node import make_node
from nodedb.storage.memory import MemoryStorage
from nodedb.wire.transport import PeerTransport, socket_path


@pytest.fixture
def socket_dir():
    # pytest's tmp_path can be longer than a Unix socket path may be (107 bytes).
    directory = tempfile.mkdtemp(prefix="nodedb-")
    yield directory
    shutil.rmtree(directory)


async def started(config):
    node = make_node(config, reactor, storage=MemoryStorage(), cpu_rating=1.0)
    node.startService()
    try:
        assert await node.when_ready() is node
    except BaseException:
        await node.stopService()
        raise
    return node


@pytest_twisted.ensureDeferred
async def test_a_node_on_the_unix_transport_with_time_ordered_ids(tmp_path, socket_dir):
    config = NodeConfig(
        data_dir=str(tmp_path), admin=None, partitions=4, transport="unix", socket_dir=socket_dir, id_allocator="time"
    )
    node = await started(config)
    client = None
    try:
        assert isinstance(node.transport, PeerTransport) and isinstance(node.ids, TimeOrderedIdAllocator)
        address = node.address()
        assert address == "127.0.0.1:7400"  # the --listen address names the host; it is not listened on
        assert node.port.getHost().name.decode() == socket_path(socket_dir, address)
        client = await nodedb_client.connect(reactor, [f"unix:{socket_path(socket_dir, address)}"], timeout=5, learn_hosts=False)
        before = reactor.seconds()
        element = await client.insert("user", {"n": 1})
        assert await client.get("user", element) == ({"n": 1}, 1)
        assert IdLayout().sequence_of(element) >= time_floor(1, before)
    finally:
        if client is not None:
            await client.close()
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_the_defaults_are_tcp_and_sequential_ids(tmp_path):
    node = await started(NodeConfig(data_dir=str(tmp_path), admin=None, listen="tcp:0:interface=127.0.0.1"))
    try:
        assert type(node.ids) is IdAllocator
        assert node.port.getHost().type == "TCP"
    finally:
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_the_unix_transport_without_a_socket_directory_stops_the_start(tmp_path):
    config = NodeConfig(data_dir=str(tmp_path), admin=None, transport="unix")
    node = make_node(config, reactor, storage=MemoryStorage(), cpu_rating=1.0)
    node.startService()
    with pytest.raises(ConfigError, match="--transport unix needs --socket-dir"):
        await node.when_ready()
    await node.stopService()
