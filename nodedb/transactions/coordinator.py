"""The coordinator of a two-phase commit, as a pure state machine.

One :class:`Coordination` per transaction this host coordinates. It reads no clock and does no
I/O: its caller (:class:`~nodedb.transactions.service.TransactionService`) tells it what came
back (a participant's answer, the outcome of the decision's commit, a lookup) and what time it
is, and carries out the actions it returns (:class:`Call`, :class:`WriteDecision`,
:class:`LookUpDecision`, :class:`ForgetDecision`, then :class:`Succeed` or :class:`Fail`). When
it needs to hear from the clock it says so in :attr:`Coordination.wake_at`.

Its lifecycle (an automat machine)::

    preparing --all prepared--> deciding --decision written--> committing --round over--> done
        |                          |  \\--outcome unknown, deadline, other error-----------> done
        |                          \\--decision refused--> withdrawing --round over--> checking --> done
        \\--a prepare failed--> aborting --round over--> done

In aborting, withdrawing and committing it tells every prepared participant the outcome in
rounds: everyone not yet confirmed is asked at once, and once all have answered, those that did
not confirm are asked again :data:`RETRY_DELAY` later, while the transaction's time lasts.
"""

from dataclasses import dataclass, field
from typing import Protocol

from automat import TypeMachineBuilder

from nodedb import codec, errors
from nodedb.codec import DECISION_TYPE
from nodedb.wire.transaction import to_wire
from nodedb.storage import Insert

#: How long after a round of outcomes the participants that did not confirm are asked again.
RETRY_DELAY = 0.1
#: The shortest time a participant is given to confirm an outcome.
MIN_CALL_TIMEOUT = 0.05


@dataclass
class TransactionSettings:
    """:param timeout: the coordinator's budget for a whole transaction.
    :param prepare_timeout: how long it waits for the prepares.
    :param resolve_after: a participant asks the home about a prepare older than this.
    :param check_interval: how often participants look for such prepares.
    """

    timeout: float = 4.0
    prepare_timeout: float = 2.0
    resolve_after: float = 5.0
    check_interval: float = 1.0


# -- what a coordination asks its caller to do --------------------------------------------------


@dataclass(frozen=True)
class Call:
    """Send *op* with *arguments* to the primary of *partition* (at most *timeout* seconds);
    report its reply to :meth:`Coordination.answered`, or its error to
    :meth:`Coordination.failed`."""

    partition: int
    op: str
    arguments: dict
    timeout: float


@dataclass(frozen=True)
class WriteDecision:
    """Commit *units* (the home's changes and the decision record) as one unit the transaction
    owns; report to :meth:`Coordination.decision_written` or :meth:`Coordination.decision_failed`."""

    units: list


@dataclass(frozen=True)
class LookUpDecision:
    """Report to :meth:`Coordination.decision_looked_up` whether this host stores a decision
    record of the transaction."""


@dataclass(frozen=True)
class ForgetDecision:
    """Delete the decision record of *tx*: every participant confirmed applying it."""

    tx: int


@dataclass(frozen=True)
class Succeed:
    """The transaction is applied everywhere; *results* are the client's, in order."""

    results: list


@dataclass(frozen=True)
class Fail:
    """The transaction's outcome for the client is *error*."""

    error: Exception


# -- the pieces of the decision -----------------------------------------------------------------


def check_prepared(reply, count):
    """*reply* of a ``tx.prepare`` of *count* operations; :raise ProtocolError: if malformed."""
    if type(reply) is not dict or type(reply.get("record")) is not int or type(reply.get("ids")) is not list:
        raise errors.ProtocolError("malformed tx.prepare reply")
    if len(reply["ids"]) != count:
        raise errors.ProtocolError("malformed tx.prepare reply")
    return reply


def first_error(failures):
    """The error a client should see when prepares failed: its own mistake first, then a
    conflict, then a missing element; anything else means nothing was applied (Unavailable)."""
    for kind in (errors.InvalidRequest, errors.Conflict, errors.NotFound):
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    reasons = "; ".join(str(f) for f in failures)
    return errors.Unavailable(f"the transaction was aborted, nothing applied: {reasons}")


