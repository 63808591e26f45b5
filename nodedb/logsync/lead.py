"""This host's role as primary of one partition at one epoch: pure, no reactor, no clock.

A :class:`Lead` goes through a lifecycle (an automat machine, drawn in
``docs/state-machines/logsync-lead.dot``)::

    promising --promised--> leading --hand_over--> handing_over --caught_up--> handed_over
                               ^                        |                          |
                               +-------timed_out--------+-----------timed_out------+
    every state but fenced --fence--> fenced

- **promising**: the promise to lead the epoch is being written; nothing is taken yet.
- **leading**: the ready primary: it takes writes and serves reads.
- **handing_over**: a planned move: writes are refused until the chosen follower holds
  everything, then **handed_over**: still refused, so that the election that follows finds
  the follower complete; either way writes resume (**leading**) once the deadline passes
  and the map has not moved on meanwhile.
- **fenced**: a replica promised a newer epoch; nothing is taken any more, and the election
  that fenced it is asked for again every ``election_retry`` seconds. A handoff under way
  fails at its deadline.

Beside the lifecycle it keeps the writes waiting for a majority and the reads waiting for
their barrier, each with a deadline, and says which of them to fire (:class:`Settled`) when
the replication progress (:class:`nodedb.logsync.state.PrimaryProgress`) or the time
(``now``, always passed in) allows. The waiters are opaque here: the caller fires them.
"""

import bisect
import itertools
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from automat import TypeMachineBuilder

from nodedb import errors
from nodedb.logsync.state import RESYNC_PAGE, PrimaryProgress

PROMISING, LEADING, HANDING_OVER, HANDED_OVER, FENCED = "promising", "leading", "handing over", "handed over", "fenced"
#: What :meth:`Lead.answered` found beyond progress: the answer is from a host that is not
#: (any more) a follower, or the follower promised a newer epoch.
STRANGER, NEWER_EPOCH = "stranger", "newer epoch"


class Settled(NamedTuple):
    """A waiter to fire: with *result*, or failed with *error*."""

    waiter: object
    result: object = None
    error: Exception | None = None


@dataclass(frozen=True)
class Handoff:
    """A planned move of the partition to *follower*: writes stay refused until *deadline*;
    *waiter* fires once the follower holds everything (None once it has fired)."""

    follower: str
    deadline: float
    waiter: object
    hold: float  # how long writes stay refused after the follower caught up


