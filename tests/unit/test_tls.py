"""TLS contexts over in-memory connections: mutual verification against the cluster CA and
the dialled address, refusal of foreign CAs, missing client certificates and expired ones,
and the check that a peer's certificate names the address it advertises."""

import datetime
import os

import pytest
from twisted.internet import task
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from nodedb import errors
from nodedb.config import ConfigError, NodeConfig
from nodedb.security import ca
from nodedb.security.tls import TLSContext, TLSError, check_peer_identity
from nodedb.testing import Recorder

NOW = datetime.datetime.now(datetime.timezone.utc)


class Recording(Factory):
    protocol = Recorder

    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One cluster CA with two hosts and a client, and a foreign CA with a host."""
    root = tmp_path_factory.mktemp("pki")
    cluster, foreign = str(root / "cluster"), str(root / "foreign")
    ca.init_ca(cluster)
    ca.init_ca(foreign)
    ca.issue_host(cluster, "127.0.0.2")
    ca.issue_host(cluster, "127.0.0.3")
    ca.issue_host(cluster, "db.example", ips=["127.0.0.4"])
    ca.issue_client(cluster, "app")
    ca.issue_client(cluster, "old", days=1, now=NOW - datetime.timedelta(days=10))
    ca.issue_host(foreign, "127.0.0.2")
    return {
        "a": os.path.join(cluster, "hosts", "127.0.0.2"),
        "b": os.path.join(cluster, "hosts", "127.0.0.3"),
        "named": os.path.join(cluster, "hosts", "db.example"),
        "app": os.path.join(cluster, "clients", "app"),
        "old": os.path.join(cluster, "clients", "old"),
        "rogue": os.path.join(foreign, "hosts", "127.0.0.2"),
    }


def handshake(server_options, client_options):
    """Connect a TLS client and server in memory and send ``ping`` from the client.

    :return: the (server, client) TLS protocols, with ``received``: what each end's
        application got, and ``failed``: whether its connection was lost."""
    clock = task.Clock()  # TLS buffers small writes until the end of a reactor turn
    server_side, client_side = Recording(), Recording()
    server_factory = TLSMemoryBIOFactory(server_options, False, server_side, clock)
    client_factory = TLSMemoryBIOFactory(client_options, True, client_side, clock)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io, client_io = iosim.FakeTransport(server, False), iosim.FakeTransport(client, True)
    pump = iosim.connect(server, server_io, client, client_io, greet=False, clock=clock)
    client.write(b"ping")
    for _ in range(20):
        clock.advance(0)
        pump.flush()
    server.received, client.received = server_side.built[0].received, client_side.built[0].received
    server.failed, client.failed = server_side.built[0].lost is not None, client_side.built[0].lost is not None
    return server, client


def test_hosts_of_one_ca_verify_each_other_both_ways(pki):
    a, b = TLSContext(pki["a"]), TLSContext(pki["b"])
    server, client = handshake(a.server_options(), b.client_options("127.0.0.2"))
    assert server.received == b"ping"
    check_peer_identity(server, "127.0.0.3:7400")  # b's certificate names b's address
    with pytest.raises(errors.ProtocolError, match="does not name 127.0.0.2"):
        check_peer_identity(server, "127.0.0.2:7401")  # b claiming to be a


def test_a_host_named_by_dns_is_checked_by_name_and_ip(pki):
    named, b = TLSContext(pki["named"]), TLSContext(pki["b"])
    server, _client = handshake(b.server_options(), named.client_options("127.0.0.3"))
    check_peer_identity(server, "db.example:7400")
    check_peer_identity(server, "127.0.0.4:7400")
    with pytest.raises(errors.ProtocolError):
        check_peer_identity(server, "other.example:7400")


def test_a_server_whose_certificate_names_another_address_is_refused(pki):
    a, b = TLSContext(pki["a"]), TLSContext(pki["b"])
    server, client = handshake(a.server_options(), b.client_options("127.0.0.9"))
    assert server.received == b""
    assert client.failed


def test_a_foreign_ca_is_refused_by_either_end(pki):
    a, rogue = TLSContext(pki["a"]), TLSContext(pki["rogue"])
    server, _client = handshake(a.server_options(), rogue.client_options("127.0.0.2"))
    assert server.received == b""
    server, _client = handshake(rogue.server_options(), a.client_options("127.0.0.2"))
    assert server.received == b""


def test_a_client_without_a_certificate_is_refused_unless_certificates_are_optional(pki):
    from twisted.internet import ssl

    a = TLSContext(pki["a"])
    anonymous = ssl.optionsForClientTLS("127.0.0.2", trustRoot=a.ca)
    server, _client = handshake(a.server_options(), anonymous)
    assert server.received == b""
    server, _client = handshake(a.server_options(require_client_cert=False), anonymous)
    assert server.received == b"ping"


def test_a_client_certificate_serves_a_client(pki):
    a, app = TLSContext(pki["a"]), TLSContext(pki["app"])
    server, _client = handshake(a.server_options(), app.client_options("127.0.0.2"))
    assert server.received == b"ping"


def test_an_expired_certificate_is_a_clear_error(pki):
    with pytest.raises(TLSError, match=r"cert.pem expired on \d{4}-\d\d-\d\d"):
        TLSContext(pki["old"])


def test_a_node_with_an_unusable_tls_directory_does_not_start(pki, tmp_path):
    with pytest.raises(ConfigError, match="--tls: .*expired"):
        NodeConfig(data_dir=str(tmp_path), tls=pki["old"])
    with pytest.raises(ConfigError, match="--tls: "):
        NodeConfig(data_dir=str(tmp_path), tls=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="--no-client-cert needs --tls"):
        NodeConfig(data_dir=str(tmp_path), client_cert=False)


def test_tls_lets_a_node_listen_beyond_loopback(pki, tmp_path):
    config = NodeConfig(data_dir=str(tmp_path), tls=pki["a"], listen="tcp:7400:interface=0.0.0.0", advertise="127.0.0.2:7400")
    assert config.tls_context().directory == pki["a"]
    with pytest.raises(ConfigError, match="TLS is not configured"):
        NodeConfig(data_dir=str(tmp_path), listen="tcp:7400:interface=0.0.0.0", advertise="127.0.0.2:7400")