#: Errors of the decision's commit that mean it was refused before anything was written.
_REFUSALS = (errors.Conflict, errors.NotFound, errors.InvalidRequest)


class _Prepares:
    """The prepares under way: who has answered, and how."""

    def __init__(self, participants, counts):
        self.counts = counts  # partition -> how many operations its prepare carries
        self.unanswered = set(participants)
        self.replies = {}  # partition -> its checked tx.prepare reply
        self.refusals = {}  # partition -> why its prepare failed

    def answered(self, partition, reply):
        self.unanswered.discard(partition)
        try:
            self.replies[partition] = check_prepared(reply, self.counts[partition])
        except errors.ProtocolError as e:
            self.refusals[partition] = e

    def failed(self, partition, error):
        self.unanswered.discard(partition)
        self.refusals[partition] = error

    def settle(self, core, machine, now):
        """Decide once every prepare has answered."""
        if not self.unanswered:
            if self.refusals:
                machine.prepare_refused(now)
            else:
                machine.all_prepared(now)


class _Round:
    """Telling the prepared participants an outcome (``tx.commit`` or ``tx.abort``) until each
    has confirmed or the transaction's time is up."""

    def __init__(self, op, tx, records, deadline, prepare_timeout):
        self.op = op
        self.tx = tx
        self.deadline = deadline
        self.prepare_timeout = prepare_timeout
        self.pending = dict(records)  # partition -> its prepare record, not confirmed yet
        self.confirmed = {}  # partition -> the versions it applied
        self.asked = set()  # partitions asked this time that have not answered yet
        self.retry_at = None

    def calls(self, now):
        """Ask every participant that has not confirmed yet."""
        self.retry_at = None
        timeout = max(MIN_CALL_TIMEOUT, min(self.prepare_timeout, self.deadline - now))
        self.asked = set(self.pending)
        return [
            Call(p, self.op, {"tx": self.tx, "p": p, "record": self.pending[p]}, timeout) for p in sorted(self.pending)
        ]

    def answered(self, partition, reply):
        self.asked.discard(partition)
        if type(reply) is dict and type(reply.get("versions")) is list:
            self.confirmed[partition] = reply["versions"]
            del self.pending[partition]

    def failed(self, partition, error):
        self.asked.discard(partition)

    def settle(self, core, machine, now):
        """Once everyone asked has answered: over when all confirmed or no time is left for
        another try, otherwise ask again a little later."""
        if self.asked:
            return
        if self.pending and now + RETRY_DELAY < self.deadline:
            self.retry_at = core.wake_at = now + RETRY_DELAY
        else:
            machine.round_over(now)


@dataclass
class _Core:
    """What a coordination knows; the automat machine below decides what happens to it."""

    tx: int
    operations: list
    home: int
    groups: dict
    home_units: list
    settings: TransactionSettings
    deadline: float
    participants: list = field(default_factory=list)
    prepares: _Prepares = None
    #: What collects the participants' answers now: the prepares, then a round of outcomes.
    phase: object = None
    error: Exception = None  # what the client sees once an abort is done
    results: list = None
    decided: bool = False  # the decision is written, or this host gave up on writing it
    wake_at: float = None
    actions: list = field(default_factory=list)  # the outbox, emptied by every input

    def emit(self, *actions):
        self.actions.extend(actions)

    def start_round(self, machine, op, now):
        records = {p: reply["record"] for p, reply in self.prepares.replies.items()}
        self.phase = _Round(op, self.tx, records, self.deadline, self.settings.prepare_timeout)
        self.wake_at = None
        self.emit(*self.phase.calls(now))
        self.phase.settle(self, machine, now)


class _Inputs(Protocol):
    """The steps of a coordination's lifecycle. A participant's answer is not one: the phase
    under way collects it (:class:`_Prepares`, :class:`_Round`) and gives the machine the step
    it settles, so the machine moves once per phase rather than once per participant."""

    # from the caller
    def start(self, now: float) -> None: ...

    # from the participants' answers, once a phase has them all
    def all_prepared(self, now: float) -> None: ...

    def prepare_refused(self, now: float) -> None: ...

    def round_over(self, now: float) -> None: ...

    # from the home partition's log
    def decision_written(self, results: list, now: float) -> None: ...

    def decision_failed(self, error: Exception, now: float) -> None: ...

    def decision_looked_up(self, found: bool) -> None: ...

    # from the clock
    def wake(self, now: float) -> None: ...

    # from itself
    def decision_refused(self, error: Exception, now: float) -> None: ...

    def gave_up(self, error: Exception) -> None: ...


