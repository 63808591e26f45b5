"""The cluster CA (nodedb.security.ca) and the ``nodedb ca`` commands: files and their modes,
the certificates' contents, refusals, rotation, bad input, and reading a TLS directory."""

import datetime
import ipaddress
import json
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodedb import cli
from nodedb.security import ca

UTC = datetime.timezone.utc
NOW = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def open_umask():
    """Modes must not depend on the umask: run every test with the most permissive one."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def ca_dir(tmp_path):
    directory = str(tmp_path / "ca")
    ca.init_ca(directory)
    return directory


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def cert_at(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def key_at(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def ext(cert, kind):
    return cert.extensions.get_extension_for_class(kind)


def public(obj):
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TestInitCA:
    def test_writes_the_certificate_and_key_with_safe_modes(self, tmp_path):
        directory = str(tmp_path / "new" / "ca")
        paths = ca.init_ca(directory)
        assert paths == [os.path.join(directory, "ca.pem"), os.path.join(directory, "ca-key.pem")]
        assert mode(paths[0]) == 0o644
        assert mode(paths[1]) == 0o600
        assert mode(directory) == 0o700
        assert mode(tmp_path / "new") == 0o700
        assert sorted(os.listdir(directory)) == ["ca-key.pem", "ca.pem"]  # no temporary files left

    def test_the_certificate_is_a_self_signed_p256_ca(self, ca_dir):
        cert = cert_at(os.path.join(ca_dir, "ca.pem"))
        key = key_at(os.path.join(ca_dir, "ca-key.pem"))
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert public(key) == public(cert)
        [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert cn.value.startswith("nodedb cluster CA ") and len(cn.value) > len("nodedb cluster CA ")
        assert cert.issuer == cert.subject
        cert.verify_directly_issued_by(cert)
        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        usage = ext(cert, x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature

    def test_validity(self, tmp_path):
        ca.init_ca(str(tmp_path), days=10, now=NOW)
        cert = cert_at(tmp_path / "ca.pem")
        assert cert.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
        assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=10)

    def test_each_ca_has_its_own_name(self, tmp_path):
        ca.init_ca(str(tmp_path / "a"))
        ca.init_ca(str(tmp_path / "b"))
        assert cert_at(tmp_path / "a" / "ca.pem").subject != cert_at(tmp_path / "b" / "ca.pem").subject

    def test_an_existing_directory_keeps_its_mode(self, tmp_path):
        directory = tmp_path / "mine"
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        ca.init_ca(str(directory))
        assert mode(directory) == 0o755
        assert mode(directory / "ca-key.pem") == 0o600

    @pytest.mark.parametrize("existing", ["ca.pem", "ca-key.pem"])
    def test_refuses_to_replace_a_ca(self, ca_dir, existing):
        if existing == "ca-key.pem":
            os.remove(os.path.join(ca_dir, "ca.pem"))
        before = open(os.path.join(ca_dir, existing), "rb").read()
        with pytest.raises(ca.CAError, match=f"{existing} exists already"):
            ca.init_ca(ca_dir)
        assert open(os.path.join(ca_dir, existing), "rb").read() == before

    def test_a_file_in_the_way_of_the_directory(self, tmp_path):
        (tmp_path / "file").write_text("")
        with pytest.raises(ca.CAError, match="is not a directory"):
            ca.init_ca(str(tmp_path / "file" / "ca"))

    @pytest.mark.parametrize("days", [0, -1, 1.5, True, "10", ca.MAX_DAYS + 1])
    def test_bad_days(self, tmp_path, days):
        with pytest.raises(ca.CAError, match="number of days"):
            ca.init_ca(str(tmp_path), days=days)
        assert os.listdir(tmp_path) == []


class TestIssueHost:
    def test_files_and_modes(self, ca_dir):
        paths = ca.issue_host(ca_dir, "node-a.example", ips=["10.0.0.1"])
        target = os.path.join(ca_dir, "hosts", "node-a.example")
        assert paths == [os.path.join(target, n) for n in ("key.pem", "cert.pem", "ca.pem")]
        assert [mode(p) for p in paths] == [0o600, 0o644, 0o644]
        assert mode(target) == 0o700 and mode(os.path.join(ca_dir, "hosts")) == 0o700
        assert sorted(os.listdir(target)) == ["ca.pem", "cert.pem", "key.pem"]
        assert open(paths[2], "rb").read() == open(os.path.join(ca_dir, "ca.pem"), "rb").read()

    def test_the_certificate(self, ca_dir):
        ca.issue_host(ca_dir, "node-a.example", ips=["10.0.0.1", "::1", "10.0.0.1"])
        target = os.path.join(ca_dir, "hosts", "node-a.example")
        cert = cert_at(os.path.join(target, "cert.pem"))
        ca_cert = cert_at(os.path.join(ca_dir, "ca.pem"))
        cert.verify_directly_issued_by(ca_cert)
        assert public(key_at(os.path.join(target, "key.pem"))) == public(cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-a.example"
        san = ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["node-a.example"]
        assert san.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("10.0.0.1"),
            ipaddress.ip_address("::1"),
        ]
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ]
        constraints = ext(cert, x509.BasicConstraints)
        assert constraints.critical and not constraints.value.ca
        assert ext(cert, x509.KeyUsage).value.digital_signature

    def test_a_host_named_by_its_ip_address(self, ca_dir):
        ca.issue_host(ca_dir, "10.1.2.3", ips=["10.1.2.3", "10.9.9.9"])
        cert = cert_at(os.path.join(ca_dir, "hosts", "10.1.2.3", "cert.pem"))
        san = ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == []
        assert san.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("10.1.2.3"),
            ipaddress.ip_address("10.9.9.9"),
        ]

    def test_the_directory_loads(self, ca_dir):
        ca.issue_host(ca_dir, "a")
        files = ca.load_tls_directory(os.path.join(ca_dir, "hosts", "a"))
        assert files.cert_path == os.path.join(ca_dir, "hosts", "a", "cert.pem")
        assert files.key_pem == open(files.key_path, "rb").read()
        assert files.ca_pem == open(os.path.join(ca_dir, "ca.pem"), "rb").read()

    def test_refuses_to_replace_without_force(self, ca_dir):
        ca.issue_host(ca_dir, "a")
        key = os.path.join(ca_dir, "hosts", "a", "key.pem")
        before = open(key, "rb").read()
        with pytest.raises(ca.CAError, match="key.pem exists already: pass --force"):
            ca.issue_host(ca_dir, "a")
        assert open(key, "rb").read() == before

    def test_refuses_when_only_the_certificate_is_there(self, ca_dir):
        target = os.path.join(ca_dir, "hosts", "a")
        ca.issue_host(ca_dir, "a")
        os.remove(os.path.join(target, "key.pem"))
        with pytest.raises(ca.CAError, match="cert.pem exists already"):
            ca.issue_host(ca_dir, "a")
        assert not os.path.exists(os.path.join(target, "key.pem"))

    def test_force_reissues_with_a_new_key(self, ca_dir):
        ca.issue_host(ca_dir, "a", ips=["10.0.0.1"])
        target = os.path.join(ca_dir, "hosts", "a")
        old_key = open(os.path.join(target, "key.pem"), "rb").read()
        old_cert = cert_at(os.path.join(target, "cert.pem"))
        ca.issue_host(ca_dir, "a", ips=["10.0.0.2"], force=True)
        assert open(os.path.join(target, "key.pem"), "rb").read() != old_key
        new_cert = cert_at(os.path.join(target, "cert.pem"))
        assert new_cert.serial_number != old_cert.serial_number
        san = ext(new_cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.2")]
        assert mode(os.path.join(target, "key.pem")) == 0o600
        assert sorted(os.listdir(target)) == ["ca.pem", "cert.pem", "key.pem"]
        ca.load_tls_directory(target)

    def test_expired_and_not_yet_valid_certificates(self, ca_dir):
        real_now = datetime.datetime.now(UTC)
        ca.issue_host(ca_dir, "old", days=1, now=real_now - datetime.timedelta(days=30))
        assert cert_at(os.path.join(ca_dir, "hosts", "old", "cert.pem")).not_valid_after_utc < real_now
        ca.issue_host(ca_dir, "new", now=real_now + datetime.timedelta(days=2))
        assert cert_at(os.path.join(ca_dir, "hosts", "new", "cert.pem")).not_valid_before_utc > real_now

    def test_validity_is_exact_and_capped_by_the_ca(self, tmp_path):
        directory = str(tmp_path)
        ca.init_ca(directory, days=100, now=NOW)
        ca.issue_host(directory, "a", days=10, now=NOW)
        cert = cert_at(tmp_path / "hosts" / "a" / "cert.pem")
        assert cert.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
        assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=10)
        ca.issue_host(directory, "b", days=825, now=NOW)
        assert cert_at(tmp_path / "hosts" / "b" / "cert.pem").not_valid_after_utc == NOW + datetime.timedelta(days=100)

    def test_a_naive_now_is_utc(self, tmp_path):
        ca.init_ca(str(tmp_path), now=NOW.replace(tzinfo=None))
        assert cert_at(tmp_path / "ca.pem").not_valid_before_utc == NOW - datetime.timedelta(hours=1)

    def test_an_expired_ca_issues_nothing(self, tmp_path):
        ca.init_ca(str(tmp_path), days=1, now=NOW - datetime.timedelta(days=5))
        with pytest.raises(ca.CAError, match="expired on .*make a new CA"):
            ca.issue_host(str(tmp_path), "a", now=NOW)
        assert not os.path.exists(tmp_path / "hosts")

    def test_no_ca(self, tmp_path):
        with pytest.raises(ca.CAError, match="no CA in .*run 'nodedb ca init"):
            ca.issue_host(str(tmp_path), "a")

    def test_a_ca_key_that_does_not_match(self, ca_dir, tmp_path):
        ca.init_ca(str(tmp_path / "other"))
        os.replace(tmp_path / "other" / "ca-key.pem", os.path.join(ca_dir, "ca-key.pem"))
        with pytest.raises(ca.CAError, match="ca-key.pem is not the key of .*ca.pem"):
            ca.issue_host(ca_dir, "a")

    @pytest.mark.parametrize(
        "name",
        ["", "-a", ".a", "a b", "a/b", "..", "a..b", "x" * 254, "h\u00f6st", "a_b", "fe80::1%eth0", "a\n"],
    )
    def test_bad_names(self, ca_dir, name):
        with pytest.raises(ca.CAError, match="bad name"):
            ca.issue_host(ca_dir, name)
        with pytest.raises(ca.CAError, match="bad name"):
            ca.issue_client(ca_dir, name)
        assert not os.path.exists(os.path.join(ca_dir, "hosts"))

    @pytest.mark.parametrize("name", ["a", "A-1", "node-1.example.com", "x" * 253, "10.0.0.1", "::1", "a."])
    def test_good_names(self, ca_dir, name):
        ca.issue_host(ca_dir, name)
        ca.load_tls_directory(os.path.join(ca_dir, "hosts", name))

    def test_a_name_too_long_for_a_common_name(self, ca_dir):
        name = "x" * 60 + ".example.com"
        ca.issue_host(ca_dir, name)
        cert = cert_at(os.path.join(ca_dir, "hosts", name, "cert.pem"))
        assert len(cert.subject) == 0
        san = ext(cert, x509.SubjectAlternativeName)
        assert san.critical and san.value.get_values_for_type(x509.DNSName) == [name]
        with pytest.raises(ca.CAError, match="at most 64 characters"):
            ca.issue_client(ca_dir, name)

    @pytest.mark.parametrize("ip", ["999.0.0.1", "host", "", "10.0.0.1/24", "10.0.0", "fe80::1%eth0"])
    def test_bad_ips(self, ca_dir, ip):
        with pytest.raises(ca.CAError, match="bad IP address"):
            ca.issue_host(ca_dir, "a", ips=[ip])
        assert not os.path.exists(os.path.join(ca_dir, "hosts"))


class TestIssueClient:
    def test_files_and_certificate(self, ca_dir):
        paths = ca.issue_client(ca_dir, "alice")
        target = os.path.join(ca_dir, "clients", "alice")
        assert paths == [os.path.join(target, n) for n in ("key.pem", "cert.pem", "ca.pem")]
        assert [mode(p) for p in paths] == [0o600, 0o644, 0o644]
        assert mode(target) == 0o700
        cert = cert_at(paths[1])
        cert.verify_directly_issued_by(cert_at(os.path.join(ca_dir, "ca.pem")))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        with pytest.raises(x509.ExtensionNotFound):
            ext(cert, x509.SubjectAlternativeName)
        ca.load_tls_directory(target)

    def test_refuses_to_replace_without_force(self, ca_dir):
        ca.issue_client(ca_dir, "alice")
        with pytest.raises(ca.CAError, match="exists already"):
            ca.issue_client(ca_dir, "alice")
        before = open(os.path.join(ca_dir, "clients", "alice", "key.pem"), "rb").read()
        ca.issue_client(ca_dir, "alice", force=True)
        assert open(os.path.join(ca_dir, "clients", "alice", "key.pem"), "rb").read() != before


class TestLoadTLSDirectory:
    @pytest.fixture
    def host(self, ca_dir):
        ca.issue_host(ca_dir, "a")
        return os.path.join(ca_dir, "hosts", "a")

    def test_no_directory(self, tmp_path):
        with pytest.raises(ca.CAError, match="TLS directory .*missing.* does not exist"):
            ca.load_tls_directory(str(tmp_path / "missing"))

    @pytest.mark.parametrize("name", ["ca.pem", "cert.pem", "key.pem"])
    def test_a_missing_file(self, host, name):
        os.remove(os.path.join(host, name))
        with pytest.raises(ca.CAError, match=f"{os.path.join(host, name)} is missing"):
            ca.load_tls_directory(host)

    def test_an_unreadable_file(self, host):
        os.remove(os.path.join(host, "key.pem"))
        os.mkdir(os.path.join(host, "key.pem"))
        with pytest.raises(ca.CAError, match="cannot read .*key.pem"):
            ca.load_tls_directory(host)

    @pytest.mark.parametrize(
        "name, message", [("ca.pem", "PEM certificate"), ("cert.pem", "PEM certificate"), ("key.pem", "PEM private key")]
    )
    def test_garbage(self, host, name, message):
        with open(os.path.join(host, name), "wb") as f:
            f.write(b"not pem\n")
        with pytest.raises(ca.CAError, match=f"{name} does not hold an? (unencrypted )?{message}"):
            ca.load_tls_directory(host)

    def test_a_key_that_is_not_the_certificates(self, ca_dir, host):
        ca.issue_host(ca_dir, "b")
        os.replace(os.path.join(ca_dir, "hosts", "b", "key.pem"), os.path.join(host, "key.pem"))
        with pytest.raises(ca.CAError, match="key.pem is not the key of .*cert.pem"):
            ca.load_tls_directory(host)

    def test_a_certificate_of_another_ca(self, host, tmp_path):
        other = str(tmp_path / "other")
        ca.init_ca(other)
        os.replace(os.path.join(other, "ca.pem"), os.path.join(host, "ca.pem"))
        with pytest.raises(ca.CAError, match="cert.pem is not signed by the CA in .*ca.pem"):
            ca.load_tls_directory(host)

    def test_a_ca_with_the_same_name_but_another_key(self, host, ca_dir):
        """Only the signature counts: a CA certificate copied with another key is refused."""
        genuine = cert_at(os.path.join(ca_dir, "ca.pem"))
        key = ec.generate_private_key(ec.SECP256R1())
        forged = (
            x509.CertificateBuilder()
            .subject_name(genuine.subject)
            .issuer_name(genuine.subject)
            .public_key(key.public_key())
            .serial_number(genuine.serial_number)
            .not_valid_before(genuine.not_valid_before_utc)
            .not_valid_after(genuine.not_valid_after_utc)
            .sign(key, genuine.signature_hash_algorithm)
        )
        with open(os.path.join(host, "ca.pem"), "wb") as f:
            f.write(forged.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(ca.CAError, match="not signed by the CA"):
            ca.load_tls_directory(host)


class TestHandshake:
    """The certificates work with OpenSSL (the stdlib ssl module, in memory): hosts and clients
    verify each other, and a client certificate cannot serve."""

    @staticmethod
    def handshake(server_dir, client_dir, server_hostname):
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(os.path.join(server_dir, "cert.pem"), os.path.join(server_dir, "key.pem"))
        server.load_verify_locations(os.path.join(server_dir, "ca.pem"))
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_cert_chain(os.path.join(client_dir, "cert.pem"), os.path.join(client_dir, "key.pem"))
        client.load_verify_locations(os.path.join(client_dir, "ca.pem"))
        pipes = [ssl.MemoryBIO() for _ in range(4)]
        s = server.wrap_bio(pipes[0], pipes[1], server_side=True)
        c = client.wrap_bio(pipes[2], pipes[3], server_hostname=server_hostname)
        done = {s: False, c: False}
        for _ in range(10):
            for end in (c, s):
                if not done[end]:
                    try:
                        end.do_handshake()
                        done[end] = True
                    except ssl.SSLWantReadError:
                        pass
            pipes[0].write(pipes[3].read())
            pipes[2].write(pipes[1].read())
            if all(done.values()):
                return s.getpeercert(), c.getpeercert()
        raise AssertionError("handshake did not finish")

    def test_hosts_and_clients(self, ca_dir):
        ca.issue_host(ca_dir, "node-a", ips=["10.0.0.1"])
        ca.issue_host(ca_dir, "node-b")
        ca.issue_client(ca_dir, "alice")
        a, b = os.path.join(ca_dir, "hosts", "node-a"), os.path.join(ca_dir, "hosts", "node-b")
        alice = os.path.join(ca_dir, "clients", "alice")
        peer, _ = self.handshake(a, b, "node-a")
        assert dict(x[0] for x in peer["subject"])["commonName"] == "node-b"
        self.handshake(a, b, "10.0.0.1")
        peer, _ = self.handshake(a, alice, "node-a")
        assert dict(x[0] for x in peer["subject"])["commonName"] == "alice"
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            self.handshake(a, alice, "node-b")
        with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
            self.handshake(alice, a, "alice")

    def test_another_ca(self, ca_dir, tmp_path):
        ca.issue_host(ca_dir, "node-a")
        ca.init_ca(str(tmp_path / "other"))
        ca.issue_host(str(tmp_path / "other"), "node-b")
        with pytest.raises(ssl.SSLError):
            self.handshake(os.path.join(ca_dir, "hosts", "node-a"), str(tmp_path / "other/hosts/node-b"), "node-a")


# -- the nodedb ca commands ----------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """The ca commands must not start a reactor or connect anywhere."""

    def refuse(*args, **kwargs):
        raise AssertionError("a ca command tried to connect")

    monkeypatch.setattr(cli, "react", refuse)
    import nodedb.client

    monkeypatch.setattr(nodedb.client, "connect", refuse)


def nodedb(*argv):
    """Run ``nodedb ARGV`` in-process; :return: its exit status."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    return info.value.code