class Lead:
    """This host's role as primary of *partition* at *epoch*, with *followers*."""

    def __init__(self, partition, epoch, followers):
        self.partition = partition
        self.epoch = epoch
        self.followers = tuple(followers)
        self.phase = PROMISING  # written only by the lifecycle's transitions
        self.progress = None  # a PrimaryProgress once the lead promise is durable
        self.start = 0  # our last commit id when we took up the epoch
        self.asked = 0.0  # when we last asked for the election that fenced us
        self.handoff = None  # a Handoff from hand_over until it times out
        self.landing = 0  # local commits begun and not over yet (a handoff waits for them)
        self.writes = []  # sorted [(commit_id, serial, deadline, waiter)]
        self.reads = []  # [(sent, last, deadline, waiter)]
        self._serial = itertools.count()
        self._lifecycle = _LIFECYCLE(self)

    @property
    def ready(self):
        """Whether this host is the primary now (its promise is durable and it is not
        fenced), whether or not it is handing the partition over."""
        return self.phase in (LEADING, HANDING_OVER, HANDED_OVER)

    @property
    def fenced(self):
        return self.phase == FENCED

    @property
    def handing_over_to(self):
        """The follower a planned move hands the partition to, or None."""
        return None if self.handoff is None else self.handoff.follower

    @property
    def takes_writes(self):
        """Whether this host is the primary now and not handing the partition over."""
        return self.phase == LEADING

    # -- the lifecycle -----------------------------------------------------------------------

    def promised(self, last_commit_id):
        """The promise to lead is durable; our log ends at *last_commit_id*."""
        self.start = last_commit_id
        self.progress = PrimaryProgress(self.partition, self.epoch, self.followers, last_commit_id)
        self._lifecycle.promised()

    def fence(self, now):
        """A replica promised a newer epoch (or ours was refused).

        :return: True the first time (ask for the election, then :meth:`abandon` the waiters).
        """
        if not self._lifecycle.fence():
            return False
        self.asked = now
        return True

    def ask_again(self, now, every):
        """:return: whether to ask again for the election that fenced us (every *every*
        seconds: the leader that started it may be gone)."""
        if self.phase != FENCED or now - self.asked < every:
            return False
        self.asked = now
        return True

    def hand_over(self, follower, waiter, now, hold):
        """Stop taking writes until *follower* holds everything, for at most *hold* seconds;
        *waiter* then fires with ``{"last": commit id}``, or fails with Unavailable.

        :raise Unavailable: if this host is not the ready primary, or already hands over.
        """
        self._lifecycle.hand_over(Handoff(follower, now + hold, waiter, hold))

    def expire_handoff(self, now):
        """:return: the handoff's waiter to fail if its deadline passed (writes resume)."""
        if self.handoff is None or self.handoff.deadline > now:
            return []
        return self._lifecycle.timed_out()

    def change_followers(self, followers):
        """The replica set changed: :return: whether there is progress to act on."""
        self.followers = tuple(followers)
        if self.progress is None:
            return False
        self.progress = self.progress.with_followers(self.followers)
        return True

    # -- writes and reads --------------------------------------------------------------------

    def begin(self):
        self.landing += 1

    def landed(self):
        """A local commit begun with :meth:`begin` is over; :return: whether to
        :meth:`settle` (a handoff may have waited for it)."""
        if self.landing <= 0:
            return False
        self.landing -= 1
        return self.handoff is not None and self.progress is not None

    def wait_write(self, commit_id, deadline, waiter):
        """*waiter* fires once a majority has *commit_id*, or fails with Timeout after
        *deadline*."""
        bisect.insort(self.writes, (commit_id, next(self._serial), deadline, waiter))

    def wait_read(self, sent, last, deadline, waiter):
        """*waiter* fires once a majority accepted a message sent after *sent* (``{follower:
        sequence}``) and *last* is committed, or fails with Unavailable after *deadline*."""
        self.reads.append((sent, last, deadline, waiter))

    def settle(self, now):
        """:return: what the progress now allows: writes on a majority, the handoff once its
        follower holds everything and no write is outstanding, reads whose barrier passed."""
        progress = self.progress
        committed = progress.committed()
        settled = []
        while self.writes and self.writes[0][0] <= committed:
            settled.append(Settled(self.writes.pop(0)[-1]))
        if self.phase == HANDING_OVER and not self.writes and not self.landing:
            state = progress.progress.get(self.handoff.follower)
            if state is not None and state.resync is None and state.match >= progress.last:
                settled.append(self._lifecycle.caught_up(now))
        if self.reads:
            waiting = []
            for read in self.reads:
                sent, last, _deadline, waiter = read
                if last <= committed and progress.confirmed_since(sent):
                    settled.append(Settled(waiter))
                else:
                    waiting.append(read)
            self.reads = waiting
        return settled

    def expire(self, now):
        """:return: the writes (outcome unknown) and reads (safe to retry) whose deadline
        passed."""
        settled = []
        for queue, error in (
            (self.writes, errors.Timeout("not acknowledged by a majority of the replicas in time; "
                                         "the write may or may not be applied")),
            (self.reads, errors.Unavailable("the partition's replicas did not confirm the read in time")),
        ):
            late = [item for item in queue if item[2] <= now]
            if late:
                queue[:] = [item for item in queue if item[2] > now]
                settled.extend(Settled(item[-1], error=error) for item in late)
        return settled

    def abandon(self, write_error=None):
        """:return: every write (outcome unknown) and read (safe to retry) still waiting: this
        host no longer leads the partition, or was fenced."""
        writes, self.writes = self.writes, []
        reads, self.reads = self.reads, []
        write_error = write_error or errors.Timeout(
            f"partition {self.partition} changed primary before the write was acknowledged; "
            "it may or may not be applied"
        )
        read_error = errors.Unavailable(f"partition {self.partition} changes primary; try again")
        return [Settled(w[-1], error=write_error) for w in writes] + [Settled(r[-1], error=read_error) for r in reads]

    def give_up_handoff(self):
        """:return: the handoff's waiter to fail because this host no longer leads the
        partition (the map moved on, or the node stops): its caller must not wait for ever."""
        handoff, self.handoff = self.handoff, None
        if handoff is None or handoff.waiter is None:
            return []
        return [Settled(handoff.waiter, error=errors.Unavailable(
            f"partition {self.partition}: this host stopped leading it during the handoff"))]

    # -- the followers' answers --------------------------------------------------------------

    def answered(self, follower, kind, sequence, accepted, last, last_epoch, epoch, syncing, epoch_at):
        """*follower* answered a part of message *sequence* (see
        :meth:`PrimaryProgress.answered`); it has promised *epoch*.

        :return: STRANGER when *follower* is not one of ours (nothing to do), NEWER_EPOCH
            when *epoch* is newer than ours (then :meth:`fence`), else what
            :meth:`PrimaryProgress.answered` returns.
        """
        if follower not in self.progress.progress:
            return STRANGER
        if type(epoch) is int and epoch > self.epoch:
            return NEWER_EPOCH
        return self.progress.answered(follower, kind, sequence, accepted, last, last_epoch, syncing, epoch_at)

    def lost(self, follower, kind):
        """A message carrying a part of *kind* to *follower* got no answer."""
        if self.progress is None:
            return
        if kind == RESYNC_PAGE:
            self.progress.page_lost(follower)
        else:
            self.progress.lost(follower)

    def status(self):
        """This lead as ``/status`` shows it (docs/replication.md)."""
        entry = {"epoch": self.epoch, "ready": self.ready, "fenced": self.fenced}
        if self.progress is not None:
            progress = self.progress
            entry.update(
                last=progress.last,
                committed=progress.committed(),
                followers={
                    host: {
                        "match": state.match,
                        "resync": None if state.resync is None else {"base": state.resync.base, "copied": state.resync.copied},
                    }
                    for host, state in progress.progress.items()
                },
            )
        return entry


