"""Health you can see and wait on (DESIGN 2.1): ``nodedb status --wait healthy``, ``GET
/health`` and the ``health`` object of ``/status``, on a real three-host cluster before and
after one host is killed."""

import json
import re
import sys

import pytest

from .harness import free_port, run_cli, wait_for
from .replicated import PARTITIONS, start_cluster, status

pytestmark = pytest.mark.system

HEALTH_FIELDS = {
    "healthy", "problems", "leader", "voters", "partitions", "partitions_without_primary", "under_replicated",
    "fault_tolerance",
}


def health(node):
    """``(HTTP status, body)`` of the node's ``GET /health``."""
    code, content_type, body = node.http_get("/health", timeout=5.0)
    assert content_type == "application/json", content_type
    return code, json.loads(body)


def healthy_with(nodes, fault_tolerance, live_voters):
    """The /health body of the first of *nodes* once every one of them answers 200 with this
    fault tolerance and this many live voters, else None."""
    bodies = []
    for node in nodes:
        try:
            code, body = health(node)
        except OSError:
            return None
        if code != 200 or body["fault_tolerance"] != fault_tolerance or body["voters"]["have"] != live_voters:
            return None
        bodies.append(body)
    return bodies[0]


def first_status_line(node, line):
    """``nodedb status`` on *node* starts with *line*; :return: its output lines, or None."""
    result = run_cli("status", connect=node.address)
    return result.stdout_lines if result.returncode == 0 and result.stdout_lines[:1] == [line] else None


def test_a_cluster_is_waited_on_until_healthy_then_shows_a_dead_host_as_down(processes):
    first = processes.node("n0")
    first.port = free_port(first.host)
    # Waiting starts before any node listens: the command tries again until one answers.
    waiting = processes.spawn(
        [sys.executable, "-m", "nodedb", "--connect", f"{first.host}:{first.port}", "status", "--wait", "healthy"],
        processes.directory / "wait.out",
    )
    nodes = start_cluster(processes, 3, first=first)
    assert waiting.wait(timeout=30) == 0, (processes.directory / "wait.out").read_text()
    assert (processes.directory / "wait.out").read_text().startswith("healthy: can lose ")

    for node in nodes:
        result = run_cli("status", "--wait", "healthy", "--timeout", "30", connect=node.address)
        assert result.returncode == 0, str(result)
    # Healthy as soon as majorities are live; fully replicated, it can lose one host.
    body = wait_for(lambda: healthy_with(nodes, 1, 3), timeout=30, what="fault tolerance 1 everywhere")
    assert set(body) == HEALTH_FIELDS and body["problems"] == []
    assert body["voters"] == {"have": 3, "want": 3}
    assert body["partitions_without_primary"] == {"count": 0, "first": []}
    assert body["under_replicated"] == {"count": 0, "first": []}
    assert set(status(nodes[0])["health"]) == HEALTH_FIELDS
    line = f"healthy: can lose 1 host; {PARTITIONS}/{PARTITIONS} partitions fully replicated"
    wait_for(lambda: first_status_line(nodes[0], line), timeout=10, what=f"nodedb status to say {line!r}")

    victim, survivors = nodes[2], nodes[:2]
    victim.kill()
    # The survivors fail its partitions over: healthy again, with nothing to spare.
    body = wait_for(lambda: healthy_with(survivors, 0, 2), timeout=20, what="healthy again after failover")
    assert body["healthy"] and body["partitions_without_primary"]["count"] == 0
    assert body["under_replicated"]["count"] == PARTITIONS
    assert body["problems"] == [f"{PARTITIONS} partitions under-replicated (2 of 3 copies live and caught up)"]
    result = run_cli("status", "--wait", "healthy", "--timeout", "10", connect=survivors[0].address)
    assert result.returncode == 0, str(result)
    health_line, _voting, header, *rows = result.stdout_lines
    assert health_line == f"healthy: can lose 0 hosts; 0/{PARTITIONS} partitions fully replicated"
    column = header.index("STATUS")
    dead = [row for row in rows if row.startswith(victim.host_id)]
    assert len(dead) == 1 and re.match(r"(write|read|proposal) \(down\)  ", dead[0][column:]), result.stdout
