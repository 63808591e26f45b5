"""Replication progress of one partition on its primary: pure state, no I/O.

The primary appends to the partition's commit log and ships entries to the followers of the
replica set. :class:`PrimaryProgress` tracks, per follower, what it has durably (``match``),
what to send it next, whether it needs a full resync (its log diverged from ours, or ours no
longer reaches back to where it stands), and which append messages it confirmed (for the
read barrier). It judges each answer a follower gives (:meth:`answered`: go on, continue
from the follower's end, or start a full resync) and answers the two questions the primary
acts on: up to which commit id a majority of the replica set has the log (:meth:`committed`:
writes up to there are acknowledged), and up to which commit id every replica has it
(:meth:`fully_replicated`: the log, tombstones included, may be dropped up to there).

The follower's side of every rule lives in :func:`nodedb.storage.apply.apply_replication`.
"""

from dataclasses import dataclass, field

from nodedb.logsync.resync import Resync

#: What a part of a ``logsync.append`` message carries: entries after ``prev`` (or a probe),
#: or a page of a full resync.
APPEND, RESYNC_PAGE = "append", "resync"
#: What an answer asks of the primary (:meth:`PrimaryProgress.answered`): a full resync of the
#: follower from the start, or nothing more since its full resync is complete.
NEEDS_RESYNC, RESYNCED = "needs resync", "resynced"


def majority(count):
    """How many of *count* replicas make a majority: of the replica set for a write to be
    acknowledged, and of the replica set for a failover to choose a new primary.

    Any two majorities of one set meet, and so do majorities of two sets that differ by one
    replica (the partition map changes a replica set one replica at a time, as Raft changes
    its configuration): so the answers of a failover always include a replica that holds
    every acknowledged write, even one acknowledged just before the set changed."""
    return count // 2 + 1


def choose_primary(answers, prefer=None):
    """The replica to lead a partition's next epoch.

    :param answers: ``{host: (followed, last_commit_id, syncing)}`` from the replicas that
        promised the new epoch.
    :return: the host with the highest ``(followed, last_commit_id)`` that is not in the
        middle of a full resync (ties go to *prefer*, else to the smallest host id), or
        None.
    """
    eligible = {host: (followed, last) for host, (followed, last, syncing) in answers.items() if not syncing}
    if not eligible:
        return None
    best = max(eligible.values())
    if eligible.get(prefer) == best:
        return prefer
    return min(host for host, position in eligible.items() if position == best)


@dataclass
class FollowerProgress:
    match: int = 0  # highest commit id the follower has durably, in agreement with us
    next: int = 1  # the next commit id to send it (ahead of match while messages are in flight)
    in_flight: bool = False  # a page of its resync is on its way
    resync: Resync | None = None
    confirmed: int = 0  # the newest append message (by link sequence) it accepted


