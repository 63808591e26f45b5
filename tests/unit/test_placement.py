"""Where things are (nodedb.placement): the agreed map as Voting announces it, the hosts
that lead, hold and take inserts, how to reach a host, and this host's own allocation and
free space. Every collaborator is a plain stand-in; nothing here needs a reactor."""

from types import SimpleNamespace

import pytest

from nodedb import errors
from nodedb.gossip.state import HostEntry
from nodedb.ids import IdAllocator, IdLayout
from nodedb.placement import FREE_SPACE_STEP, Allocation, ClusterChanges, Directory, LocalSpace, Placement
from nodedb.storage.memory import MemoryStorage
from nodedb.topology.vivaldi import Coordinate
from nodedb.voting.policy import VotingSettings
from nodedb.voting.state import Assignment, ClusterState, sequence_range

ROOM = VotingSettings.min_free_bytes
LAYOUT = IdLayout()


def agreed(assignments, members=(), cluster_id="c"):
    state = ClusterState()
    state.cluster_id = cluster_id
    state.partitions = len(assignments)
    state.members = {host: {"address": f"{host}:7400"} for host in members}
    state.assignments = {p: Assignment(tuple(replicas), epoch) for p, (replicas, epoch) in assignments.items()}
    return state


def entry(host, x=0.0, free=ROOM, syncing=(), cluster_id="c"):
    return HostEntry(
        host, 1, 0, f"{host}:7400", free_bytes=free, coordinate=Coordinate(x=x), syncing=syncing, cluster_id=cluster_id
    )


class Hosts:
    """Gossip and reliability as this host ("a", at the origin) sees the others."""

    def __init__(self, *entries, down=()):
        self.ni = SimpleNamespace(entries={e.host_id: e for e in entries})
        self.coordinate = Coordinate()
        self.down = set(down)

    def is_available(self, host):
        return host not in self.down

    def describe(self, host):
        return {"available": host not in self.down, "since": 5.0}

    def score(self, host):
        return 0.0


def agreed_changes(state):
    changes = ClusterChanges()
    changes.changed(state)
    return changes


def placement(state, hosts, syncing=(), active=True, free=ROOM):
    logsync = SimpleNamespace(syncing=lambda: sorted(syncing), is_primary=lambda p: True)
    allocation = SimpleNamespace(active=active)
    space = LocalSpace(SimpleNamespace(stats=lambda: {"free_bytes": free}))
    return Placement("a", agreed_changes(state), hosts, hosts, logsync, allocation, space)


def test_changes_hold_the_new_state_before_their_subscribers_hear_of_it_in_order():
    changes, heard = ClusterChanges(), []
    assert changes.state.cluster_id is None and changes.state.assignments == {}
    changes.subscribe(lambda state: heard.append(("first", state is changes.state)))
    changes.subscribe(lambda state: heard.append(("second", state.cluster_id)))
    changes.changed(agreed({}))
    assert heard == [("first", True), ("second", "c")]


def test_the_primary_of_a_partition_and_of_none():
    p = placement(agreed({0: (["b", "a"], 1), 1: ([], 0)}), Hosts())
    assert p.primary_of(0) == "b" and p.partitions() == 2
    for partition in (1, 7):
        with pytest.raises(errors.Unavailable, match=f"partition {partition} has no primary"):
            p.primary_of(partition)


def test_inserts_go_to_primaries_with_room_that_are_available():
    state = agreed({0: (["b"], 0), 1: (["c"], 0), 2: (["d"], 0), 3: (["e"], 0), 4: (["b"], 0)})
    hosts = Hosts(entry("b"), entry("c", free=ROOM - 1), entry("d"), down={"d"})  # e: not in the NI
    assert placement(state, hosts).insert_hosts() == ["b"]


def test_this_host_inserts_only_while_it_leads_a_partition_with_room():
    state = agreed({})
    assert placement(state, Hosts()).can_insert()
    assert not placement(state, Hosts(), active=False).can_insert()
    assert not placement(state, Hosts(), free=ROOM - 1).can_insert()


