"""The peer transport contract run against the transports nodedb ships, built by their
plugins as a node builds them, and what only the Unix one promises."""

import os
import shutil
import socket
import stat
import tempfile
from itertools import count

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError

from nodedb.config import ConfigError, NodeConfig
from nodedb.interfaces import IPeerTransportPlugin
from nodedb.plugins import find_plugin
from nodedb.testing.transport_contract import PATIENCE, PeerTransportContract
from nodedb.wire.transport import SOCKET_MODE, PeerTransport, socket_path

_ports = count(17400)


def from_plugin(name, hello, on_heartbeat, heartbeat_interval, heartbeat_op, **settings):
    options = NodeConfig(data_dir="/nonexistent", transport=name, heartbeat_interval=heartbeat_interval, **settings)
    return find_plugin(IPeerTransportPlugin, name).make_transport(options, reactor, hello, on_heartbeat, heartbeat_op)


class TestTCPTransport(PeerTransportContract):
    def make_transport(self, hello, on_heartbeat, heartbeat_interval, heartbeat_op):
        transport = from_plugin(
            "tcp", hello, on_heartbeat, heartbeat_interval, heartbeat_op, listen="tcp:0:interface=127.0.0.1"
        )
        assert isinstance(transport, PeerTransport)
        return transport


class TestUnixTransport(PeerTransportContract):
    """Each transport listens at a socket named after an address of its own."""

    @pytest.fixture(autouse=True)
    def socket_dir(self):
        # pytest's tmp_path can be longer than a Unix socket path may be (107 bytes).
        self.socket_dir = tempfile.mkdtemp(prefix="nodedb-")
        self.addresses = {}
        self.next_address = None
        yield self.socket_dir
        shutil.rmtree(self.socket_dir)

    def make_transport(self, hello, on_heartbeat, heartbeat_interval, heartbeat_op):
        address, self.next_address = self.next_address or self.unused_address(), None
        transport = from_plugin(
            "unix", hello, on_heartbeat, heartbeat_interval, heartbeat_op, socket_dir=self.socket_dir, advertise=address
        )
        self.addresses[transport] = address
        return transport

    def address_of(self, transport, port):
        assert port.getHost().name.decode() == socket_path(self.socket_dir, self.addresses[transport])
        return self.addresses[transport]

    def unused_address(self):
        return f"127.0.0.1:{next(_ports)}"

    @pytest_twisted.ensureDeferred
    async def test_the_socket_is_named_after_the_address_and_only_the_group_may_connect(self, hosts):
        a = await self.start("a")
        path = os.path.join(self.socket_dir, a.address.replace(":", "_") + ".sock")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == SOCKET_MODE
        await a.parent.stopService()
        assert not os.path.exists(path), "the socket is removed when the transport stops"

    @pytest_twisted.ensureDeferred
    async def test_a_socket_left_by_a_dead_process_is_taken_over(self, hosts):
        address = self.unused_address()
        path = socket_path(self.socket_dir, address)
        # A process that died left its socket, and a lock file naming it (a pid that is
        # not running), as Twisted's FilesystemLock writes it.
        with socket.socket(socket.AF_UNIX) as left:
            left.bind(path)
        os.symlink("999999999", path + ".lock")
        self.next_address = address
        a, b = await self.start("a"), await self.start("b")
        assert a.address == address
        assert await b.transport.call(a.address, "echo", {"n": 1}, PATIENCE) == {"n": 1}

    @pytest_twisted.ensureDeferred
    async def test_a_socket_held_by_a_running_transport_is_refused(self, hosts):
        a = await self.start("a")
        self.next_address = a.address
        with pytest.raises(CannotListenError):
            await self.start("a-again")

    def test_it_needs_a_socket_directory(self):
        with pytest.raises(ConfigError, match="--transport unix needs --socket-dir"):
            from_plugin("unix", dict, None, 1.0, "ping")

    def test_it_takes_no_tls(self):
        options = NodeConfig(data_dir="/nonexistent", transport="unix", socket_dir=self.socket_dir)
        options.tls = "/etc/nodedb/tls"  # as if checked: NodeConfig would read the files
        with pytest.raises(ConfigError, match="--transport unix takes no --tls"):
            find_plugin(IPeerTransportPlugin, "unix").make_transport(options, reactor, dict, None, "ping")
