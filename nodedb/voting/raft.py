"""Raft, as a pure state machine (in the manner of etcd-io/raft).

Nothing here does I/O, reads a clock or spawns a thread. Time is :meth:`Raft.tick`; peers'
messages come in through :meth:`Raft.step`; the application asks for changes with
:meth:`Raft.propose`. Everything the caller must act on is collected in a :class:`Ready`:
entries and hard state to make durable, messages to send, committed entries to apply. The
caller persists first and sends after (a vote or an acknowledgement must never be sent before
what it promises is on disk), then calls :meth:`Raft.advance`. As in etcd, the log's bookkeeping
is a class of its own (:class:`~nodedb.voting.raft_log.RaftLog`), and so is the counting of
votes and of the followers' progress (:class:`~nodedb.voting.raft_tracker.Tracker`).

What is implemented (Ongaro's dissertation, chapters 3, 4, 5, 9):

- leader election with randomized timeouts, **pre-vote** (a partitioned host does not disrupt
  the cluster when it comes back) and **check-quorum** (a leader that cannot hear a majority
  steps down, so a stale leader does not hold the lease);
- log replication with conflict back-off by term, commit on a majority of the current term;
- **membership changes one server at a time**: a configuration entry takes effect as soon as
  it is appended, and a new one is refused while one is uncommitted; **learners** receive
  the log but neither vote nor count for commitment. One exception: a leader that is the
  only voter may add several voters at once (1 to 3), because the old configuration's only
  quorum is the leader itself, and every voter of the new one that could win an election
  has the configuration entry and so every entry the leader committed alone; this skips the
  two-voter step, which one failure stops for good;
- **a forced sole voter** (:meth:`Raft.force_sole_voter`), the unsafe way back for a group
  whose majority is lost for good, as etcd's ``--force-new-cluster`` is;
- **snapshots and log compaction**: the application hands a snapshot of its state at an
  applied index to :meth:`Raft.compact`; a follower behind the compaction point receives the
  snapshot instead of entries.
"""

from dataclasses import dataclass, field

from nodedb.voting.raft_log import Config, Entry, RaftLog, Snapshot
from nodedb.voting.raft_tracker import Tracker

FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = "follower", "pre-candidate", "candidate", "leader"

# Message types.
VOTE, VOTE_REPLY = "vote", "vote-reply"
PRE_VOTE, PRE_VOTE_REPLY = "pre-vote", "pre-vote-reply"
APPEND, APPEND_REPLY = "append", "append-reply"
SNAPSHOT = "snapshot"

#: Most entries one append message carries.
MAX_ENTRIES_PER_MESSAGE = 256


class NotLeader(Exception):
    """Only the leader accepts proposals; ``leader`` names the one this host knows of."""

    def __init__(self, leader):
        super().__init__(f"not the leader (the leader is {leader})")
        self.leader = leader


class ChangeInProgress(Exception):
    """A membership change is uncommitted; propose the next one after it commits."""


@dataclass(frozen=True)
class Message:
    kind: str
    source: str
    target: str
    term: int
    # vote / pre-vote
    last_index: int = 0
    last_term: int = 0
    granted: bool = False
    # append
    prev_index: int = 0
    prev_term: int = 0
    entries: tuple = ()
    commit: int = 0
    # append reply
    success: bool = False
    match: int = 0
    hint: int = 0
    # snapshot
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass
class Ready:
    """What the caller must do, in this order: persist ``snapshot`` (if any), ``entries`` and
    ``hard_state`` (if not None); send ``messages``; apply ``committed``; then
    :meth:`Raft.advance`."""

    hard_state: HardState | None = None
    entries: list = field(default_factory=list)
    #: When set, the log from this index on is replaced by ``entries``.
    truncate_from: int | None = None
    snapshot: Snapshot | None = None
    messages: list = field(default_factory=list)
    committed: list = field(default_factory=list)

    def empty(self):
        return (
            self.hard_state is None
            and not self.entries
            and self.truncate_from is None
            and self.snapshot is None
            and not self.messages
            and not self.committed
        )


