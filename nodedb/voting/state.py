"""The cluster state that Voting agrees on: members, and who holds which partition.

Every host applies the same committed decisions in the same order, so every host has the
same :class:`ClusterState`. A decision that does not fit the state when it is applied (an
unknown host, a stale epoch) changes nothing, identically everywhere.

*Identifier ranges.* A partition's primary allocates ids in it. Each ``(partition, epoch)``
owns its own slice of the partition's sequence space, ``[epoch * 2^36 + 1, (epoch + 1) *
2^36)``, and a new primary always takes a new epoch. So ids stay unique across primaries even
when the new primary has not seen a single id its predecessor handed out.
"""

from dataclasses import dataclass

#: Sequence numbers per (partition, epoch): 68.7 billion ids before a partition needs a new
#: epoch, and 4,096 epochs in the 48-bit sequence space.
EPOCH_BITS = 36
MAX_EPOCH = (1 << (48 - EPOCH_BITS)) - 1


def sequence_range(epoch):
    """The sequence numbers ``(first, last)`` that the primary of *epoch* may hand out."""
    first = (epoch << EPOCH_BITS) + 1 if epoch else 1
    return first, ((epoch + 1) << EPOCH_BITS) - 1


@dataclass(frozen=True)
class Assignment:
    """A partition's replica set (primary first) and epoch."""

    replicas: tuple = ()
    epoch: int = 0

    @property
    def primary(self):
        return self.replicas[0] if self.replicas else None

    def to_data(self):
        return [list(self.replicas), self.epoch]

    @classmethod
    def from_data(cls, data):
        replicas, epoch = data
        return cls(tuple(replicas), epoch)