def _build_machine():
    builder = TypeMachineBuilder(_Inputs, _Core)
    preparing = builder.state("preparing")
    aborting = builder.state("aborting")
    deciding = builder.state("deciding")
    withdrawing = builder.state("withdrawing")
    checking = builder.state("checking")
    committing = builder.state("committing")
    done = builder.state("done")

    # -- preparing: every participant locks and records its share ---------------------------

    @preparing.upon(_Inputs.start).loop()
    def send_prepares(machine: _Inputs, core: _Core, now: float) -> None:
        core.participants = sorted(p for p in core.groups if p != core.home)
        core.prepares = core.phase = _Prepares(core.participants, {p: len(core.groups[p]) for p in core.participants})
        for p in core.participants:
            share = to_wire([core.operations[i] for i in core.groups[p]])
            core.emit(Call(p, "tx.prepare", {"tx": core.tx, "p": p, "ops": share}, core.settings.prepare_timeout))
        core.phase.settle(core, machine, now)

    @preparing.upon(_Inputs.prepare_refused).to(aborting)
    def abort(machine: _Inputs, core: _Core, now: float) -> None:
        refusals = core.prepares.refusals
        core.error = first_error([refusals[p] for p in core.participants if p in refusals])
        core.start_round(machine, "tx.abort", now)

    # -- deciding: the home's changes and the decision record, in one commit -----------------

    @preparing.upon(_Inputs.all_prepared).to(deciding)
    def write_decision(machine: _Inputs, core: _Core, now: float) -> None:
        decision = Insert(DECISION_TYPE, core.tx, codec.encode({"commit": True, "parts": core.participants}))
        core.emit(WriteDecision(core.home_units + [decision]))
        core.wake_at = core.deadline

    @deciding.upon(_Inputs.decision_written).to(committing)
    def commit(machine: _Inputs, core: _Core, results: list, now: float) -> None:
        core.decided = True
        core.results = [None] * len(core.operations)
        for index, unit, (element_id, version) in zip(core.groups[core.home], core.home_units, results):
            core.results[index] = element_id if isinstance(unit, Insert) else version
        core.start_round(machine, "tx.commit", now)

    @deciding.upon(_Inputs.decision_failed).loop()
    def classify(machine: _Inputs, core: _Core, error: Exception, now: float) -> None:
        if isinstance(error, _REFUSALS):
            # Refused before anything was written. A Conflict on the decision itself means a
            # participant's resolve aborted the transaction first.
            machine.decision_refused(error, now)
        elif isinstance(error, errors.NodeDBError):
            machine.gave_up(_outcome_unknown())
        else:
            machine.gave_up(error)

    @deciding.upon(_Inputs.wake).loop()
    def out_of_time(machine: _Inputs, core: _Core, now: float) -> None:
        # The commit under way still lands (or not); the participants settle the transaction.
        machine.gave_up(_outcome_unknown())

    @deciding.upon(_Inputs.decision_refused).to(withdrawing)
    def withdraw(machine: _Inputs, core: _Core, error: Exception, now: float) -> None:
        core.error = error
        core.start_round(machine, "tx.abort", now)

    @withdrawing.upon(_Inputs.round_over).to(checking)
    def check_decision(machine: _Inputs, core: _Core, now: float) -> None:
        core.emit(LookUpDecision())

    @checking.upon(_Inputs.decision_looked_up).to(done)
    def refused(machine: _Inputs, core: _Core, found: bool) -> None:
        core.decided = True
        if found:
            core.emit(Fail(errors.Unavailable("the transaction took too long and was aborted; nothing applied")))
        else:
            core.emit(Fail(core.error))

    @deciding.upon(_Inputs.gave_up).to(done)
    def fail(machine: _Inputs, core: _Core, error: Exception) -> None:
        core.decided = True
        core.wake_at = None
        core.emit(Fail(error))

    @aborting.upon(_Inputs.round_over).to(done)
    def aborted(machine: _Inputs, core: _Core, now: float) -> None:
        fail(machine, core, core.error)

    # -- the rounds that tell participants the outcome ---------------------------------------

    for telling in (aborting, withdrawing, committing):

        @telling.upon(_Inputs.wake).loop()
        def ask_again(machine: _Inputs, core: _Core, now: float) -> None:
            if core.phase.retry_at is not None:
                core.wake_at = None
                core.emit(*core.phase.calls(now))

    @committing.upon(_Inputs.round_over).to(done)
    def committed(machine: _Inputs, core: _Core, now: float) -> None:
        confirmed = core.phase.confirmed
        unconfirmed = [p for p in core.participants if p not in confirmed]
        for p in core.participants:
            ids = core.prepares.replies[p]["ids"]
            for index, inserted, version in zip(core.groups[p], ids, confirmed.get(p, [])):
                core.results[index] = inserted if inserted is not None else version
        if unconfirmed:
            core.emit(
                Fail(
                    errors.Timeout(
                        f"the transaction is committed, but partitions {unconfirmed} have not confirmed applying it "
                        "yet; they will"
                    )
                )
            )
        else:
            core.emit(ForgetDecision(core.tx), Succeed(core.results))

    # -- done: a commit that outlived the deadline still reports back; nothing changes -------

    done.upon(_Inputs.decision_written).loop().returns(None)
    done.upon(_Inputs.decision_failed).loop().returns(None)
    done.upon(_Inputs.wake).loop().returns(None)
    return builder.build()


