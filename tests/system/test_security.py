"""TLS with real processes on loopback: certificates made with ``nodedb ca``, a cluster of three
``--tls`` nodes that forms and serves, a rogue node whose certificate comes from another CA
(refused, and absent from every ``/status``), a host of this CA that claims another host's
address (refused), a client without a certificate (refused), and an expired certificate
(a clear error)."""

import datetime
import http.client
import json
import os
import socket
import ssl

import pytest

from nodedb.security import ca

from .harness import NodeProcess, assert_one_line_error, next_loopback, run_cli, wait_for

pytestmark = pytest.mark.system


def https_status(node, client_dir, timeout=5.0):
    """``/status`` of *node* over HTTPS, presenting the client certificate of *client_dir*."""
    context = ssl.create_default_context(cafile=os.path.join(client_dir, "ca.pem"))
    context.load_cert_chain(os.path.join(client_dir, "cert.pem"), os.path.join(client_dir, "key.pem"))
    connection = http.client.HTTPSConnection(node.host, node.admin_port, context=context, timeout=timeout)
    try:
        connection.request("GET", "/status")
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def addresses(view):
    return {entry["address"] for entry in view["hosts"]}


@pytest.fixture(scope="module")
def cluster(module_processes, tmp_path_factory):
    """Three nodes with certificates of one CA made by the ``nodedb ca`` commands, and a
    client certificate."""
    root = tmp_path_factory.mktemp("pki")
    authority = str(root / "ca")
    made = run_cli("ca", "init", authority)
    assert made.returncode == 0, made
    assert "ca-key.pem" in made.stdout
    nodes = []
    for index in range(3):
        host = next_loopback()
        issued = run_cli("ca", "issue", authority, "--host", host)
        assert issued.returncode == 0, issued
        tls = os.path.join(authority, "hosts", host)
        assert os.stat(os.path.join(tls, "key.pem")).st_mode & 0o777 == 0o600
        nodes.append(NodeProcess(module_processes, root / f"n{index}", f"n{index}", host=host, args=["--tls", tls]))
    assert run_cli("ca", "client", authority, "app").returncode == 0
    nodes[0].start()
    for node in nodes[1:]:
        node.start("--seed", nodes[0].address)
    client_dir = os.path.join(authority, "clients", "app")
    wanted = {n.address for n in nodes}
    wait_for(lambda: all(addresses(https_status(n, client_dir)) == wanted for n in nodes), what="the TLS cluster to form")
    return {"nodes": nodes, "authority": authority, "client": client_dir, "root": root}


def cli(cluster, *args, node=0, tls=True):
    extra = ["--tls", cluster["client"]] if tls else []
    return run_cli(*extra, *args, connect=cluster["nodes"][node].address)


def test_a_tls_cluster_forms_and_serves(cluster):
    inserted = cli(cluster, "insert", "user", '{"name": "ada"}', node=1)
    assert inserted.returncode == 0, inserted
    element = inserted.stdout.strip()
    for node in range(3):
        got = cli(cluster, "get", "user", element, node=node)
        assert got.returncode == 0, got
        assert json.loads(got.stdout) == {"name": "ada"}
    status = cli(cluster, "status")
    assert status.returncode == 0, status
    assert all(n.address in status.stdout for n in cluster["nodes"])


def test_a_client_without_a_certificate_is_refused(cluster):
    node = cluster["nodes"][0]
    plain = cli(cluster, "--timeout", "3", "get", "user", "1", tls=False)
    assert_one_line_error(plain, contains=("Unavailable",))
    # TLS that trusts the CA but presents no certificate: the handshake fails.
    context = ssl.create_default_context(cafile=os.path.join(cluster["client"], "ca.pem"))
    with socket.create_connection((node.host, node.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with context.wrap_socket(raw, server_hostname=node.host) as wrapped:
                wrapped.sendall(b"\x00\x00\x00\x01\xa0")
                assert wrapped.recv(1) == b""  # TLS 1.3 reports the refusal on the first read
                raise ConnectionError("closed")


def test_an_expired_certificate_is_a_clear_error(cluster):
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    ca.issue_client(cluster["authority"], "expired", days=1, now=now)
    expired = os.path.join(cluster["authority"], "clients", "expired")
    result = run_cli("--tls", expired, "get", "user", "1", connect=cluster["nodes"][0].address)
    line = assert_one_line_error(result, contains=("expired on",))
    assert "cert.pem" in line
    ca.issue_host(cluster["authority"], "127.0.0.250", days=1, now=now)
    stale = NodeProcess(
        cluster["nodes"][0].group, cluster["root"] / "stale", "stale", host="127.0.0.250",
        args=["--tls", os.path.join(cluster["authority"], "hosts", "127.0.0.250")],
    )
    stale.launch()
    assert stale.process.wait(timeout=30) != 0
    assert "expired on" in stale.output_path.read_text() + stale.log()


@pytest.mark.parametrize("kind", ["foreign CA", "another host's address"])
def test_a_rogue_node_is_refused_and_absent_from_every_status(cluster, kind):
    root = cluster["root"] / kind.replace(" ", "-").replace("'", "")
    host = next_loopback()
    if kind == "foreign CA":
        foreign = str(root / "ca")
        ca.init_ca(foreign)
        ca.issue_host(foreign, host)
        tls = os.path.join(foreign, "hosts", host)
    else:
        # A certificate of this very CA, but for another address than the one it advertises.
        ca.issue_host(cluster["authority"], "127.0.0.251")
        tls = os.path.join(cluster["authority"], "hosts", "127.0.0.251")
    rogue = NodeProcess(cluster["nodes"][0].group, root, "rogue", host=host, args=["--tls", tls])
    rogue.launch("--seed", cluster["nodes"][0].address)
    # It never joins: the seed refuses its handshake (and nobody could verify it when
    # calling it), and the rogue's log says why.
    expected = "TLS with" if kind == "foreign CA" else "does not name"
    wait_for(lambda: expected in rogue.log(), what=f"the rogue to log {expected!r}")
    for node in cluster["nodes"]:
        view = https_status(node, cluster["client"])
        assert rogue.host not in {a.rsplit(":", 1)[0] for a in addresses(view)}, view["hosts"]
    assert rogue.kill() != 0