def test_the_nearest_replica_is_this_host_while_its_copy_is_caught_up():
    state = agreed({0: (["b", "a", "c"], 1)})
    hosts = Hosts(entry("b", x=0.9), entry("c", x=0.1))
    assert placement(state, hosts).nearest_replica(0) == "a"
    assert placement(state, hosts, syncing=[0]).nearest_replica(0) == "c"


def test_the_nearest_replica_skips_copies_that_are_behind_or_down_and_falls_back_to_the_primary():
    state = agreed({0: (["b", "c", "d"], 1), 1: ([], 0)})
    hosts = Hosts(entry("b", x=0.9), entry("c", x=0.1, syncing=(0,)), entry("d", x=0.2), down={"d"})
    assert placement(state, hosts).nearest_replica(0) == "b"
    hosts.down = {"b", "d"}
    assert placement(state, hosts).nearest_replica(0) == "b"  # no copy is usable: the primary
    with pytest.raises(errors.Unavailable, match="no replica"):
        placement(state, hosts).nearest_replica(1)


def test_host_views_weigh_every_host_of_the_ni_this_host_as_available():
    hosts = Hosts(entry("a", x=0.5), entry("b", syncing=(3,)), down={"a", "b"})
    views = placement(agreed({}), hosts).host_views()
    assert views["a"].available and views["a"].unavailable_since is None
    assert views["a"].coordinate == hosts.coordinate  # its own, not the one it last announced
    assert not views["b"].available and views["b"].unavailable_since == 5.0 and views["b"].syncing == {3}


def test_present_hosts_are_the_available_ones_of_this_cluster_or_of_none_yet():
    hosts = Hosts(entry("a"), entry("b", cluster_id=""), entry("c", cluster_id="other"), entry("d"), down={"d"})
    assert placement(agreed({}), hosts).present_hosts("c") == {"a": "a:7400", "b": "b:7400"}


def test_this_host_is_leading_once_every_partition_it_is_primary_of_is_ready():
    ready = set()
    logsync = SimpleNamespace(syncing=list, is_primary=lambda p: p in ready)
    changes = agreed_changes(agreed({0: (["a"], 1), 1: (["b"], 1), 2: (["a"], 1)}))
    p = Placement("a", changes, Hosts(), Hosts(), logsync, None, None)
    assert not p.leading()
    ready.update({0, 2})
    assert p.leading()
    changes.changed(ClusterState())  # no decision yet
    assert not p.leading()


def test_addresses_come_from_the_ni_then_from_the_agreed_members():
    transport = SimpleNamespace(reachable=lambda address: address != "c:7400")
    hosts = Hosts(HostEntry("b", 1, 0, "b:7500"), down={"d"})
    directory = Directory("a", agreed_changes(agreed({}, members=["a", "b", "c", "d", "e"])), hosts, hosts, transport)
    assert directory.address_of("b") == "b:7500"
    assert directory.address_of("c") == "c:7400"
    assert directory.address_of("x") is None
    assert [h for h in "bcdex" if directory.reachable(h)] == ["b", "e"]
    assert directory.relays("e") == ["b"]


def test_allocation_follows_the_partitions_this_host_is_primary_of_in_their_epochs_range():
    storage = MemoryStorage()
    storage.open()
    ids = IdAllocator(LAYOUT, {})
    allocation = Allocation("a", ids, storage, held=[])
    assert not allocation.active
    allocation.update(agreed({0: (["b", "a"], 1), 3: (["a"], 2)}))
    assert allocation.active and ids.partitions() == [3]
    assert LAYOUT.sequence_of(ids.allocate(3)) == sequence_range(2)[0]
    before = ids.allocate(3)
    allocation.update(agreed({0: (["b", "a"], 2), 3: (["a"], 2)}))  # this host's part unchanged
    assert ids.allocate(3) == before + 1
    allocation.update(agreed({3: (["b", "a"], 3)}))
    assert not allocation.active and ids.partitions() == []


def test_free_space_is_announced_in_steps_and_checked_exactly():
    free = [5 * FREE_SPACE_STEP + 123]
    space = LocalSpace(SimpleNamespace(stats=lambda: {"free_bytes": free[0]}))
    assert space.announced() == 5 * FREE_SPACE_STEP
    free[0] = ROOM - 1
    assert space.has_room()  # as of the last reading
    space.announced()
    assert not space.has_room()
