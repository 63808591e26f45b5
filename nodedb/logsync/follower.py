"""This host as a holder of copies: pure, no I/O.

:class:`Following` tracks the partitions this host follows and which of them are caught up
(announced as ``syncing`` otherwise); :func:`unchanged_state` tells a probe that may be
answered from the stored state; :class:`Copies` finds the copies this host should no longer
hold. The rules a follower applies to what it receives are in
:func:`nodedb.storage.apply.apply_replication`.
"""

from nodedb.storage import Append


class Following:
    """The partitions this host follows and how far their copies are."""

    def __init__(self):
        self.epochs = {}  # partition -> epoch of the assignment this host follows
        self.caught_up = set()  # followed partitions whose copy reached the primary's end
        self._announced = None  # the syncing partitions last announced

    def assign(self, epochs):
        """The map now has this host follow ``{partition: epoch}``; a copy whose assignment
        moved to another epoch is no longer counted caught up."""
        for partition in list(self.caught_up):
            if epochs.get(partition) != self.epochs.get(partition):
                self.caught_up.discard(partition)
        self.epochs = epochs

    def answered(self, partition, accepted, state, primary_last):
        """This host answered a part of an append for *partition*: it took it or not
        (*accepted*), and its copy is now *state*; the primary's log ended at *primary_last*
        (an int, or something else from a malformed part)."""
        if accepted and not state.syncing and type(primary_last) is int and state.last_commit_id >= primary_last:
            self.caught_up.add(partition)
        elif not accepted or state.syncing:
            self.caught_up.discard(partition)

    def syncing(self):
        """The partitions this host follows whose copy is not caught up (``inactive``)."""
        return sorted(p for p in self.epochs if p not in self.caught_up)

    def news(self):
        """:return: :meth:`syncing` if it changed since it was last returned here, else None."""
        syncing = self.syncing()
        if syncing == self._announced:
            return None
        self._announced = syncing
        return syncing


def unchanged_state(units, state_of):
    """The stored state of the partition if *units* (of one part) is a probe that this copy
    accepts without any change, else None (then storage decides). Such a probe (the usual
    heartbeat, or a read barrier's) is answered at once, without a synced write.

    :param state_of: ``state_of(partition)`` -> the partition's stored state (read only
        for a probe).
    """
    if len(units) != 1 or type(units[0]) is not Append or units[0].entries:
        return None
    unit = units[0]
    state = state_of(unit.partition)
    if (
        unit.epoch == state.epoch
        and not state.syncing
        and tuple(unit.prev) == (state.last_commit_id, state.last_epoch)
        and (state.followed == unit.epoch or state.last_commit_id < unit.start)
        and min(unit.truncate, state.last_commit_id) <= state.truncated
    ):
        return state
    return None


class Copies:
    """The partitions this store holds copies of, and those it should drop: a copy this host
    has not been a replica of for *drop_after* seconds (moved elsewhere, or this host was
    removed and accepted again). The delay rides out a partition map still being replayed at
    restart."""

    def __init__(self, drop_after):
        self.drop_after = drop_after
        self.known = None  # partitions this store may hold data of; None until first counted
        self.held = set()  # partitions the agreed map gives this host
        self._orphans = {}  # partition -> since when this host holds a copy it should not

    def found(self, partitions):
        """The store holds data of *partitions* (counted once, at the first map)."""
        self.known = set(partitions)

    def assigned(self, held):
        """The agreed map gives this host copies of *held*."""
        self.known |= held
        self.held = held

    def due(self, now):
        """:return: the copies to drop now, in partition order (they are forgotten here)."""
        if self.known is None:
            return []
        dropped = []
        for partition in sorted(self.known - self.held):
            since = self._orphans.setdefault(partition, now)
            if now - since >= self.drop_after:
                dropped.append(partition)
                self.known.discard(partition)
                del self._orphans[partition]
        for partition in list(self._orphans):
            if partition in self.held:
                del self._orphans[partition]
        return dropped
