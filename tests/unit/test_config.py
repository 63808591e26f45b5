"""NodeConfig and the endpoint helpers behind it."""

import pytest

from nodedb.config import (
    DEFAULT_ADMIN,
    DEFAULT_LISTEN,
    ConfigError,
    NodeConfig,
    endpoint_address,
    is_private_endpoint,
    split_endpoint,
)
from nodedb.errors import InvalidRequest
from nodedb.wire.address import format_address, parse_address


class TestSplitEndpoint:
    def test_kind_arguments_and_keywords(self):
        assert split_endpoint("tcp:7400:interface=127.0.0.1") == ("tcp", ["7400"], {"interface": "127.0.0.1"})
        assert split_endpoint("TCP:7400") == ("tcp", ["7400"], {})
        assert split_endpoint("unix:/tmp/x.sock:mode=600") == ("unix", ["/tmp/x.sock"], {"mode": "600"})

    def test_escaped_colons(self):
        assert split_endpoint(r"tcp6:7400:interface=\:\:1") == ("tcp6", ["7400"], {"interface": "::1"})
        assert split_endpoint(r"tcp6:port=7400:interface=fe80\:\:1") == ("tcp6", [], {"port": "7400", "interface": "fe80::1"})


class TestIsPrivateEndpoint:
    @pytest.mark.parametrize(
        "description",
        [
            DEFAULT_LISTEN,
            DEFAULT_ADMIN,
            "tcp:0:interface=127.0.0.1",
            "tcp:7400:interface=127.0.0.42",
            "tcp:7400:interface=localhost",
            "tcp:port=7400:interface=127.0.0.1",
            r"tcp6:7400:interface=\:\:1",
            r"tcp6:port=7400:interface=0\:0\:0\:0\:0\:0\:0\:1",
            "unix:/tmp/nodedb.sock",
            "unix:address=/tmp/nodedb.sock:lockfile=1",
            "ssl:7400:privateKey=key.pem",
            "ssl:7400:interface=0.0.0.0:privateKey=key.pem",
        ],
    )
    def test_loopback_unix_and_tls_are_private(self, description):
        assert is_private_endpoint(description)

    @pytest.mark.parametrize(
        "description",
        [
            "tcp:7400",
            "tcp:7400:interface=0.0.0.0",
            "tcp:7400:interface=10.0.0.5",
            "tcp:7400:interface=192.168.1.2",
            r"tcp6:7400:interface=\:\:",
            "tcp6:7400",
            r"tcp6:7400:interface=fe80\:\:1",
            "tcp:7400:interface=example.com",
            "tcp:7400:interface=127.0.0.1.example.com",
            "systemd:domain=INET:index=0",
            "tor:port=80",
        ],
    )
    def test_everything_else_is_not(self, description):
        assert not is_private_endpoint(description)


class TestAddresses:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("127.0.0.1:7400", ("127.0.0.1", 7400)),
            (" node-1.example:1 ", ("node-1.example", 1)),
            ("[::1]:7400", ("::1", 7400)),
            ("localhost:65535", ("localhost", 65535)),
        ],
    )
    def test_parse_address(self, text, expected):
        assert parse_address(text) == expected

    @pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":7400", "host:0", "host:65536", "host:-1", "host:x", "", None, 7400, b"h:1"])
    def test_parse_address_refuses(self, text):
        with pytest.raises(InvalidRequest):
            parse_address(text)

    def test_format_address(self):
        assert format_address("127.0.0.1", 7400) == "127.0.0.1:7400"
        assert format_address("::1", 7400) == "[::1]:7400"
        assert parse_address(format_address("::1", 7400)) == ("::1", 7400)

    def test_endpoint_address(self):
        assert endpoint_address("tcp:7400:interface=127.0.0.1") == "127.0.0.1:7400"
        assert endpoint_address(r"tcp6:7401:interface=\:\:1") == "[::1]:7401"

    @pytest.mark.parametrize("description", ["tcp:7400", "tcp:7400:interface=0.0.0.0", r"tcp6:7400:interface=\:\:", "unix:/x", "tcp:port=7400:interface=127.0.0.1"])
    def test_endpoint_address_needs_a_concrete_tcp_address(self, description):
        with pytest.raises(ConfigError, match="--advertise"):
            endpoint_address(description)


