"""A Raft member's log, as pure bookkeeping: the snapshot it starts after, the entries after
that, and what changed since the caller last took it to persist (:class:`RaftLog`).

:class:`~nodedb.voting.raft.Raft` decides what goes in; this module only keeps it straight:
which term an index holds, where a conflicting entry cuts the log, what compaction leaves.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One log entry. ``config`` entries carry ``{"voters": [...], "learners": [...]}``."""

    term: int
    index: int
    kind: str = "normal"
    data: object = None


@dataclass(frozen=True)
class Config:
    voters: frozenset = frozenset()
    learners: frozenset = frozenset()

    def to_data(self):
        return {"voters": sorted(self.voters), "learners": sorted(self.learners)}

    @classmethod
    def from_data(cls, data):
        return cls(frozenset(data["voters"]), frozenset(data["learners"]))

    @property
    def members(self):
        return self.voters | self.learners

    def change(self, voters, learners, own_id):
        """The configuration of *voters* and *learners* (a voter is no learner), as a
        membership change that *own_id* proposes from this one: at most one voter added or
        removed, except that a leader that is the only voter may add several at once (see
        :mod:`nodedb.voting.raft`).

        :raise ValueError: for a change of more than one voter, or no voter.
        """
        new = Config(frozenset(voters), frozenset(learners) - frozenset(voters))
        grows_alone = self.voters == {own_id} and self.voters < new.voters
        if len(new.voters ^ self.voters) > 1 and not grows_alone:
            raise ValueError("change one voter at a time")
        if not new.voters:
            raise ValueError("a cluster needs a voter")
        return new


@dataclass(frozen=True)
class Snapshot:
    """The application state as of ``index`` (whose entry had ``term``), with the
    configuration in force there."""

    index: int
    term: int
    config: Config
    data: object = None


class RaftLog:
    """The entries after :attr:`snapshot`, what changed since :meth:`take_unsaved`, and how
    far committed entries were handed out to be applied (:meth:`hand_out`).

    :param snapshot: the last :class:`Snapshot` persisted.
    :param entries: the entries persisted (those the snapshot covers are dropped).
    """

    def __init__(self, snapshot, entries=()):
        self.snapshot = snapshot
        self.entries = [e for e in entries if e.index > snapshot.index]
        #: Appended since the last take, to persist; and the index from which the persisted
        #: log is replaced by them (a conflict cut it there), or None.
        self.unsaved = []
        self.truncate_from = None
        #: A snapshot taken or received since the last take, to persist, or None.
        self.unsaved_snapshot = None
        #: The last committed index handed out (the snapshot's is applied already).
        self.handed_out = snapshot.index

    def last_index(self):
        return self.entries[-1].index if self.entries else self.snapshot.index

    def last_term(self):
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term_at(self, index):
        """The term of the entry at *index*, or None if it is compacted away or missing."""
        if index == self.snapshot.index:
            return self.snapshot.term
        offset = index - self.snapshot.index - 1
        if 0 <= offset < len(self.entries):
            return self.entries[offset].term
        return None

    def entries_from(self, index, limit):
        offset = index - self.snapshot.index - 1
        return tuple(self.entries[max(0, offset) : max(0, offset) + limit])

    def hand_out(self, commit):
        """:return: the committed entries (up to *commit*) not handed out before."""
        if commit <= self.handed_out:
            return []
        first = self.handed_out + 1
        entries = [e for e in self.entries if first <= e.index <= commit]
        if entries:
            self.handed_out = entries[-1].index
        return entries

    def config(self):
        """The configuration in force at the end of the log: its last config entry's, else
        the snapshot's."""
        for entry in reversed(self.entries):
            if entry.kind == "config":
                return Config.from_data(entry.data)
        return self.snapshot.config

    def config_index_after(self, index):
        """:return: the index of the last config entry after *index*, or 0 if there is none."""
        return max((e.index for e in self.entries if e.kind == "config" and e.index > index), default=0)

    def append(self, entries):
        """Append *entries*, replacing the log from the first one whose term conflicts;
        entries it holds already, or that the snapshot covers, are skipped.

        :return: the :class:`Config` of each config entry appended, in order.
        """
        configs = []
        for entry in entries:
            existing = self.term_at(entry.index)
            if existing is None and entry.index <= self.snapshot.index:
                continue  # already compacted: it is committed, so it matches
            if existing == entry.term:
                continue
            if existing is not None:
                # A conflict: drop this entry and everything after it.
                del self.entries[entry.index - self.snapshot.index - 1 :]
                self.unsaved = [e for e in self.unsaved if e.index < entry.index]
                if self.truncate_from is None or entry.index < self.truncate_from:
                    self.truncate_from = entry.index
            self.entries.append(entry)
            self.unsaved.append(entry)
            if entry.kind == "config":
                configs.append(Config.from_data(entry.data))
        return configs

    def compact(self, index, data):
        """Replace the entries up to *index* by a snapshot of the state *data* there."""
        config = self.snapshot.config
        for entry in self.entries:
            if entry.index > index:
                break
            if entry.kind == "config":
                config = Config.from_data(entry.data)
        self.snapshot = self.unsaved_snapshot = Snapshot(index, self.term_at(index), config, data)
        self.entries = [e for e in self.entries if e.index > index]

    def restore(self, snapshot):
        """Start after the leader's *snapshot*: keep the entries after it if this log holds
        its last entry, else drop them all."""
        if self.term_at(snapshot.index) == snapshot.term:
            self.entries = [e for e in self.entries if e.index > snapshot.index]
        else:
            self.entries = []
            self.unsaved = []
            self.truncate_from = snapshot.index + 1
        self.snapshot = self.unsaved_snapshot = snapshot
        self.handed_out = snapshot.index  # the snapshot is the state applied

    def take_unsaved(self):
        """:return: ``(entries, truncate_from, snapshot)`` changed since the last call (see
        :class:`~nodedb.voting.raft.Ready`), forgotten here."""
        taken = (self.unsaved, self.truncate_from, self.unsaved_snapshot)
        self.unsaved, self.truncate_from, self.unsaved_snapshot = [], None, None
        return taken
