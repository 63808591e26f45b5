"""Where things are: which host leads a partition, which one is nearest, which have room for new
elements, how to reach a host; and this host's own part (where it allocates ids, its free
space).

The answers come from the agreed partition map (:class:`ClusterChanges`), the network
information (gossip) and reliability, as this host sees them now. Routing
(:class:`~nodedb.query.router.Router`), calls to other hosts
(:class:`~nodedb.query.calls.HostCalls`), Voting and the status page ask here.
"""

from nodedb import errors
from nodedb.query.relay import rank_relays
from nodedb.topology.vivaldi import distance
from nodedb.voting.policy import HostView, VotingSettings
from nodedb.voting.state import ClusterState, sequence_range

#: Free space is announced in steps of this many bytes, so that the NI does not change with
#: every write.
FREE_SPACE_STEP = 64 * 1024 * 1024


def has_room(free_bytes):
    """Whether a host with *free_bytes* takes new elements."""
    return free_bytes >= VotingSettings.min_free_bytes


class ClusterChanges:
    """The agreed cluster state (an :class:`~nodedb.interfaces.IClusterView`) as Voting last
    announced it (``on_change``), and the reactions to its changes.

    It exists before Voting does, so that what Voting needs (LogSync, addresses) can read the
    map too. Subscribers are called in the order they subscribed, once :attr:`state` is the
    new state.
    """

    def __init__(self):
        self.state = ClusterState()
        self._subscribers = []

    def subscribe(self, callback):
        """Call ``callback(state)`` after every change of the agreed state."""
        self._subscribers.append(callback)

    def changed(self, state):
        self.state = state
        for callback in self._subscribers:
            callback(state)


class Directory:
    """How to reach a host: its address, whether this host reaches it directly, and through
    which hosts otherwise.

    :param transport: the :class:`~nodedb.interfaces.IPeerTransport` (whose connections are
        known to be up or down).
    """

    def __init__(self, host_id, changes, gossip, reliability, transport):
        self.host_id = host_id
        self._changes = changes
        self._gossip = gossip
        self._reliability = reliability
        self._transport = transport

    def address_of(self, host_id):
        """``"host:port"`` of *host_id* from the NI, else from the agreed members; None."""
        entry = self._gossip.ni.entries.get(host_id)
        if entry is not None:
            return entry.address
        member = self._changes.state.members.get(host_id)
        return member["address"] if member else None

    def reachable(self, host_id):
        """Whether this host can call *host_id* directly now: its connection is not known to
        be down and the host is available from here."""
        address = self.address_of(host_id)
        return address is not None and self._transport.reachable(address) and self._reliability.is_available(host_id)

    def relays(self, target):
        """Hosts this one reaches that could relay a call to *target*, best first."""
        state = self._changes.state
        candidates = [h for h in state.members if h not in (self.host_id, target) and self.reachable(h)]
        return rank_relays(target, candidates, state.assignments, self._reliability.score)