_Machine = _build_machine()


def _outcome_unknown():
    return errors.Timeout("the transaction's decision may or may not be committed; its partitions will settle it")


class Coordination:
    """One transaction's two-phase commit, as its coordinator (the home partition's primary)
    decides it.

    :param tx: the transaction's id (an id of the home partition; its decision record's id).
    :param operations: the checked operations (see :func:`nodedb.wire.transaction.parse_transaction`).
    :param home: the home partition; *groups*: ``{partition: [operation index, ...]}``
        (:func:`nodedb.wire.transaction.plan`).
    :param home_units: the storage operations of the home's share, in the order of
        ``groups[home]`` (their ids allocated, their documents encoded and checked).
    :param settings: the :class:`TransactionSettings`.
    :param now: the time it starts; the transaction has ``settings.timeout`` from then.

    Every method returns the list of actions to carry out, in order.
    """

    def __init__(self, tx, operations, home, groups, home_units, settings, now):
        self._core = _Core(tx, operations, home, groups, home_units, settings, now + settings.timeout)
        self._machine = _Machine(self._core)

    def _actions(self):
        actions, self._core.actions = self._core.actions, []
        return actions

    @property
    def tx(self):
        return self._core.tx

    @property
    def wake_at(self):
        """When to call :meth:`wake` (the clock's seconds), or None."""
        return self._core.wake_at

    @property
    def undecided(self):
        """True until the decision is written or the coordinator gave up: a participant's
        resolve must not write an abort decision meanwhile."""
        return not self._core.decided

    def start(self, now):
        """Send the prepares."""
        self._machine.start(now)
        return self._actions()

    def answered(self, partition, reply, now):
        """*partition*'s primary replied to the last :class:`Call` sent to it."""
        self._core.phase.answered(partition, reply)
        self._core.phase.settle(self._core, self._machine, now)
        return self._actions()

    def failed(self, partition, error, now):
        """The last :class:`Call` to *partition* failed with *error*."""
        self._core.phase.failed(partition, error)
        self._core.phase.settle(self._core, self._machine, now)
        return self._actions()

    def decision_written(self, results, now):
        """The :class:`WriteDecision` commit succeeded with *results* (``(id, version)`` per unit)."""
        self._machine.decision_written(results, now)
        return self._actions()

    def decision_failed(self, error, now):
        """The :class:`WriteDecision` commit failed with *error*."""
        self._machine.decision_failed(error, now)
        return self._actions()

    def decision_looked_up(self, found):
        """The answer to :class:`LookUpDecision`."""
        self._machine.decision_looked_up(found)
        return self._actions()

    def wake(self, now):
        """The time :attr:`wake_at` named has come."""
        self._machine.wake(now)
        return self._actions()
