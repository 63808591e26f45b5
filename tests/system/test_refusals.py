"""A node that cannot or must not run refuses to start: one clear line saying why, a non-zero
exit status, no traceback, and nothing served (DESIGN section 2)."""

import socket

import pytest

from .harness import TRACEBACK, next_loopback

pytestmark = pytest.mark.system


def refused_at_the_command_line(node, *extra):
    """Run *node* with *extra* options, which twistd must refuse while parsing its options.

    :return: the line of twistd's output that gives the reason.
    """
    node.launch(*extra)
    status = node.wait_exit()
    output = node.output()
    assert status == 1, output
    assert TRACEBACK not in output, output
    # Nothing was started: no log, no data directory.
    assert not node.log_path.exists(), node.log()
    assert not node.data_dir.exists()
    # A setting that cannot work is one line, not twistd's usage text.
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twistd nodedb: "), output
    return lines[0]


@pytest.mark.parametrize(
    "option, endpoint",
    [
        ("--listen", "tcp:0:interface=0.0.0.0"),
        ("--listen", "tcp:0"),  # every interface
        ("--listen", r"tcp6:0:interface=\:\:"),
        ("--admin", "tcp:0:interface=0.0.0.0"),
    ],
)
def test_non_loopback_without_insecure_is_refused_before_binding(processes, option, endpoint):
    node = processes.node("exposed", admin=True)
    reason = refused_at_the_command_line(node, option, endpoint)
    assert option in reason and "--insecure" in reason, reason


def test_data_directory_that_is_a_file(processes):
    node = processes.node("filed", admin=False)
    node.data_dir.write_text("not a directory\n")
    node.launch()
    assert node.wait_exit() == 1, node.output()
    [reason] = node.output().strip().splitlines()
    assert "--data" in reason and "not a directory" in reason, node.output()
    assert TRACEBACK not in node.output()
    assert node.data_dir.read_text() == "not a directory\n"


def failed_start(node):
    """Wait for *node* to give up starting; :return: the reason line of its log."""
    status = node.wait_exit()
    log = node.log()
    assert status == 1, node.describe()
    [line] = [line for line in log.splitlines() if "nodedb could not start:" in line]
    assert "#critical]" in line
    assert TRACEBACK not in log, node.describe()
    return line.split("nodedb could not start: ", 1)[1]


def test_data_directory_under_a_file(processes, tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    node = processes.node("nested", admin=False)
    node.data_dir = blocker / "data"
    node.launch()
    reason = failed_start(node)
    assert str(blocker) in reason, reason


def test_data_directory_in_use_by_a_running_node(processes):
    first = processes.start_node("first", admin=False)
    second = processes.node("second", admin=False)
    second.data_dir = first.data_dir
    second.launch()
    reason = failed_start(second)
    assert "in use" in reason, reason
    # The first node did not notice.
    with first.client() as client:
        assert client.call("ping") == "pong"


@pytest.fixture
def occupied():
    """``(host, port)`` of a listening socket that this test holds."""
    host = next_loopback()
    with socket.socket() as s:
        s.bind((host, 0))
        s.listen()
        yield host, s.getsockname()[1]


def test_request_port_in_use(processes, occupied):
    host, port = occupied
    node = processes.node("late", host=host, admin=False)
    node.port = port
    node.launch()
    reason = failed_start(node)
    assert f"{host}:{port}" in reason and "in use" in reason, reason
    # The failed start bootstrapped nothing: a start on a free port is a fresh cluster.
    assert "bootstrapped cluster" not in node.log()
    node.port = 0
    node.start()
    assert "bootstrapped cluster" in node.log() and "restarting node" not in node.log()


def test_admin_port_in_use(processes, occupied):
    host, port = occupied
    node = processes.node("late_admin", host=host, admin=True)
    node.admin_port = port
    node.launch()
    reason = failed_start(node)
    assert f"{host}:{port}" in reason and "in use" in reason, reason