@dataclass
class PrimaryProgress:
    """The primary's view of one partition's replication.

    :param last: the primary's own last durable commit id.
    """

    partition: int
    epoch: int
    followers: tuple
    last: int = 0
    progress: dict = field(default_factory=dict)

    def __post_init__(self):
        self.progress = {f: FollowerProgress(next=self.last + 1) for f in self.followers}

    def appended(self, commit_id):
        """The primary made *commit_id* durable locally."""
        self.last = max(self.last, commit_id)

    def accepted(self, follower, last, sequence):
        """*follower* took what we sent in message *sequence*; its log ends at *last*, and
        agrees with ours up to there."""
        state = self.progress.get(follower)
        if state is None:
            return
        state.confirmed = max(state.confirmed, sequence)
        if state.resync is not None:
            return
        state.match = max(state.match, min(last, self.last))
        state.next = max(state.next, state.match + 1)

    def sent(self, follower, last):
        """Entries up to *last* are on their way to *follower* (messages are pipelined: the
        next one goes on from there without waiting)."""
        state = self.progress.get(follower)
        if state is not None and state.resync is None:
            state.next = max(state.next, last + 1)

    def lost(self, follower):
        """A message to *follower* got no answer: probe it again at our end (its answer says
        where it stands), rather than assume it lost what it may well hold."""
        state = self.progress.get(follower)
        if state is not None and state.resync is None:
            state.next = self.last + 1

    def page_sent(self, follower):
        """A page of *follower*'s resync is on its way (one at a time)."""
        self.progress[follower].in_flight = True

    def page_lost(self, follower):
        """The page on its way to *follower* got no answer: send it again from the last page
        the follower confirmed."""
        state = self.progress.get(follower)
        if state is not None:
            state.in_flight = False
            if state.resync is not None:
                state.resync.rewind()

    def answered(self, follower, kind, sequence, accepted, last, last_epoch, syncing, epoch_at):
        """*follower* answered the part of message *sequence* that carried *kind* (APPEND or
        RESYNC_PAGE): it took it or not (*accepted*), its log ends at *last* (an entry of
        *last_epoch*), and it is in a full resync or not (*syncing*).

        :param epoch_at: as for :meth:`position`.
        :return: NEEDS_RESYNC when the follower must get a full resync from the start (it
            refused a page, its resync was interrupted, or its log diverged from ours),
            RESYNCED when its full resync is complete, else None.
        """
        state = self.progress.get(follower)
        if state is None:
            return None
        if kind == RESYNC_PAGE:
            state.in_flight = False
            if not accepted:
                return NEEDS_RESYNC
            if state.resync is None:
                return None
            outcome = None
            if state.resync.done_sent:
                self.resynced(follower)
                outcome = RESYNCED
            else:
                state.resync.checkpoint()
            self.accepted(follower, last, sequence)
            return outcome
        if accepted:
            self.accepted(follower, last, sequence)
            return None
        if syncing:
            return NEEDS_RESYNC  # an interrupted resync: start it again
        if type(last) is int and type(last_epoch) is int and self.position(follower, last, last_epoch, epoch_at):
            return NEEDS_RESYNC  # diverged
        return None

    def position(self, follower, last, last_epoch, epoch_at):
        """*follower* refused an append: its log ends at *last*, an entry of *last_epoch*.

        :param epoch_at: ``epoch_at(commit_id)`` -> the epoch of our own entry, or None when
            our log does not reach back there.
        :return: True if the follower now needs a full resync.
        """
        state = self.progress.get(follower)
        if state is None or state.resync is not None:
            return False
        if last <= self.last and epoch_at(last) == last_epoch:
            state.next = last + 1  # its log is a prefix of ours: continue from its end
            state.match = min(state.match, last)
            return False
        return True

    def start_resync(self, follower, base, base_epoch, types):
        """Copy the whole partition to *follower*, as of our commit *base*."""
        state = self.progress[follower]
        state.resync = Resync(base, base_epoch, tuple(types))
        state.match = 0
        return state.resync

    def resynced(self, follower):
        """The full copy to *follower* is complete."""
        state = self.progress[follower]
        base, state.resync = state.resync.base, None
        state.match = base
        state.next = base + 1

    def waiting(self, follower):
        """How many of our entries wait to be shipped to *follower*."""
        state = self.progress.get(follower)
        return 0 if state is None else max(0, self.last - state.next + 1)

    def has_more(self, follower):
        """Whether *follower* is owed more than a probe: entries, or pages of its resync."""
        state = self.progress.get(follower)
        return state is not None and (state.resync is not None or state.next <= self.last)

    def with_followers(self, followers):
        """This view for a replica set whose followers are now *followers*: those that stay
        keep what we know of them, those that join start as new followers do."""
        changed = PrimaryProgress(self.partition, self.epoch, tuple(followers), self.last)
        for host in changed.followers:
            if host in self.progress:
                changed.progress[host] = self.progress[host]
        return changed

    def committed(self):
        """The highest commit id that a majority of the replica set has durably."""
        matches = sorted([self.last] + [f.match for f in self.progress.values()], reverse=True)
        return matches[majority(len(matches)) - 1]

    def confirmed_since(self, sent):
        """Whether a majority of the replica set (ourselves included) accepted a message sent
        after ``sent`` (``{follower: sequence}`` when a read arrived) in this epoch."""
        count = 1 + sum(1 for f, s in sent.items() if f in self.progress and self.progress[f].confirmed > s)
        return count >= majority(len(self.progress) + 1)

    def fully_replicated(self):
        """The highest commit id every replica has, or will get from our log (a follower
        under resync needs the log after its base)."""
        marks = [self.last]
        for state in self.progress.values():
            marks.append(state.resync.base if state.resync is not None else state.match)
        return min(marks)