class TestNodeConfig:
    def test_defaults_are_loopback(self, tmp_path):
        config = NodeConfig(data_dir=str(tmp_path))
        assert (config.listen, config.admin) == (DEFAULT_LISTEN, DEFAULT_ADMIN)
        assert config.advertised_address() == "127.0.0.1:7400"
        assert config.storage == "lmdb"

    def test_advertise_overrides_the_listen_address(self, tmp_path):
        config = NodeConfig(data_dir=str(tmp_path), listen="tcp:7400:interface=0.0.0.0", advertise="10.0.0.5:7400", insecure=True)
        assert config.advertised_address() == "10.0.0.5:7400"

    @pytest.mark.parametrize("option", ["listen", "admin"])
    @pytest.mark.parametrize("endpoint", ["tcp:7400", "tcp:7400:interface=10.1.2.3", r"tcp6:7400:interface=\:\:"])
    def test_non_loopback_plaintext_needs_insecure(self, tmp_path, option, endpoint):
        with pytest.raises(ConfigError, match=f"--{option} .* is reachable from other hosts .* --insecure"):
            NodeConfig(data_dir=str(tmp_path), **{option: endpoint})
        config = NodeConfig(data_dir=str(tmp_path), insecure=True, **{option: endpoint})
        assert getattr(config, option) == endpoint

    def test_admin_can_be_off(self, tmp_path):
        assert NodeConfig(data_dir=str(tmp_path), admin=None).admin is None

    def test_private_endpoints_need_no_insecure(self, tmp_path):
        NodeConfig(data_dir=str(tmp_path), listen="unix:/tmp/n.sock", admin=r"tcp6:7480:interface=\:\:1")

    @pytest.mark.parametrize(
        "fields, match",
        [
            ({"data_dir": ""}, "--data is required"),
            ({"partitions": 0}, "--partitions"),
            ({"partitions": 65537}, "--partitions"),
            ({"replicas": 0}, "--replicas"),
            ({"replicas": 10}, "--replicas"),
            ({"bootstrap_expect": 0}, "--bootstrap-expect"),
            ({"bootstrap_expect": 1001}, "--bootstrap-expect"),
            ({"max_document_size": 1023}, "--max-document-size"),
            ({"max_document_size": 1024 * 1024, "max_frame_size": 1024 * 1024 + 65535}, "--max-frame-size"),
            ({"seeds": ["127.0.0.1:7400", "nope"]}, "--seed: not a HOST:PORT address: 'nope'"),
            ({"seeds": ["host:0"]}, "--seed"),
            ({"advertise": "10.0.0.1"}, "--advertise: not a HOST:PORT"),
            ({"scan_idle_timeout": 0.5}, "--scan-idle-timeout"),
            ({"scan_idle_timeout": 86401}, "--scan-idle-timeout"),
            ({"partitions": 1.5}, "--partitions must be an integer between 1 and 65536"),
            ({"replicas": True}, "--replicas must be an integer between 1 and 9"),
            ({"max_document_size": 1000}, "--max-document-size must be an integer of at least 1024 bytes"),
            ({"map_size": 0}, "--map-size"),
            ({"max_types": 0}, "--max-types"),
            ({"peer_timeout": "2"}, "--peer-timeout must be between 0.05 and 300 seconds"),
            ({"peer_retries": -1}, "--peer-retries must be an integer between 0 and 10"),
        ],
    )
    def test_settings_that_cannot_work_are_refused(self, tmp_path, fields, match):
        fields.setdefault("data_dir", str(tmp_path))
        with pytest.raises(ConfigError, match=match):
            NodeConfig(**fields)

    def test_data_must_not_be_a_file(self, tmp_path):
        path = tmp_path / "file"
        path.write_text("x")
        with pytest.raises(ConfigError, match="is not a directory"):
            NodeConfig(data_dir=str(path))

    def test_a_data_directory_that_does_not_exist_yet_is_fine(self, tmp_path):
        NodeConfig(data_dir=str(tmp_path / "new"))

    def test_bounds_are_inclusive(self, tmp_path):
        NodeConfig(data_dir=str(tmp_path), partitions=65536, replicas=9, max_document_size=1024, max_frame_size=1024 + 65536)
        NodeConfig(data_dir=str(tmp_path), partitions=1, replicas=1, seeds=["[::1]:7400", "a.example:1"], advertise="h:7400")

    def test_a_whole_number_of_seconds_is_a_number_of_seconds(self, tmp_path):
        assert NodeConfig(data_dir=str(tmp_path), peer_timeout=2, remove_after=60).peer_timeout == 2

    def test_check_can_be_run_again_after_a_change(self, tmp_path):
        config = NodeConfig(data_dir=str(tmp_path))
        config.listen = "tcp:7400:interface=0.0.0.0"
        with pytest.raises(ConfigError):
            config.check()