class Placement:
    """Which host serves a partition, and which hosts take new elements.

    :param logsync: the :class:`~nodedb.interfaces.ILogSync` (which partitions this host has
        not caught up on).
    :param allocation: this host's :class:`Allocation`.
    :param space: this host's :class:`LocalSpace`.
    """

    def __init__(self, host_id, changes, gossip, reliability, logsync, allocation, space):
        self.host_id = host_id
        self._changes = changes
        self._gossip = gossip
        self._reliability = reliability
        self._logsync = logsync
        self._allocation = allocation
        self._space = space

    def partitions(self):
        """How many partitions the cluster has (0 before the first decision)."""
        return self._changes.state.partitions

    def primary_of(self, partition):
        """The host id the agreed map names primary of *partition*; :raise Unavailable: if none."""
        assignment = self._changes.state.assignments.get(partition)
        if assignment is None or assignment.primary is None:
            raise errors.Unavailable(f"partition {partition} has no primary now")
        return assignment.primary

    def leading(self):
        """Whether the partitions the agreed map gives this host are ready to take writes here."""
        state = self._changes.state
        return state.cluster_id is not None and all(
            self._logsync.is_primary(p) for p in state.primary_partitions(self.host_id)
        )

    def can_insert(self):
        """Whether this host takes new elements itself: it leads a partition and has room."""
        return self._allocation.active and self._space.has_room()

    def insert_hosts(self):
        """Hosts that are primary of some partition, reachable, with room for new elements."""
        primaries = {a.primary for a in self._changes.state.assignments.values() if a.primary is not None}
        hosts = []
        for host_id in sorted(primaries):
            entry = self._gossip.ni.entries.get(host_id)
            if entry is not None and has_room(entry.free_bytes) and self._reliability.is_available(host_id):
                hosts.append(host_id)
        return hosts

    def nearest_replica(self, partition):
        """The closest host with a current copy of *partition* (this one when it has one)."""
        assignment = self._changes.state.assignments.get(partition)
        if assignment is None or not assignment.replicas:
            raise errors.Unavailable(f"partition {partition} has no replica now")
        if self.host_id in assignment.replicas and partition not in self._logsync.syncing():
            return self.host_id
        me = self._gossip.coordinate
        best = None
        for host_id in assignment.replicas:
            entry = self._gossip.ni.entries.get(host_id)
            if entry is None or partition in entry.syncing or not self._reliability.is_available(host_id):
                continue
            rank = distance(me, entry.coordinate)
            if best is None or rank < best[0]:
                best = (rank, host_id)
        return best[1] if best is not None else assignment.primary

    def host_views(self):
        """``{host id: HostView}``: every host of the NI as the Voting policy weighs it."""
        views = {}
        for host_id, entry in self._gossip.ni.entries.items():
            health = self._reliability.describe(host_id)
            own = host_id == self.host_id
            views[host_id] = HostView(
                host_id=host_id,
                address=entry.address,
                cluster_id=entry.cluster_id,
                available=own or health["available"],
                unavailable_since=None if own or health["available"] else health["since"],
                free_bytes=entry.free_bytes,
                cpu_rating=entry.cpu_rating,
                coordinate=self._gossip.coordinate if own else entry.coordinate,
                partitions=frozenset(entry.partitions),
                syncing=frozenset(entry.syncing),
            )
        return views

    def present_hosts(self, cluster_id):
        """``{host id: address}`` of the hosts of *cluster_id* that this one sees now (a
        joiner names no cluster until the next gossip round after its join: it counts)."""
        return {
            h: e.address
            for h, e in self._gossip.ni.entries.items()
            if e.cluster_id in (cluster_id, "") and self._reliability.is_available(h)
        }


class Allocation:
    """Where this host allocates ids: in the partitions the agreed map makes it primary of,
    each within its epoch's range (:meth:`update` follows the map).

    :param ids: the :class:`~nodedb.interfaces.IIdAllocator`, which allocates in *held* at
        first.
    """

    def __init__(self, host_id, ids, storage, held):
        self._host_id = host_id
        self._ids = ids
        self._storage = storage
        self._primaries = None  # {partition: epoch}, as last applied
        #: Whether this host leads a partition to insert into.
        self.active = bool(held)

    def update(self, state):
        primaries = state.primary_partitions(self._host_id)
        if primaries == self._primaries:
            return
        self._primaries = primaries
        self._ids.set_partitions(
            {p: self._storage.partition_state(p).max_sequence for p in sorted(primaries)},
            {p: sequence_range(epoch) for p, epoch in primaries.items()},
        )
        self.active = bool(primaries)


class LocalSpace:
    """The free space of this host's store: announced in steps, and kept exact for the check
    of inserts, refreshed with every gossip round rather than read for every insert."""

    def __init__(self, storage):
        self._storage = storage
        self._free = None

    def announced(self):
        """Read the free space again; :return: it as the NI announces it."""
        self._free = self._storage.stats()["free_bytes"]
        return self._free // FREE_SPACE_STEP * FREE_SPACE_STEP

    def has_room(self):
        if self._free is None:
            self.announced()
        return has_room(self._free)
