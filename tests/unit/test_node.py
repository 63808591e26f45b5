"""Node assembly with a MemoryStorage on a loopback port (port 0, one reactor), and the admin
site served in memory."""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from nodedb import client as nodedb_client
from nodedb.config import NodeConfig
from nodedb.errors import Unavailable
from nodedb.ids import IdLayout
from nodedb.node import make_node
from nodedb.status import partition_ranges
from nodedb.storage.lmdb import LMDBStorage
from nodedb.storage.memory import MemoryStorage

LAYOUT = IdLayout()


def config_for(tmp_path, **fields):
    fields.setdefault("listen", "tcp:0:interface=127.0.0.1")
    fields.setdefault("admin", None)
    return NodeConfig(data_dir=str(tmp_path), **fields)


async def started(config, storage):
    node = make_node(config, global_reactor, storage=storage, cpu_rating=1.0)  # no start-up CPU measurement
    node.startService()
    try:
        assert await node.when_ready() is node
    except BaseException:
        await node.stopService()
        raise
    return node


def test_partition_ranges():
    assert partition_ranges([]) == []
    assert partition_ranges([0, 1, 2, 5, 7, 8]) == [[0, 2], [5, 5], [7, 8]]


@pytest_twisted.ensureDeferred
async def test_a_node_serves_clients_and_reports_its_status(tmp_path):
    storage = MemoryStorage()
    node = await started(config_for(tmp_path, partitions=8), storage)
    client = None
    try:
        address = node.address()
        assert address == f"127.0.0.1:{node.port.getHost().port}"
        assert node.port.getHost().port != 0
        client = await nodedb_client.connect(global_reactor, [address], timeout=5)
        assert client.server["host"] == node.identity.host_id
        assert client.server["cluster"] == node.identity.cluster_id
        elements = [await client.insert("user", {"n": n}) for n in range(3)]
        assert [LAYOUT.partition_of(e) for e in elements] == [0, 0, 0]
        assert await client.get("user", elements[1]) == ({"n": 1}, 2)

        status = await client.status()
        assert status == json.loads(json.dumps(node.status()))
        host = status["host"]
        assert status["hosts"][0] == host
        assert host["id"] == node.identity.host_id and len(host["id"]) == 12
        assert host["address"] == address
        assert host["status"] == "write"
        assert host["partitions"] == [[0, 7]]
        assert host["partition_count"] == 8
        assert host["last_commit_ids"] == {"0": 3}
        assert type(host["free_bytes"]) is int and host["free_bytes"] > 0
        assert host["size_bytes"] == storage.stats()["size_bytes"] > 0
        assert host["unreliability"] == 0.0
        assert status["cluster"] == {"id": node.identity.cluster_id, "partitions": 8, "replicas": 3}

        metrics = node.metrics.render().decode()
        assert 'nodedb_requests_total{op="insert",outcome="ok"} 3.0' in metrics
        assert 'nodedb_requests_total{op="get",outcome="ok"} 1.0' in metrics
    finally:
        if client is not None:
            await client.close()
        await node.stopService()
    assert not storage._open


