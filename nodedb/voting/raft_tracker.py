"""What a Raft member keeps count of about the others (as etcd-io/raft's ``tracker``): the
votes of its election and, as leader, how far each follower's log matches its own.

Pure counting: :class:`~nodedb.voting.raft.Raft` records what it hears and asks for majorities.
"""

from dataclasses import dataclass


@dataclass
class Progress:
    """The leader's view of one follower."""

    match: int = 0
    next: int = 1
    #: Heard from since the last check-quorum.
    active: bool = False
    #: Ticks to wait before sending a snapshot again (it may be large, and on its way).
    snapshot_wait: int = 0

    def matched(self, match):
        """The follower holds the leader's log up to *match*. :return: True if that is more
        than it held before."""
        advanced = match > self.match
        self.match = max(self.match, match)
        self.next = max(self.next, self.match + 1)
        return advanced

    def may_send_snapshot(self, wait):
        """:return: whether to send the follower a snapshot now; if so, the next one waits
        *wait* ticks (unless the follower answers first)."""
        if self.snapshot_wait > 0:
            return False
        self.snapshot_wait = wait
        return True

    def refused(self, hint):
        """The follower's log does not hold the entry before :attr:`next`; it ends at or
        before *hint*. :return: True if the leader should send again, from further back (a
        refusal older than what the follower acknowledged since is stale and ignored)."""
        if hint < self.match:
            return False
        self.next = max(self.match + 1, min(self.next - 1, hint + 1))
        return True


def quorum(voters):
    """How many of *voters* make a majority."""
    return len(voters) // 2 + 1


class Tracker:
    """Votes and follower progress of one member.

    :ivar votes: ``{voter: granted}`` of the election under way.
    :ivar progress: ``{member: Progress}`` of every other member, while leading.
    """

    def __init__(self):
        self.votes = {}
        self.progress = {}

    # -- votes ------------------------------------------------------------------------------

    def vote_for_self(self, own_id):
        """Start counting a new election round, with this member's own vote."""
        self.votes = {own_id: True}

    def record_vote(self, voter, granted):
        self.votes[voter] = granted

    def election_won(self, voters):
        """Whether a majority of *voters* granted their vote."""
        return sum(1 for granted in self.votes.values() if granted) >= quorum(voters)

    def election_lost(self, voters):
        """Whether a majority of *voters* refused their vote."""
        return sum(1 for granted in self.votes.values() if not granted) >= quorum(voters)

    # -- progress of followers --------------------------------------------------------------

    def lead(self, members, own_id, next_index):
        """Start tracking every member but this one, assuming each needs *next_index* next."""
        self.progress = {m: Progress(next=next_index) for m in members if m != own_id}

    def follow_config(self, config, own_id, next_index):
        """The configuration changed while leading: track new members from *next_index*,
        stop tracking removed ones."""
        for member in config.members - {own_id}:
            self.progress.setdefault(member, Progress(next=next_index))
        for gone in set(self.progress) - config.members:
            del self.progress[gone]

    def heard_from(self, member):
        """An answer came from *member*: :return: its :class:`Progress`, now active, or None
        if it is not tracked."""
        progress = self.progress.get(member)
        if progress is not None:
            progress.active = True
            progress.snapshot_wait = 0
        return progress

    def quorum_active(self, voters, own_id):
        """Whether a majority of *voters* was heard from since the last call (this member
        counts); starts the next period."""
        active = sum(1 for v in voters if v == own_id or self.progress.get(v, Progress()).active)
        for progress in self.progress.values():
            progress.active = False
        return active >= quorum(voters)

    def wait_for_snapshots(self):
        """One tick less to wait before sending a snapshot again."""
        for progress in self.progress.values():
            progress.snapshot_wait = max(0, progress.snapshot_wait - 1)

    def quorum_match(self, voters, own_id, own_last):
        """:return: the highest index a majority of *voters* holds (this member holds
        *own_last*), or None without voters."""
        matches = sorted(
            [own_last if v == own_id else self.progress.get(v, Progress()).match for v in voters],
            reverse=True,
        )
        return matches[quorum(voters) - 1] if matches else None

    def current_members(self, own_id, commit):
        """The members (this one included) whose log holds every entry up to *commit*."""
        return {own_id} | {m for m, p in self.progress.items() if p.match >= commit}
