"""Recovery from a lost majority in the simulator: two of three hosts crash for good, a
recovery through the survivor brings back every element it held, and the two old hosts,
restarted together on their old stores, are fenced: never a second cluster, never a
disruption of the recovered one."""

import pytest
from twisted.internet import defer

from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


@pytest.mark.parametrize("seed", seeds())
def test_recover_through_the_survivor_then_fence_the_old_hosts_that_return_together(seed):
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.settled, timeout=60)
    survivor, dead = cluster.hosts[1], [cluster.hosts[0], cluster.hosts[2]]
    dead_ids = sorted(host_id(h) for h in dead)
    client = cluster.client(hosts=[survivor])
    ids = cluster.wait(defer.gatherResults([client.insert("item", {"n": n}) for n in range(40)]))
    cluster.run_until(cluster.replicated, timeout=30)
    with pytest.raises(errors.InvalidRequest, match="live majority; nothing to recover"):
        cluster.wait(client.recover())

    for host in dead:
        cluster.crash(host)
    cluster.run_until(lambda: not any(survivor.node.reliability.is_available(h) for h in dead_ids), timeout=30)
    report = cluster.wait(client.recover(), timeout=60)
    voting = survivor.node.voting
    assert report["voters"] == [host_id(survivor)] and report["removed"] == dead_ids
    assert report["new_primaries"] == list(range(voting.state.partitions)) and report["lost"] == []
    assert set(voting.state.members) == {host_id(survivor)} and set(voting.state.fenced) == set(dead_ids)
    docs = cluster.wait(defer.gatherResults([client.get("item", key) for key in ids]))
    assert [doc for doc, _version in docs] == [{"n": n} for n in range(40)]
    cluster.wait(client.update("item", ids[0], {"n": "updated"}))
    added = cluster.wait(client.insert("item", {"n": "added"}))

    # Both old hosts come back together: between them they hold a majority of the old voters
    # and of every old replica set. Each learns from the survivor that it was removed.
    term = voting.raft.term
    for host in dead:
        cluster.restart(host, seeds=[survivor.address])
    cluster.run_until(lambda: all(h.node.fence.reason for h in dead), timeout=30)
    assert all("wipe its data directory" in h.node.fence.reason for h in dead)
    cluster.run(10)
    assert voting.raft.state == "leader" and voting.raft.term == term
    assert voting.raft.config.voters == {host_id(survivor)} and set(voting.state.members) == {host_id(survivor)}
    stale = cluster.client(hosts=[dead[0]], timeout=3.0)
    with pytest.raises(errors.Unavailable, match="was removed"):
        cluster.wait(stale.insert("item", {"n": "stale"}))
    assert not any(h.node.logsync.is_primary(p) for h in dead for p in range(voting.state.partitions))
    docs = cluster.wait(defer.gatherResults([client.get("item", key) for key in (ids[0], added)]))
    assert [doc for doc, _version in docs] == [{"n": "updated"}, {"n": "added"}]
