"""Raft's durable state in the node's store: hard state, log and snapshot, as meta keys.

``raft.hard`` holds ``[term, vote, commit]``, ``raft.snapshot`` the last snapshot and
``raft.log.<index>`` (zero-padded) one entry each. A :class:`~nodedb.voting.raft.Ready` is
saved in one durable ``set_meta`` call, so a crash leaves either all of it or none.
"""

from nodedb.voting.messages import entry_from_wire, entry_to_wire, snapshot_from_wire, snapshot_to_wire
from nodedb.voting.raft import HardState

_HARD = "raft.hard"
_SNAPSHOT = "raft.snapshot"
_FIRST, _LAST = "raft.first", "raft.last"


def _entry_key(index):
    return f"raft.log.{index:020d}"


class RaftDisk:
    """Loads and saves one member's Raft state through an ``IStorageBackend``'s meta store."""

    def __init__(self, storage):
        self.storage = storage
        self.first = self.last = 0  # the log indices stored (first > last: none)

    def load(self):
        """:return: ``(hard_state, log, snapshot)``; ``(HardState(), [], None)`` when new."""
        hard = self.storage.get_meta(_HARD)
        snapshot = self.storage.get_meta(_SNAPSHOT)
        snapshot = None if snapshot is None else snapshot_from_wire(snapshot)
        self.first = self.storage.get_meta(_FIRST) or 1
        self.last = self.storage.get_meta(_LAST) or 0
        log = []
        for index in range(self.first, self.last + 1):
            stored = self.storage.get_meta(_entry_key(index))
            if stored is not None:
                log.append(entry_from_wire(stored))
        hard_state = HardState() if hard is None else HardState(hard[0], hard[1], hard[2])
        return hard_state, log, snapshot

    def exists(self):
        return self.storage.get_meta(_HARD) is not None or self.storage.get_meta(_SNAPSHOT) is not None

    def save(self, ready):
        """Make *ready*'s snapshot, entries and hard state durable.

        :return: a Deferred that fires once they are.
        """
        items = {}
        first, last = self.first, self.last
        if ready.snapshot is not None:
            items[_SNAPSHOT] = snapshot_to_wire(ready.snapshot)
            for index in range(first, min(last, ready.snapshot.index) + 1):
                items[_entry_key(index)] = None
            first = max(first, ready.snapshot.index + 1)
            last = max(last, ready.snapshot.index)
        if ready.truncate_from is not None:
            for index in range(max(first, ready.truncate_from), last + 1):
                items[_entry_key(index)] = None
            last = min(last, ready.truncate_from - 1)
        for entry in ready.entries:
            items[_entry_key(entry.index)] = entry_to_wire(entry)
            last = max(last, entry.index)
        if ready.hard_state is not None:
            hard = ready.hard_state
            items[_HARD] = [hard.term, hard.vote, hard.commit]
        if not items:
            return self.storage.set_meta({})
        items[_FIRST], items[_LAST] = first, last
        self.first, self.last = first, last
        return self.storage.set_meta(items)
