"""Replication progress of one partition: pure state, no I/O (groundwork of the replication
issue; not wired into the node yet).

The primary of a partition appends to its commit log and ships entries to the followers of
the replica set. :class:`PrimaryProgress` tracks what each follower has durably (its
``match``), what to send it next, and the highest commit id a majority of the replica set
(the primary included) has synced: a write is acknowledged to its client only once its
commit id is at or below that. :class:`FollowerLog` is the follower's side: it takes entries
only from the current epoch's primary, only in order, and says where it stands otherwise, so
the primary can back up (or fall back to a full resync when its log no longer reaches back).

Every message carries the partition's epoch; a follower refuses an older one, so a deposed
primary cannot overwrite what a newer one wrote.
"""

from dataclasses import dataclass, field


class StaleEpoch(Exception):
    """A message from an older epoch than the follower already knows."""


@dataclass
class _Follower:
    match: int = 0  # highest commit id the follower has durably
    next: int = 1  # the next commit id to send it
    in_flight: bool = False


@dataclass
class PrimaryProgress:
    """The primary's view of one partition's replication.

    :param last: the primary's own last durable commit id.
    :param truncated: commit ids up to this one are gone from the primary's log (a follower
        behind it needs a full resync).
    """

    partition: int
    epoch: int
    followers: tuple
    last: int = 0
    truncated: int = 0
    _followers: dict = field(default_factory=dict)

    def __post_init__(self):
        self._followers = {f: _Follower(next=self.last + 1) for f in self.followers}

    def appended(self, commit_id):
        """The primary made *commit_id* durable locally."""
        self.last = max(self.last, commit_id)

    def to_send(self, limit=256):
        """What to ship now: ``{follower: (first, last)}`` commit-id ranges, or ``"resync"``
        for a follower the log no longer covers. Each follower has at most one batch in flight."""
        plan = {}
        for name, follower in self._followers.items():
            if follower.in_flight or follower.next > self.last:
                continue
            if follower.next <= self.truncated:
                plan[name] = "resync"
            else:
                plan[name] = (follower.next, min(self.last, follower.next + limit - 1))
            follower.in_flight = True
        return plan

    def acknowledged(self, follower, epoch, match):
        """*follower* has everything up to *match* durably (in *epoch*)."""
        state = self._followers.get(follower)
        if state is None or epoch != self.epoch:
            return
        state.in_flight = False
        state.match = max(state.match, min(match, self.last))
        state.next = max(state.next, state.match + 1)

    def refused(self, follower, epoch, last):
        """*follower* could not take a batch: its log ends at *last* (a gap or a conflict)."""
        state = self._followers.get(follower)
        if state is None or epoch != self.epoch:
            return
        state.in_flight = False
        state.next = min(state.next, last + 1)
        state.match = min(state.match, last)

    def lost(self, follower):
        """A batch to *follower* timed out: send again."""
        state = self._followers.get(follower)
        if state is not None:
            state.in_flight = False

    def committed(self):
        """The highest commit id that a majority of the replica set has durably."""
        matches = sorted([self.last] + [f.match for f in self._followers.values()], reverse=True)
        majority = (len(matches)) // 2 + 1
        return matches[majority - 1]

    def fully_replicated(self):
        """The highest commit id every replica has (tombstones below it may be purged)."""
        return min([self.last] + [f.match for f in self._followers.values()])


@dataclass
class FollowerLog:
    """A follower's view of one partition: the epoch it follows and its last commit id."""

    partition: int
    epoch: int = 0
    last: int = 0

    def offer(self, epoch, first, count):
        """A batch of *count* entries starting at commit id *first* arrives from the primary
        of *epoch*.

        :return: ``(start, end)``: apply the entries with commit ids in ``[start, end]`` (an
            empty range when they are all known already).
        :raise StaleEpoch: if *epoch* is older than the one this replica follows.
        :raise ValueError: carrying the last commit id here, when the batch leaves a gap.
        """
        if epoch < self.epoch:
            raise StaleEpoch(f"partition {self.partition}: epoch {epoch} is older than {self.epoch}")
        self.epoch = epoch
        if first > self.last + 1:
            raise ValueError(self.last)
        start = self.last + 1
        end = first + count - 1
        return start, end

    def applied(self, commit_id):
        """The entries up to *commit_id* are durable here."""
        self.last = max(self.last, commit_id)

    def reset(self, epoch, commit_id):
        """A full resync replaced the partition's data as of *commit_id*."""
        self.epoch = max(self.epoch, epoch)
        self.last = commit_id