class ClusterState:
    """Members and the partition map, changed only by :meth:`apply`."""

    def __init__(self):
        self.cluster_id = None
        self.partitions = 0
        self.replicas = 0
        # host id -> {"address": ..., "accepted": ..., "admitted": ...}; a member is admitted
        # once it is all the cluster wants it to be (a voter where a voter is wanted, its copies
        # placed and caught up): until then it shows status ``proposal``.
        self.members = {}
        self.removed = {}  # host id -> when it was removed
        self.assignments = {}  # partition -> Assignment
        self.decisions = 0
        #: Recoveries from a lost majority so far, and the hosts each one removed for good:
        #: host id -> ``{"recovery": n, "by": host id, "at": time}``.
        self.recoveries = 0
        self.fenced = {}

    # -- reading ----------------------------------------------------------------------------

    def primary_partitions(self, host_id):
        """``{partition: epoch}`` of the partitions *host_id* is primary for."""
        return {p: a.epoch for p, a in self.assignments.items() if a.primary == host_id}

    def admitted(self, host_id):
        """Whether *host_id* is a member the cluster has fully taken in (members from before
        admission existed count as admitted)."""
        member = self.members.get(host_id)
        return member is not None and member.get("admitted", True)

    def replica_partitions(self, host_id):
        return sorted(p for p, a in self.assignments.items() if host_id in a.replicas)

    def holdings(self):
        """``{host: {"primary": n, "replicas": m}}``: how many partitions each member (and
        any other host the map names) leads and holds."""
        holdings = {host: {"primary": 0, "replicas": 0} for host in self.members}
        for assignment in self.assignments.values():
            for position, host in enumerate(assignment.replicas):
                counts = holdings.setdefault(host, {"primary": 0, "replicas": 0})
                counts["replicas"] += 1
                counts["primary"] += position == 0
        return holdings

    def load(self):
        """``{host id: number of partitions it holds}`` (every member listed)."""
        counts = {host: 0 for host in self.members}
        for assignment in self.assignments.values():
            for host in assignment.replicas:
                counts[host] = counts.get(host, 0) + 1
        return counts

    # -- applying ---------------------------------------------------------------------------

    def apply(self, decision):
        """Apply one committed decision. :return: True if it changed the state."""
        self.decisions += 1
        if type(decision) is not dict:
            return False
        handler = getattr(self, "_apply_" + str(decision.get("op")), None)
        if handler is None:
            return False
        try:
            return handler(decision)
        except (AttributeError, KeyError, TypeError, ValueError):
            return False  # malformed: ignored the same way on every host

    def _apply_bootstrap(self, d):
        if self.cluster_id is not None:
            return False
        partitions = int(d["partitions"])
        host, at = str(d["host"]), float(d["at"])
        members = {host: {"address": str(d["address"]), "accepted": at, "admitted": True}}
        # A cluster formed with --bootstrap-expect starts with every expected host a member
        # (admitted once it is a voter where wanted and caught up) and its replica sets placed.
        for other, address in d.get("members", {}).items():
            members.setdefault(str(other), {"address": str(address), "accepted": at, "admitted": False})
        placed = d.get("map")
        if placed is None:
            assignments = {p: Assignment((host,), 0) for p in range(partitions)}
        else:
            assignments = {int(p): Assignment.from_data(a) for p, a in placed.items()}
            if set(assignments) != set(range(partitions)) or any(
                h not in members for a in assignments.values() for h in a.replicas
            ):
                raise ValueError("a bootstrap map names every partition, and only members")
        self.cluster_id = str(d["cluster"])
        self.partitions = partitions
        self.replicas = int(d["replicas"])
        self.members = members
        self.assignments = assignments
        return True

    def _apply_accept(self, d):
        host, address = str(d["host"]), str(d["address"])
        if host in self.fenced:
            return False  # removed by a recovery: it may come back only wiped, as a new host
        known = self.members.get(host)
        if known is not None and known["address"] == address:
            return False
        if known is None:
            self.members[host] = {"address": address, "accepted": float(d["at"]), "admitted": False}
        else:
            self.members[host] = {**known, "address": address}
        self.removed.pop(host, None)
        return True

    def _apply_admit(self, d):
        member = self.members.get(str(d["host"]))
        if member is None or member.get("admitted", True):
            return False
        member["admitted"] = True
        return True

    def _apply_remove(self, d):
        host = str(d["host"])
        if host not in self.members:
            return False
        del self.members[host]
        self.removed[host] = float(d["at"])
        for partition, assignment in list(self.assignments.items()):
            if host in assignment.replicas:
                replicas = tuple(h for h in assignment.replicas if h != host)
                epoch = assignment.epoch
                if assignment.primary == host:
                    epoch += 1
                    if epoch > MAX_EPOCH:
                        # Every id range of the partition is used up: no primary can take it
                        # over without reusing ids, so it takes no more writes.
                        replicas, epoch = (), assignment.epoch
                self.assignments[partition] = Assignment(replicas, epoch)
        return True

    def _apply_assign(self, d):
        changed = False
        for key, data in d["map"].items():
            partition = int(key)
            current = self.assignments.get(partition)
            new = Assignment.from_data(data)
            if current is None or new.epoch < current.epoch or new.epoch > MAX_EPOCH:
                continue
            if any(host not in self.members for host in new.replicas) or len(set(new.replicas)) != len(new.replicas):
                continue
            if new.primary != current.primary and new.epoch == current.epoch and current.primary is not None:
                continue  # a new primary always takes a new epoch (and so a new id range)
            if len(set(new.replicas) ^ set(current.replicas)) > 1:
                continue  # replica sets change one replica at a time (failover relies on it)
            if new != current:
                self.assignments[partition] = new
                changed = True
        return changed

    def _apply_recover(self, d):
        """A forced recovery (:mod:`nodedb.voting.recovery`): the partitions in ``map`` take
        the assignment given (a new epoch, live replicas only, however many replicas that
        drops), then the hosts in ``remove`` leave and are fenced for good."""
        removed = [str(h) for h in d["remove"]]
        at, by = float(d["at"]), str(d["by"])
        for key, data in d["map"].items():
            partition, new = int(key), Assignment.from_data(data)
            current = self.assignments.get(partition)
            if current is None or not current.epoch < new.epoch <= MAX_EPOCH:
                continue
            if any(h not in self.members or h in removed for h in new.replicas) or len(set(new.replicas)) != len(new.replicas):
                continue
            self.assignments[partition] = new
        self.recoveries += 1
        for host in removed:
            self._apply_remove({"host": host, "at": at})
            self.fenced[host] = {"recovery": self.recoveries, "by": by, "at": at}
        return True

    # -- snapshots --------------------------------------------------------------------------

    def to_snapshot(self):
        return {
            "cluster": self.cluster_id,
            "partitions": self.partitions,
            "replicas": self.replicas,
            "members": self.members,
            "removed": self.removed,
            "map": {str(p): a.to_data() for p, a in self.assignments.items()},
            "decisions": self.decisions,
            "recoveries": self.recoveries,
            "fenced": self.fenced,
        }

    @classmethod
    def from_snapshot(cls, data):
        state = cls()
        if data:
            state.cluster_id = data["cluster"]
            state.partitions = data["partitions"]
            state.replicas = data["replicas"]
            state.members = {h: dict(m) for h, m in data["members"].items()}
            state.removed = dict(data["removed"])
            state.assignments = {int(p): Assignment.from_data(a) for p, a in data["map"].items()}
            state.decisions = data["decisions"]
            state.recoveries = data.get("recoveries", 0)
            state.fenced = {h: dict(f) for h, f in data.get("fenced", {}).items()}
        return state
