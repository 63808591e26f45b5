"""Recovery from a lost majority with real processes: three nodes with --replicas 3 lose two
hosts to kill -9 for good; ``nodedb recover --force`` through the survivor brings the cluster
back with every element the survivor held; an old host that comes back on its old data is
fenced (it serves nothing, never a second cluster), and joins again once wiped."""

import shutil

import pytest

from .harness import WireClient, WireError, assert_one_line_error, run_cli, settle_requests, wait_for
from .replicated import start_cluster, status, wait_replicated

pytestmark = pytest.mark.system

RECORD_TYPE = "item"


def unavailable(survivor, hosts):
    seen = {h["id"]: h for h in status(survivor)["hosts"]}
    return all(not seen[host.host_id]["available"] for host in hosts)


def test_recover_through_the_survivor_and_fence_the_old_hosts(processes):
    nodes = start_cluster(processes, 3)
    wait_replicated(nodes, what="three voters and three replicas of every partition")
    with nodes[0].client() as client:
        # Primaries may still be moving to even out the load: Unavailable is sent again.
        ids = settle_requests(client, [("insert", {"type": RECORD_TYPE, "doc": {"n": n}}) for n in range(300)], "inserts")
    wait_replicated(nodes, caught_up=True, what="every copy to hold every insert")
    survivor, dead = nodes[1], [nodes[0], nodes[2]]

    healthy = run_cli("recover", "--force", connect=survivor.address)
    assert_one_line_error(healthy, code=1, contains=("the cluster has a live majority; nothing to recover",))
    without_force = run_cli("recover", connect=survivor.address)
    assert_one_line_error(without_force, code=2, contains=("lost", "--force"))

    for node in dead:
        node.kill()
    wait_for(lambda: unavailable(survivor, dead), timeout=30, what="the survivor to see both hosts down")
    result = run_cli("recover", "--force", connect=survivor.address, timeout=60)
    assert result.returncode == 0, str(result)
    removed = sorted(node.host_id for node in dead)
    assert f"voters {survivor.host_id}; removed hosts {', '.join(removed)}; 64 partitions have new primaries" in result.stdout
    assert "no partition lost every copy" in result.stdout
    survivor.wait_for_log(r"recovery 1 done")

    with survivor.client() as client:
        for n, element_id in enumerate(ids):
            assert client.get(RECORD_TYPE, element_id)[0] == {"n": n}
        new_id = client.call("insert", type=RECORD_TYPE, doc={"n": "new"})
        client.call("update", type=RECORD_TYPE, key=ids[0], doc={"n": "updated"})
        assert client.get(RECORD_TYPE, ids[0])[0] == {"n": "updated"}
    voting = status(survivor)["voting"]
    assert voting["voters"] == [survivor.host_id] and set(voting["members"]) == {survivor.host_id}
    assert voting["leader"] == survivor.host_id

    # An old host comes back on its old data: it learns it was removed and serves nothing.
    old = dead[0]
    old.start()
    old.wait_for_log(r"was removed from cluster \S+ by recovery 1 through host \S+: wipe its data directory")
    assert "wipe its data directory" in status(old)["fenced"]
    with WireClient(old.address) as client, pytest.raises(WireError) as refused:
        client.call("insert", type=RECORD_TYPE, doc={"n": "stale"})
    assert refused.value.type == "Unavailable" and "was removed" in refused.value.message
    with survivor.client() as client:
        assert client.get(RECORD_TYPE, new_id)[0] == {"n": "new"}
        assert not client.call("scan", type=RECORD_TYPE, where={"n": "stale"})["items"]
    voting = status(survivor)["voting"]
    assert voting["voters"] == [survivor.host_id] and old.host_id not in voting["members"]

    # Restarted on its old data again, it refuses to start; wiped, it joins as a new host.
    old.stop()
    old.launch()
    assert old.wait_exit() == 1
    assert "does not start on its old data" in old.log()
    shutil.rmtree(old.data_dir)
    old.args += ["--seed", survivor.address]
    old.start()
    wait_for(lambda: old.host_id in status(survivor)["voting"]["members"], timeout=30, what="the wiped host to join")
    assert old.host_id not in removed
