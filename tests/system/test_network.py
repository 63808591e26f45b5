"""A network of real nodes on loopback: join by seed, see a killed host go and come back."""

import pytest

from .harness import run_cli, wait_for

pytestmark = pytest.mark.system


def host_view(observer, subject):
    """*subject* as *observer*'s ``/status`` shows it (None while unknown there)."""
    for host in observer.admin_status()["hosts"]:
        if host["id"] == subject.host_id:
            return host
    return None


def test_four_nodes_join_by_seed_and_notice_a_killed_host_and_its_return(processes):
    seed = processes.start_node("seed")
    # A seed that is down first, then the live one: joining tries them in turn.
    dead_seed = "127.0.0.1:9"
    others = [processes.start_node(f"n{i}", args=["--seed", dead_seed, "--seed", seed.address]) for i in (1, 2, 3)]
    nodes = [seed, *others]

    def everyone_knows_everyone():
        return all(len(node.admin_status()["hosts"]) == 4 for node in nodes)

    wait_for(everyone_knows_everyone, what="every /status to list the four hosts")
    for node in nodes:
        hosts = {h["id"]: h for h in node.admin_status()["hosts"]}
        assert set(hosts) == {n.host_id for n in nodes}
        assert {h["address"] for h in hosts.values()} == {n.address for n in nodes}
        assert hosts[seed.host_id]["status"] == "write"
        assert all("unreliability" in h and "coordinate" in h for h in hosts.values())

    table = run_cli("status", connect=others[0].address)
    assert table.returncode == 0, table
    # The health line, the Voting line, the header and the four hosts.
    assert len(table.stdout_lines) == 7 and all(n.host_id in table.stdout for n in nodes), table
    assert table.stdout_lines[0].startswith(("healthy: ", "unhealthy: ")), table

    victim = others[1]
    watchers = [n for n in nodes if n is not victim]
    victim.kill()
    wait_for(
        lambda: all(host_view(w, victim)["available"] is False for w in watchers),
        what="every other host to mark the killed host unavailable",
    )
    assert all(host_view(w, victim)["unreliability"] > 0 for w in watchers)

    victim.start()  # same data directory, port and seeds
    wait_for(
        lambda: all(host_view(w, victim)["available"] and host_view(w, victim)["generation"] == 2 for w in watchers),
        what="every other host to see the restarted host available, in its new generation",
    )
    for node in nodes:
        assert not node.problems(), node.describe()