@pytest_twisted.ensureDeferred
async def test_a_restarted_node_keeps_its_identity_and_ids_keep_growing(tmp_path):
    first = MemoryStorage()
    node = await started(config_for(tmp_path, partitions=2), first)
    try:
        identity = node.identity
        before = [await node.query.insert("t", {"n": n}) for n in range(5)]
        await node.query.delete("t", before[-1])
    finally:
        await node.stopService()

    again = MemoryStorage(store=first.store)
    node = await started(config_for(tmp_path, partitions=2), again)
    try:
        assert node.identity.host_id == identity.host_id
        assert node.identity.cluster_id == identity.cluster_id
        assert node.identity.generation == 2
        after = [await node.query.insert("t", {"n": n}) for n in range(3)]
        assert min(after) > max(before), "ids are never reused, not even the deleted one's"
        assert node.status()["host"]["last_commit_ids"] == {"0": 9}
    finally:
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_partitions_are_read_only_when_bootstrapping(tmp_path):
    storage = MemoryStorage()
    node = await started(config_for(tmp_path, partitions=4), storage)
    await node.stopService()
    node = await started(config_for(tmp_path, partitions=9), MemoryStorage(store=storage.store))
    try:
        assert node.status()["host"]["partitions"] == [[0, 3]]
    finally:
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_when_ready_fails_when_the_store_cannot_open(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    node = make_node(config_for(tmp_path), global_reactor, storage=LMDBStorage(str(tmp_path / "file"), global_reactor))
    node.startService()
    with pytest.raises(Unavailable, match="cannot open storage"):
        await node.when_ready()
    # Asked again later, it says the same.
    with pytest.raises(Unavailable):
        await node.when_ready()
    await node.stopService()


@pytest_twisted.ensureDeferred
async def test_when_ready_fails_when_the_port_is_taken(tmp_path):
    node = await started(config_for(tmp_path), MemoryStorage())
    try:
        taken = node.port.getHost().port
        config = config_for(tmp_path, listen=f"tcp:{taken}:interface=127.0.0.1")
        other = make_node(config, global_reactor, storage=MemoryStorage(), cpu_rating=1.0)
        other.startService()
        with pytest.raises(Exception, match=str(taken)):
            await other.when_ready()
        await other.stopService()
    finally:
        await node.stopService()


@pytest_twisted.ensureDeferred
async def test_the_storage_plugin_named_in_the_config_is_used(tmp_path):
    node = make_node(config_for(tmp_path, storage="memory"), global_reactor)
    assert isinstance(node.storage, MemoryStorage)
    node = make_node(config_for(tmp_path / "l", map_size=1 << 24), global_reactor)
    assert isinstance(node.storage, LMDBStorage)
    assert node.storage.path == str(tmp_path / "l" / "lmdb") and node.storage.map_size == 1 << 24


# -- the admin site ---------------------------------------------------------------------------


def http_get(site, path):
    """Serve ``GET path`` on *site* over an in-memory connection; :return: (status, headers, body)."""
    site.reactor = Clock()  # the HTTP channel's timeouts must not touch the global reactor
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    channel.connectionLost(None)
    head, _sep, body = transport.value().partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(status_line.split()[1]), headers, body


def _unchunk(data):
    out = b""
    while data:
        size_line, _sep, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


@pytest_twisted.ensureDeferred
async def test_the_admin_site(tmp_path):
    from nodedb.admin import make_admin_site

    node = await started(config_for(tmp_path, partitions=4), MemoryStorage())
    try:
        await node.query.insert("user", {"a": 1})
        client = await nodedb_client.connect(global_reactor, [node.address()], timeout=5)
        await client.get("user", LAYOUT.make(0, 1))
        await client.close()
        site = make_admin_site(node)

        code, headers, body = http_get(site, b"/status")
        assert code == 200 and headers["content-type"] == "application/json"
        status = json.loads(body)
        assert status["host"]["id"] == node.identity.host_id
        assert [host["id"] for host in status["hosts"]] == [node.identity.host_id]
        assert status["hosts"][0]["status"] == "write" and status["hosts"][0]["partitions"] == [[0, 3]]

        code, headers, body = http_get(site, b"/metrics")
        assert code == 200 and headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert 'nodedb_requests_total{op="get",outcome="ok"} 1.0' in text
        assert "nodedb_database_bytes" in text and "nodedb_free_bytes" in text

        code, headers, body = http_get(site, b"/health")
        assert code == 200 and headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health == status["health"]
        assert health["healthy"] and health["problems"] == [] and health["fault_tolerance"] == 0
        assert health["leader"] == node.identity.host_id and health["voters"] == {"have": 1, "want": 1}

        code, headers, body = http_get(site, b"/")
        assert code == 200 and headers["content-type"].startswith("text/html")
        page = body.decode()
        assert node.identity.host_id in page and node.identity.cluster_id in page
        assert node.address() in page
        assert "healthy: can lose 0 hosts; 4/4 partitions fully replicated" in page

        code, _headers, _body = http_get(site, b"/nothing")
        assert code == 404
    finally:
        await node.stopService()


class _UnhealthyNode:
    """What the admin site needs of a node that sees a host down and a partition without
    a primary."""

    metrics = None

    def status(self):
        host = {
            "id": "aaa", "address": "127.0.0.1:1", "status": "write", "partition_count": 1, "unreliability": 0.0,
            "available": True, "distance_ms": None, "coordinate": {"x": 0, "y": 0, "height": 0}, "free_bytes": 1,
        }
        dead = {**host, "id": "bbb", "address": "127.0.0.1:2", "available": False, "unreliability": 1.0}
        health = {"healthy": False, "problems": ["partition 1 has no live primary"], "fault_tolerance": 0}
        return {"host": host, "hosts": [host, dead], "cluster": {"id": "c", "partitions": 2, "replicas": 3}, "health": health}


def test_the_admin_site_shows_an_unhealthy_cluster_and_a_dead_host():
    from nodedb.admin import make_admin_site

    site = make_admin_site(_UnhealthyNode())
    code, _headers, body = http_get(site, b"/health")
    assert code == 503
    assert json.loads(body)["problems"] == ["partition 1 has no live primary"]
    _code, _headers, body = http_get(site, b"/")
    page = body.decode()
    assert "unhealthy: partition 1 has no live primary" in page
    assert '<tr class="down"><td>bbb</td><td>127.0.0.1:2</td><td>write (down)</td>' in page
    assert "<tr><td>aaa</td><td>127.0.0.1:1</td><td>write</td>" in page


@pytest_twisted.ensureDeferred
async def test_the_admin_site_escapes_what_it_shows(tmp_path):
    from nodedb.admin import make_admin_site

    node = await started(config_for(tmp_path, partitions=1, advertise="evil<script>:7400"), MemoryStorage())
    try:
        _code, _headers, body = http_get(make_admin_site(node), b"/")
        assert b"evil<script>" not in body and b"evil&lt;script&gt;" in body
    finally:
        await node.stopService()


@pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_the_node_serves_the_admin_site_on_its_endpoint(tmp_path):
    from twisted.internet.protocol import Factory
    from twisted.web.client import Agent, readBody

    probe = global_reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port = probe.getHost().port
    await probe.stopListening()
    node = await started(config_for(tmp_path, admin=f"tcp:{port}:interface=127.0.0.1"), MemoryStorage())
    try:
        response = await Agent(global_reactor).request(b"GET", f"http://127.0.0.1:{port}/status".encode())
        assert response.code == 200
        assert json.loads(await readBody(response))["host"]["id"] == node.identity.host_id
    finally:
        await node.stopService()