class _Lifecycle(Protocol):
    """The inputs of a :class:`Lead`'s lifecycle."""

    def promised(self) -> None:
        "The promise to lead the epoch is durable."

    def fence(self) -> bool:
        "A replica promised a newer epoch: :return: whether that is news."

    def hand_over(self, handoff: Handoff) -> None:
        "Start a planned move (:raise Unavailable: unless leading)."

    def caught_up(self, now: float) -> Settled:
        "The handoff's follower holds everything: :return: its waiter to fire."

    def timed_out(self) -> list:
        "The handoff's deadline passed: :return: its waiter to fail, if it has not fired."


def _build_lifecycle():
    builder = TypeMachineBuilder(_Lifecycle, Lead)
    promising = builder.state(PROMISING)
    leading = builder.state(LEADING)
    handing_over = builder.state(HANDING_OVER)
    handed_over = builder.state(HANDED_OVER)
    fenced = builder.state(FENCED)

    @promising.upon(_Lifecycle.promised).to(leading)
    def take_writes(machine, lead):
        lead.phase = LEADING

    # The promise may be refused, or a newer one made here, while ours is being written.
    fenced.upon(_Lifecycle.promised).loop().returns(None)

    @promising.upon(_Lifecycle.fence).to(fenced)
    @leading.upon(_Lifecycle.fence).to(fenced)
    @handing_over.upon(_Lifecycle.fence).to(fenced)
    @handed_over.upon(_Lifecycle.fence).to(fenced)
    def stop_taking_writes(machine, lead):
        lead.phase = FENCED
        return True

    fenced.upon(_Lifecycle.fence).loop().returns(False)

    @leading.upon(_Lifecycle.hand_over).to(handing_over)
    def hold_writes(machine, lead, handoff):
        lead.phase = HANDING_OVER
        lead.handoff = handoff

    @handing_over.upon(_Lifecycle.hand_over).loop()
    @handed_over.upon(_Lifecycle.hand_over).loop()
    def refuse_second_handoff(machine, lead, handoff):
        raise errors.Unavailable(f"partition {lead.partition} is already being handed over")

    @promising.upon(_Lifecycle.hand_over).loop()
    @fenced.upon(_Lifecycle.hand_over).loop()
    def refuse_handoff(machine, lead, handoff):
        raise errors.Unavailable(f"not the primary of partition {lead.partition} at epoch {lead.epoch}")

    @handing_over.upon(_Lifecycle.caught_up).to(handed_over)
    def handed(machine, lead, now):
        # Writes stay refused until the map moves on (or the election fails).
        handoff = lead.handoff
        lead.phase = HANDED_OVER
        lead.handoff = Handoff(handoff.follower, now + handoff.hold, None, handoff.hold)
        return Settled(handoff.waiter, {"last": lead.progress.last})

    @handing_over.upon(_Lifecycle.timed_out).to(leading)
    @handed_over.upon(_Lifecycle.timed_out).to(leading)
    def resume_writes(machine, lead):
        lead.phase = LEADING
        return _drop_handoff(lead)

    # A fenced primary keeps a handoff until its deadline, and then fails it.
    @fenced.upon(_Lifecycle.timed_out).loop()
    def drop_handoff(machine, lead):
        return _drop_handoff(lead)

    return builder.build()


def _drop_handoff(lead):
    handoff, lead.handoff = lead.handoff, None
    if handoff.waiter is None:
        return []
    return [Settled(handoff.waiter, error=errors.Unavailable(
        f"partition {lead.partition}: the follower did not catch up in time"))]


_LIFECYCLE = _build_lifecycle()
