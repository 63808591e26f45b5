"""The NI and gossip state machine, driven by hand: merging, rumours, decay, anti-entropy."""

import random

import pytest

from nodedb.gossip.state import EntryError, Gossip, GossipSettings, HostEntry, NetworkInformation


def entry(host, generation=1, version=0, **fields):
    return HostEntry(host, generation, version, f"127.0.0.{int(host[1:]) + 1}:7400", "write", **fields)


def test_merge_keeps_the_newest_and_the_checksum_ignores_order():
    a, b = NetworkInformation(), NetworkInformation()
    entries = [entry("h1", 1, 3), entry("h2", 1, 1), entry("h1", 1, 5), entry("h1", 2, 0), entry("h1", 1, 9)]
    for e in entries:
        a.merge(e)
    for e in reversed(entries):
        b.merge(e)
    assert a.entries["h1"].stamp == (2, 0)  # a new generation supersedes any old version
    assert (a.checksum, a.size) == (b.checksum, b.size)
    assert not a.merge(entry("h1", 1, 100))


def test_compare_finds_what_each_side_lacks():
    a, b = NetworkInformation(), NetworkInformation()
    for e in (entry("h1", 1, 2), entry("h2", 1, 1)):
        a.merge(e)
    for e in (entry("h1", 1, 1), entry("h3", 1, 1)):
        b.merge(e)
    newer_here, newer_there = a.compare(b.digest())
    assert sorted(e.host_id for e in newer_here) == ["h1", "h2"]
    assert newer_there == ["h3"]


def test_wire_form_round_trips():
    e = entry("h1", 3, 7, partitions=(1, 2), ranges=((5, 9),), free_bytes=10, cpu_rating=2.0)
    assert HostEntry.from_wire(e.to_wire()) == e


@pytest.mark.parametrize(
    "change",
    [
        {"host": ""},
        {"host": 5},
        {"gen": -1},
        {"ver": "1"},
        {"status": "king"},
        {"address": "x" * 1000},
        {"partitions": [1, -2]},
        {"ranges": [[5, 1]]},
        {"coord": [0, 0]},
        {"updated": float("nan")},
    ],
)
def test_malformed_entries_are_refused(change):
    wire = entry("h1").to_wire()
    wire.update(change)
    with pytest.raises(EntryError):
        HostEntry.from_wire(wire)


def test_a_rumour_decays_and_dies_out():
    g = Gossip(entry("h0"), random.Random(1), GossipSettings(fanout=1, decay=3))
    g.merge_entries([entry("h1")], decay=0)
    assert g.rumours == {"h0": 3}
    for expected in (2, 1):
        assert len(g.round()) == 1
        assert g.rumours == {"h0": expected}
    g.round()
    assert g.rumours == {}
    assert g.round()[0][1]["rumours"] == []  # still pushes its checksum, with nothing hot


def test_receiver_keeps_news_hot_with_one_less():
    sender = Gossip(entry("h0"), random.Random(1), GossipSettings(fanout=1, decay=4))
    receiver = Gossip(entry("h1"), random.Random(2), GossipSettings(decay=4))
    sender.merge_entries([receiver.local], decay=0)
    [(target, message)] = sender.round()
    assert target == "h1"
    reply = receiver.receive_push(message)
    assert receiver.rumours["h0"] == 3
    assert "digest" not in reply  # it learned something: no pull needed yet


def test_a_push_that_teaches_nothing_while_the_nis_differ_starts_a_pull():
    a = Gossip(entry("h0"), random.Random(1), GossipSettings(fanout=1, decay=1))
    b = Gossip(entry("h1"), random.Random(2), GossipSettings(decay=1))
    a.merge_entries([b.local, entry("h2")], decay=0)
    b.merge_entries([a.local, entry("h3")], decay=0)
    a.rumours.clear()
    [(_, message)] = a.round()
    reply = b.receive_push(message)
    assert "digest" in reply
    sync = a.plan_sync(reply)
    assert [e["host"] for e in sync["entries"]] == ["h2"] and sync["want"] == ["h3"]
    answer = b.receive_sync(sync)
    a.merge_entries([HostEntry.from_wire(e) for e in answer["entries"]], decay=1)
    assert a.converged_with(b)


def test_an_entry_claiming_to_be_ours_is_refuted():
    g = Gossip(entry("h0", 1, 4), random.Random(1))
    forged = entry("h0", 1, 9)
    g.merge_entries([forged])
    assert g.local.stamp == (1, 10)
    assert g.local.address == entry("h0").address


def test_update_local_bumps_the_version_and_starts_a_rumour():
    g = Gossip(entry("h0"), random.Random(1), GossipSettings(decay=5))
    g.rumours.clear()
    g.update_local(12.5, status="read", free_bytes=99)
    assert g.local.stamp == (1, 1) and g.local.status == "read" and g.local.updated == 12.5
    assert g.rumours == {"h0": 5}


def push_pull_round(nodes, by_id, exclude=()):
    """Every node gossips once; replies and syncs delivered at once (no network)."""
    for g in nodes:
        for target, message in g.round(exclude=exclude):
            peer = by_id[target]
            sync = g.plan_sync(peer.receive_push(message))
            if sync:
                answer = peer.receive_sync(sync)
                g.merge_entries([HostEntry.from_wire(e) for e in answer["entries"]], decay=1)


@pytest.mark.parametrize("seed", range(5))
def test_a_change_reaches_every_host_in_logarithmic_rounds(seed):
    rng = random.Random(seed)
    nodes = [Gossip(entry(f"h{i}"), random.Random(rng.random())) for i in range(200)]
    by_id = {g.host_id: g for g in nodes}
    everyone = [g.local for g in nodes]
    for g in nodes:
        g.merge_entries(everyone, decay=0)
        g.rumours.clear()
    nodes[17].update_local(1.0, status="read")
    rounds = 0
    while not all(g.converged_with(nodes[17]) for g in nodes):
        push_pull_round(nodes, by_id)
        rounds += 1
        assert rounds <= 12, f"no convergence in 12 rounds (seed {seed})"
    assert all(g.ni.entries["h17"].status == "read" for g in nodes)