@pytest.mark.usefixtures("no_network")
class TestCommands:
    def test_init_issue_client(self, tmp_path, capsys):
        directory = str(tmp_path / "ca")
        assert nodedb("ca", "init", directory) == 0
        out, err = capsys.readouterr()
        assert err == ""
        lines = out.splitlines()
        assert lines[0].startswith(f"wrote {directory}/ca.pem (CA certificate, valid until ")
        assert lines[0].endswith(", mode 0644)")
        assert lines[1].startswith(f"wrote {directory}/ca-key.pem (CA private key") and lines[1].endswith("mode 0600)")
        assert lines[2] == f"next, for each host: nodedb ca issue {directory} --host NAME --ip ADDRESS"

        assert nodedb("ca", "issue", directory, "--host", "node-a", "--ip", "10.0.0.1", "--ip", "10.0.0.2") == 0
        out, err = capsys.readouterr()
        target = f"{directory}/hosts/node-a"
        lines = out.splitlines()
        assert err == "" and len(lines) == 4
        assert lines[0] == f"wrote {target}/key.pem (private key, mode 0600)"
        assert lines[1].startswith(f"wrote {target}/cert.pem (certificate for node-a, valid until ")
        assert lines[2] == f"wrote {target}/ca.pem (copy of the CA certificate, mode 0644)"
        assert f"start the node there with: twistd -n nodedb --tls {target}" in lines[3]
        san = ext(cert_at(f"{target}/cert.pem"), x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1", "10.0.0.2"]

        assert nodedb("ca", "client", directory, "alice", "--days", "30") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"wrote {directory}/clients/alice/key.pem (private key, mode 0600)"
        assert f"nodedb --tls {directory}/clients/alice" in lines[3]
        cert = cert_at(f"{directory}/clients/alice/cert.pem")
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=30, hours=1)

    def test_json(self, ca_dir, capsys):
        assert nodedb("--json", "ca", "issue", ca_dir, "--host", "a") == 0
        result = json.loads(capsys.readouterr().out)
        assert [(f["path"], f["mode"]) for f in result["wrote"]] == [
            (f"{ca_dir}/hosts/a/key.pem", "0600"),
            (f"{ca_dir}/hosts/a/cert.pem", "0644"),
            (f"{ca_dir}/hosts/a/ca.pem", "0644"),
        ]
        assert "--tls" in result["next"]
        assert nodedb("ca", "client", ca_dir, "bob", "--json") == 0
        assert json.loads(capsys.readouterr().out)["wrote"][0]["what"] == "private key"

    def test_force(self, ca_dir, capsys):
        assert nodedb("ca", "issue", ca_dir, "--host", "a") == 0
        key = open(f"{ca_dir}/hosts/a/key.pem", "rb").read()
        capsys.readouterr()
        assert nodedb("ca", "issue", ca_dir, "--host", "a") == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"nodedb: {ca_dir}/hosts/a/key.pem exists already: pass --force to re-issue it with a new key\n"
        assert nodedb("ca", "issue", ca_dir, "--host", "a", "--force") == 0
        assert open(f"{ca_dir}/hosts/a/key.pem", "rb").read() != key

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["ca", "init", "{ca}"], "ca.pem exists already"),
            (["ca", "issue", "{tmp}/none", "--host", "a"], "no CA in"),
            (["ca", "client", "{tmp}/none", "alice"], "no CA in"),
        ],
    )
    def test_errors_exit_1_with_one_line(self, ca_dir, tmp_path, capsys, argv, message):
        argv = [a.format(ca=ca_dir, tmp=tmp_path) for a in argv]
        assert nodedb(*argv) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("nodedb: ") and err.count("\n") == 1 and message in err

    @pytest.mark.parametrize(
        "argv, message",
        [
            (["ca"], "required: CA_COMMAND"),
            (["ca", "frob"], "invalid choice: 'frob'"),
            (["ca", "init"], "required: DIR"),
            (["ca", "issue", "{ca}"], "required: --host"),
            (["ca", "issue", "{ca}", "--host", "a b"], "argument --host: bad name 'a b'"),
            (["ca", "issue", "{ca}", "--host", "a", "--ip", "10.0.0.300"], "argument --ip: bad IP address '10.0.0."),
            (["ca", "issue", "{ca}", "--host", "a", "--days", "0"], "argument --days: not a number of days"),
            (["ca", "init", "{tmp}/x", "--days", "soon"], "argument --days: not a number of days"),
            (["ca", "client", "{ca}"], "required: NAME"),
            (["ca", "client", "{ca}", "--", "-alice"], "bad name '-alice'"),
            (["ca", "init", "{tmp}/x", "--force"], "unrecognized arguments: --force"),
        ],
    )
    def test_usage_errors_exit_2_with_one_line(self, ca_dir, tmp_path, capsys, argv, message):
        argv = [a.format(ca=ca_dir, tmp=tmp_path) for a in argv]
        assert nodedb(*argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("nodedb") and err.count("\n") == 1, err
        assert message in err
        assert not os.path.exists(tmp_path / "x") and not os.path.exists(os.path.join(ca_dir, "hosts"))
