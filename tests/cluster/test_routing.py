"""Routing in the simulator: a host that cannot reach a partition's primary, while the rest of
the cluster still can, serves requests for that partition through a relay, applying each
write once; a request to a host that froze ends in Timeout or Unavailable within its time."""

import pytest

from nodedb import errors
from nodedb.reliability.service import ReportingTransport
from nodedb.storage import ChangeType
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import seeds

pytestmark = pytest.mark.usefixtures("seed_report")


def host_id(host):
    return host.node.identity.host_id


def run(cluster, coroutine, timeout=30.0):
    return cluster.wait(coroutine, timeout)


def failure_of(cluster, d, timeout=30.0):
    """Run until *d* fires; :return: its failure and the simulated seconds it took."""
    outcome = []
    d.addBoth(outcome.append)
    took = cluster.run_until(lambda: outcome, timeout=timeout, check_every=0.01)
    assert hasattr(outcome[0], "raiseException"), f"expected a failure, got {outcome[0]!r}"
    return outcome[0], took


def roles(cluster):
    """``(a, b, partition, leader)``: *b* leads *partition* and *a* is the third host; neither
    leads Voting, so that what *a* sees of *b* decides no failover."""
    leader = cluster.leader()
    state = leader.node.voting.state
    others = [h for h in cluster.hosts if h is not leader]
    for b in others:
        led = sorted(p for p, a in state.assignments.items() if a.primary == host_id(b))
        if led:
            a = next(h for h in others if h is not b)
            return a, b, led[0], leader
    raise AssertionError("the leader of Voting leads every partition")


def settled_cluster(seed):
    cluster = SimCluster(seed)
    cluster.start_hosts(3)
    cluster.run_until(cluster.settled, timeout=60)
    return cluster


@pytest.mark.parametrize("one_way", [False, True], ids=["both-ways", "one-way"])
@pytest.mark.parametrize("seed", seeds())
def test_a_host_cut_off_from_a_primary_serves_its_partition_through_a_relay(seed, one_way):
    cluster = settled_cluster(seed)
    a, b, partition, leader = roles(cluster)
    layout = a.node.storage.layout
    epoch = leader.node.voting.state.assignments[partition].epoch
    cluster.network.partition([a.host], [b.host], one_way=one_way)  # one way: A to B is lost
    # A notices that it cannot reach B (its heartbeats fail and the connection drops); B's
    # other peers still reach it, so it stays the partition's primary.
    cluster.run_until(lambda: not a.node.calls.directory.reachable(host_id(b)), timeout=20)
    client = cluster.client(hosts=[a])
    near = layout.first_id(partition)

    async def work():
        key = await client.insert("item", {"n": 1}, near=near)
        first = await client.get("item", key)
        version = await client.update("item", key, {"n": 2}, if_version=first[1])
        second = await client.get("item", key)
        deleted = await client.delete("item", key, if_version=version)
        try:
            await client.get("item", key)
        except errors.NotFound:
            gone = True
        else:
            gone = False
        return key, first, version, second, deleted, gone

    key, first, version, second, deleted, gone = run(cluster, work())
    assert layout.partition_of(key) == partition
    assert first == ({"n": 1}, first[1]) and second == ({"n": 2}, version) and deleted > version and gone
    # Every request went through the third host, which the cut left in touch with both.
    assert a.node.calls.relayed >= 6 and leader.node.calls.relays_served >= 6
    assert b.node.calls.relays_served == 0
    # Each write is in the primary's log once: a relayed write is applied exactly once.
    changes = [e.change_type for e in b.store.log[partition] if e.element_id == key]
    assert changes == [ChangeType.CREATE, ChangeType.UPDATE, ChangeType.DELETE]
    state = leader.node.voting.state.assignments[partition]
    assert state.primary == host_id(b) and state.epoch == epoch, "the cut must not cause a failover"
    # Once the link is back, A reaches B directly again and catches up.
    cluster.network.heal()
    cluster.run_until(cluster.replicated, timeout=60)
    assert key not in a.store.types.get("item", {})


@pytest.mark.parametrize("seed", seeds())
def test_a_request_to_a_paused_host_ends_within_its_timeout(seed):
    cluster = settled_cluster(seed)
    a, b, partition, _leader = roles(cluster)
    client = cluster.client(hosts=[a], timeout=10.0)
    key = run(cluster, client.insert("item", {"n": 1}, near=a.node.storage.layout.first_id(partition)))
    limit = a.node.calls.timeout  # how long A gives a call to another host
    # Routing, replication and voting call peers through the transport that reports
    # timeouts to the reliability scores (gossip reports its own).
    node = a.node
    assert all(isinstance(t, ReportingTransport) for t in (node.calls.transport, node.logsync.transport, node.voting.transport))
    cluster.network.pause(b.host)  # as under SIGSTOP: its connections stay up, silent
    read = a.node.query.get("item", key)
    failure, took = failure_of(cluster, client.update("item", key, {"n": 2}))
    assert failure.check(errors.Timeout), failure  # B may have applied it: outcome unknown
    assert took <= limit + 0.2
    failure, took_read = failure_of(cluster, read)
    assert failure.check(errors.Unavailable, errors.Timeout), failure
    assert took_read <= limit + 0.2
    cluster.network.resume(b.host)
    cluster.run_until(cluster.replicated, timeout=60)