class Raft:
    """One member's Raft state.

    :param node_id: this member's id.
    :param config: the initial :class:`Config` (for a new cluster) unless *snapshot* or log
        entries carry one.
    :param rng: a ``random.Random`` for election timeouts.
    :param hard_state, log, snapshot: what was persisted (for a restart).
    :param election_ticks: the base election timeout; the actual one is random in
        ``[election_ticks, 2 * election_ticks)``.
    :param heartbeat_ticks: how often a leader sends appends when idle.
    """

    def __init__(
        self,
        node_id,
        rng,
        config=Config(),
        hard_state=HardState(),
        log=(),
        snapshot=None,
        election_ticks=10,
        heartbeat_ticks=1,
        pre_vote=True,
        check_quorum=True,
    ):
        self.id = node_id
        self.rng = rng
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.term = hard_state.term
        self.vote = hard_state.vote
        self._log = RaftLog(snapshot or Snapshot(0, 0, config), log)
        self.applied = self.snapshot.index
        self.commit = max(hard_state.commit, self.snapshot.index)
        self.config = self._log.config()
        self.state = FOLLOWER
        self.leader = None
        self.elapsed = 0
        self.timeout = self._random_timeout()
        #: Votes and, while leading, the followers' progress.
        self.tracker = Tracker()
        self._pending_config = 0
        self._messages = []  # to send with the next Ready
        self._last_hard = HardState(self.term, self.vote, self.commit)

    # -- the log (kept by nodedb.voting.raft_log) -------------------------------------------

    @property
    def log(self):
        """The entries after the snapshot."""
        return self._log.entries

    @property
    def snapshot(self):
        return self._log.snapshot

    def last_index(self):
        return self._log.last_index()

    def _append(self, entries):
        """Append (or replace from the first conflict on) *entries*; the caller must persist."""
        for config in self._log.append(entries):
            self.config = config
            if self.state == LEADER:
                # A leader removed from the voters steps down once the change commits (see
                # _maybe_commit).
                self.tracker.follow_config(config, self.id, self.last_index())
        # A config entry that was truncated away no longer applies.
        self.config = self._log.config()

    # -- time -------------------------------------------------------------------------------

    def _random_timeout(self):
        return self.election_ticks + self.rng.randrange(self.election_ticks)

    def tick(self):
        self.elapsed += 1
        if self.state == LEADER:
            self.tracker.wait_for_snapshots()
            if self.elapsed % self.heartbeat_ticks == 0:
                self._broadcast_append()
            if self.check_quorum and self.elapsed >= self.election_ticks:
                self.elapsed = 0
                if not self.tracker.quorum_active(self.config.voters, self.id):
                    self._become_follower(self.term, None)
        elif self.elapsed >= self.timeout and self.id in self.config.voters:
            self.campaign()

    # -- elections --------------------------------------------------------------------------

    def campaign(self):
        """Start an election (a pre-vote first, if enabled)."""
        if self.id not in self.config.voters:
            return
        if self.pre_vote:
            self.state = PRE_CANDIDATE
            # It no longer believes in a leader: it grants others' pre-votes (see _in_lease),
            # or a group whose voters all time out at once waits for their timeouts to align.
            self.leader = None
            term = self.term + 1
            kind = PRE_VOTE
        else:
            self._become_candidate()
            term = self.term
            kind = VOTE
        self.tracker.vote_for_self(self.id)
        self.elapsed = 0
        self.timeout = self._random_timeout()
        if self.tracker.election_won(self.config.voters):
            self._won_round()
            return
        self._request_votes(kind, term)

    def _request_votes(self, kind, term):
        last_index, last_term = self.last_index(), self._log.last_term()
        for voter in sorted(self.config.voters - {self.id}):
            self._send(Message(kind, self.id, voter, term, last_index=last_index, last_term=last_term))

    def _become_candidate(self):
        self.state = CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None

    def _won_round(self):
        if self.state == PRE_CANDIDATE:
            self._become_candidate()
            self.tracker.vote_for_self(self.id)
            if self.tracker.election_won(self.config.voters):
                self._become_leader()
                return
            self._request_votes(VOTE, self.term)
        else:
            self._become_leader()

    def _become_follower(self, term, leader):
        if term > self.term:
            self.term = term
            self.vote = None
        self.state = FOLLOWER
        self.leader = leader
        self.elapsed = 0
        self.timeout = self._random_timeout()
        self.tracker.votes.clear()

    def _become_leader(self):
        self.state = LEADER
        self.leader = self.id
        self.elapsed = 0
        self.tracker.lead(self.config.members, self.id, self.last_index() + 1)
        self._pending_config = self._log.config_index_after(self.commit)
        # A no-op entry of the new term lets the leader commit what earlier terms left.
        self._append([Entry(self.term, self.last_index() + 1)])
        self._maybe_commit()
        self._broadcast_append()

    def _log_is_current(self, message):
        return (message.last_term, message.last_index) >= (self._log.last_term(), self.last_index())

    # -- messages ---------------------------------------------------------------------------

    def _send(self, message):
        self._messages.append(message)

    def _answer(self, message, kind, term=None, **fields):
        """Send *kind* back to the source of *message*, at this member's term by default."""
        self._send(Message(kind, self.id, message.source, self.term if term is None else term, **fields))

    def step(self, message):
        """Handle a message from a peer."""
        if message.kind == PRE_VOTE:
            self._on_pre_vote(message)
            return
        if message.kind == PRE_VOTE_REPLY:
            if self.state == PRE_CANDIDATE and message.term == self.term + 1:
                self._count(message)
            elif message.term > self.term and not message.granted:
                self._become_follower(message.term, None)
            return
        if message.term > self.term:
            if message.kind == VOTE and self._in_lease():
                return  # check-quorum: a leader was heard recently, ignore disruptive votes
            leader = message.source if message.kind in (APPEND, SNAPSHOT) else None
            self._become_follower(message.term, leader)
        elif message.term < self.term:
            if message.kind in (APPEND, SNAPSHOT):
                # Tell a stale leader about the new term.
                self._answer(message, APPEND_REPLY)
            return
        handler = {
            VOTE: self._on_vote,
            VOTE_REPLY: self._on_vote_reply,
            APPEND: self._on_append,
            APPEND_REPLY: self._on_append_reply,
            SNAPSHOT: self._on_snapshot,
        }.get(message.kind)
        if handler is not None:
            handler(message)

    def _in_lease(self):
        return self.check_quorum and self.leader is not None and self.elapsed < self.election_ticks

    def _on_pre_vote(self, message):
        granted = message.term > self.term and self._log_is_current(message) and not self._in_lease()
        self._answer(message, PRE_VOTE_REPLY, message.term if granted else self.term, granted=granted)

    def _on_vote(self, message):
        granted = self.vote in (None, message.source) and self._log_is_current(message)
        if granted:
            self.vote = message.source
            self.elapsed = 0
        self._answer(message, VOTE_REPLY, granted=granted)

    def _on_vote_reply(self, message):
        if self.state == CANDIDATE:
            self._count(message)

    def _count(self, message):
        if message.source not in self.config.voters:
            return
        self.tracker.record_vote(message.source, message.granted)
        if self.tracker.election_won(self.config.voters):
            self._won_round()
        elif self.tracker.election_lost(self.config.voters):
            self._become_follower(self.term, None)

    def _follow(self, message):
        """*message* came from the leader of this term."""
        self.state = FOLLOWER
        self.leader = message.source
        self.elapsed = 0

    def _on_append(self, message):
        self._follow(message)
        if message.prev_index < self.commit:
            # Already committed here: answer with what we have.
            self._answer(message, APPEND_REPLY, success=True, match=self.commit)
            return
        if self._log.term_at(message.prev_index) != message.prev_term:
            hint = min(message.prev_index - 1, self.last_index())
            self._answer(message, APPEND_REPLY, success=False, hint=max(hint, 0))
            return
        self._append(message.entries)
        match = message.prev_index + len(message.entries)
        if message.commit > self.commit:
            self.commit = min(message.commit, match)
        self._answer(message, APPEND_REPLY, success=True, match=match)

    def _on_snapshot(self, message):
        self._follow(message)
        snapshot = message.snapshot
        if snapshot.index <= self.commit:
            self._answer(message, APPEND_REPLY, success=True, match=self.commit)
            return
        self._log.restore(snapshot)
        self.commit = self.applied = snapshot.index
        self.config = self._log.config()
        self._answer(message, APPEND_REPLY, success=True, match=snapshot.index)

    def _on_append_reply(self, message):
        if self.state != LEADER:
            return
        progress = self.tracker.heard_from(message.source)
        if progress is None:
            return
        if message.success:
            if progress.matched(message.match) and self._maybe_commit():
                self._broadcast_append()  # tell everyone the new commit index now
            elif progress.next <= self.last_index():
                self._send_append(message.source)
        elif progress.refused(message.hint):
            self._send_append(message.source)

    # -- replication ------------------------------------------------------------------------

    def _broadcast_append(self):
        for member in sorted(self.tracker.progress):
            self._send_append(member)

    def _send_append(self, member):
        progress = self.tracker.progress[member]
        prev = progress.next - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:  # compacted away: the follower needs the snapshot
            if progress.may_send_snapshot(self.election_ticks):
                self._send(Message(SNAPSHOT, self.id, member, self.term, snapshot=self.snapshot))
            return
        entries = self._log.entries_from(progress.next, MAX_ENTRIES_PER_MESSAGE)
        fields = {"prev_index": prev, "prev_term": prev_term, "entries": entries, "commit": self.commit}
        self._send(Message(APPEND, self.id, member, self.term, **fields))

    def _maybe_commit(self):
        """Advance the commit index to what a majority of voters has, if that entry is of the
        current term. :return: True if it advanced."""
        candidate = self.tracker.quorum_match(self.config.voters, self.id, self.last_index())
        if candidate is None or candidate <= self.commit or self._log.term_at(candidate) != self.term:
            return False
        self.commit = candidate
        if self._pending_config and self._pending_config <= self.commit:
            self._pending_config = 0
            if self.id not in self.config.voters:
                self._become_follower(self.term, None)
        return True

    def current_members(self):
        """On the leader: the members (itself included) whose log holds every committed
        entry, so whose state is the agreed one."""
        return self.tracker.current_members(self.id, self.commit)

    # -- proposals --------------------------------------------------------------------------

    def propose(self, data):
        """Append *data* as a normal entry. :return: its index.

        :raise NotLeader: on any member but the leader.
        """
        return self._propose(Entry(self.term, self.last_index() + 1, "normal", data))

    def propose_config(self, voters, learners=()):
        """Change the membership: at most one voter added or removed per change (any number
        of learners, which neither vote nor count for commitment), except that a leader that
        is the only voter may add several at once (see the module's docstring).

        :raise ChangeInProgress: while an earlier change is uncommitted.
        :raise ValueError: for a change of more than one voter.
        """
        if self.state == LEADER and self._pending_config > self.commit:
            raise ChangeInProgress("a membership change is still uncommitted")
        new = self.config.change(voters, learners, self.id)
        if self.state != LEADER:
            raise NotLeader(self.leader)
        self._pending_config = self.last_index() + 1
        return self._propose(Entry(self.term, self.last_index() + 1, "config", new.to_data()))

    def force_sole_voter(self, learners=()):
        """Unsafe, for recovering a group whose majority is lost for good: make this member
        the only voter (*learners* follow), at a new term, and lead at once.

        Everything in this member's log becomes committed, even entries the lost majority
        never committed; entries it committed that never reached this member are gone. The
        members left out must be kept from stepping this group (the caller fences them): one
        that answered at a higher term would otherwise depose this leader.

        :return: the index of the new configuration's entry.
        """
        self.term += 1
        self.vote = self.id
        config = Config(frozenset({self.id}), frozenset(learners) - {self.id})
        index = self.last_index() + 1
        self._append([Entry(self.term, index, "config", config.to_data())])
        self._become_leader()
        return index

    def _propose(self, entry):
        if self.state != LEADER:
            raise NotLeader(self.leader)
        self._append([entry])
        self._maybe_commit()
        self._broadcast_append()
        return entry.index

    # -- compaction -------------------------------------------------------------------------

    def compact(self, index, data):
        """The application's state as of applied *index* is *data*: drop the log up to it."""
        if index > self.applied or index <= self.snapshot.index:
            raise ValueError("compact only at an applied index past the last snapshot")
        self._log.compact(index, data)

    # -- the ready cycle --------------------------------------------------------------------

    def ready(self):
        """:return: the :class:`Ready` of everything that happened since the last call.

        Each call hands out new work only, so the caller may ask again while it is still
        persisting an earlier one (it must then persist them in order)."""
        entries, truncate_from, snapshot = self._log.take_unsaved()
        ready = Ready(entries=entries, truncate_from=truncate_from, snapshot=snapshot, messages=self._messages)
        self._messages = []
        hard = HardState(self.term, self.vote, self.commit)
        if hard != self._last_hard:
            ready.hard_state = self._last_hard = hard
        ready.committed = self._log.hand_out(self.commit)
        return ready

    def advance(self, ready):
        """The caller persisted, sent and applied *ready*."""
        if ready.committed:
            self.applied = max(self.applied, ready.committed[-1].index)

    def status(self):
        return {
            "id": self.id,
            "state": self.state,
            "term": self.term,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "last_index": self.last_index(),
            "voters": sorted(self.config.voters),
            "learners": sorted(self.config.learners),
        }
