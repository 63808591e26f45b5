"""``twistd nodedb`` options and the service they make (nothing is started here)."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from nodedb import config, tap
from nodedb.node import NodeService


def parse(*argv):
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults(tmp_path):
    options = parse("--data", str(tmp_path))
    node_config = options.config
    assert node_config.data_dir == str(tmp_path)
    assert (node_config.listen, node_config.admin) == (config.DEFAULT_LISTEN, config.DEFAULT_ADMIN)
    assert (node_config.seeds, node_config.insecure, node_config.storage) == ([], False, "lmdb")
    assert (node_config.partitions, node_config.replicas) == (config.DEFAULT_PARTITIONS, config.DEFAULT_REPLICAS)


def test_every_option(tmp_path):
    options = parse(
        "--data", str(tmp_path),
        "--listen", "tcp:7500:interface=0.0.0.0",
        "--advertise", "10.0.0.5:7500",
        "--seed", "10.0.0.6:7400",
        "--seed", "[::1]:7400",
        "--admin", "none",
        "--replicas", "5",
        "--partitions", "128",
        "--insecure",
        "--storage", "memory",
        "--transport", "unix",
        "--id-allocator", "time",
        "--socket-dir", "sockets",
        "--max-document-size", "2048",
        "--max-frame-size", "200000",
        "--map-size", "1000000",
        "--max-types", "7",
        "--scan-idle-timeout", "5",
    )  # fmt: skip
    c = options.config
    assert (c.listen, c.advertise, c.seeds, c.admin) == ("tcp:7500:interface=0.0.0.0", "10.0.0.5:7500", ["10.0.0.6:7400", "[::1]:7400"], None)
    assert (c.replicas, c.partitions, c.insecure, c.storage) == (5, 128, True, "memory")
    assert (c.max_document_size, c.max_frame_size, c.map_size, c.max_types) == (2048, 200000, 1000000, 7)
    assert c.scan_idle_timeout == 5.0
    assert (c.transport, c.id_allocator, c.socket_dir) == ("unix", "time", os.path.abspath("sockets"))


def test_the_options_default_to_the_settings_table(tmp_path):
    assert parse("--data", str(tmp_path)).config == config.NodeConfig(data_dir=str(tmp_path))


def test_every_setting_is_an_option(tmp_path):
    options = tap.Options()
    given = {name for name, *_rest in options.optParameters} | {name for name, *_rest in options.optFlags} | {"seed"}
    assert given == {s.option for s in config.SETTINGS.values()}


def test_a_relative_data_directory_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("--data", "data").config.data_dir == os.path.join(str(tmp_path), "data")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--data DIR is required"),
        (["--partitions", "0"], "positive integer"),
        (["--replicas", "x"], "Parameter type enforcement failed"),
        (["--bogus"], "bogus"),
    ],
)
def test_malformed_command_lines_are_usage_errors(tmp_path, argv, message):
    if argv:
        argv = ["--data", str(tmp_path), *argv]
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--listen", "tcp:7400"], "--insecure"),
        (["--admin", "tcp:7480:interface=10.0.0.1"], "--admin"),
        (["--storage", "nosuch"], "unknown storage backend 'nosuch'; installed: "),
        (["--transport", "pigeon"], "unknown transport 'pigeon'; installed: tcp, unix"),
        (["--id-allocator", "dice"], "unknown id allocator 'dice'; installed: sequential, time"),
        (["--peer-retries", "11"], "--peer-retries must be an integer between 0 and 10"),
        (["--seed", "nohost"], "--seed"),
    ],
)
def test_settings_that_cannot_work_stop_with_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit) as info:
        parse("--data", str(tmp_path), *argv)
    assert str(info.value).startswith("twistd nodedb: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_installed_backends_are_listed(tmp_path):
    with pytest.raises(SystemExit) as info:
        parse("--data", str(tmp_path), "--storage", "nosuch")
    assert "lmdb" in str(info.value) and "memory" in str(info.value)


def test_make_service_builds_an_unstarted_node(tmp_path):
    reactor = MemoryReactorClock()
    node = tap.makeService(parse("--data", str(tmp_path), "--storage", "memory"), reactor=reactor)
    assert isinstance(node, NodeService)
    assert not node.running
    assert reactor.tcpServers == []
