"""The Twisted side of two-phase commit (the protocol is in :mod:`nodedb.transactions`).

:class:`TransactionService` carries out what the pure cores decide: the actions of each
:class:`~nodedb.transactions.coordinator.Coordination` this host runs as a home primary, the
participant's prepares and completions, and the periodic recovery of prepares left in doubt.
It serves the ``tx.*`` peer operations and reaches other partitions' primaries through the
``call`` it is given.
"""

import collections

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nodedb import errors
from nodedb.codec import DECISION_TYPE, PREPARED_TYPE
from nodedb.ids import check_element_id
from nodedb.interfaces import ITransactions
from nodedb.wire.transaction import parse_transaction
from nodedb.wire.transaction import plan
from nodedb.storage import Delete, Insert
from nodedb.transactions.coordinator import (
    Call,
    Coordination,
    Fail,
    ForgetDecision,
    LookUpDecision,
    Succeed,
    TransactionSettings,
    WriteDecision,
)
from nodedb.transactions.locks import Prepared, decode_record, encode_record
from nodedb.transactions.participant import (
    abort_decision,
    applied_versions,
    changes_of,
    check_changes,
    check_scope,
    check_unlocked,
    completion_units,
    decision_of,
    in_doubt,
    prepared_reply,
    unit_of,
)

__all__ = ["TransactionService", "TransactionSettings"]

#: Participants' recent completions, kept to answer a repeated tx.commit with its versions.
_REMEMBERED = 4096


def _integer(request, name):
    value = request.get(name)
    if type(value) is not int or value < 0:
        raise errors.InvalidRequest(f"{name} must be a non-negative integer")
    return value


@implementer(ITransactions)
class TransactionService(Service):
    """Coordinates the transactions this host is home primary for; serves the participant's
    side of those of every partition it leads; resolves prepares left behind.

    :param local: the host's :class:`~nodedb.query.local.LocalQuery` (with replication and the
        :class:`~nodedb.transactions.locks.LockTable` of the transactions it prepares).
    :param host_id: this host's id.
    :param primary_of: ``primary_of(partition)`` -> host id; raises Unavailable.
    :param call: ``call(host, op, arguments, timeout)`` -> Deferred: a peer request.
    :param clock: an ``IReactorTime``.
    """

    _log = Logger()

    def __init__(self, local, host_id, primary_of, call, clock, settings=None):
        self.local = local
        self.storage = local.storage
        self.layout = local.storage.layout
        self.host_id = host_id
        self.primary_of = primary_of
        self.call = call
        self.clock = clock
        self.settings = settings or TransactionSettings()
        self.locks = local.locks
        self._coordinating = {}  # tx -> the Coordination of a transaction coordinated here
        self._finishing = {}  # (partition, tx) -> Deferred of the completion under way
        self._finished = collections.OrderedDict()  # (partition, tx) -> versions
        self._check = LoopingCall(self._resolve_due)
        self._check.clock = clock
        self._handlers = {
            "tx.prepare": self._serve_prepare,
            "tx.commit": lambda request: self._serve_decision(request, commit=True),
            "tx.abort": lambda request: self._serve_decision(request, commit=False),
            "tx.resolve": self._serve_resolve,
        }

    def install(self, api):
        for op, handler in self._handlers.items():
            api.register(op, handler)

    def startService(self):
        super().startService()
        self._check.start(self.settings.check_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._check.running:
            self._check.stop()

    def _epoch(self, partition):
        """The epoch of *partition*; :raise Unavailable: unless this host leads it now."""
        return self.local.replication.epochs((partition,))[partition]

    def _epoch_if_leading(self, partition):
        try:
            return self._epoch(partition)
        except errors.NodeDBError:
            return None

    # -- the coordinator ----------------------------------------------------------------------

    def run(self, operations):
        """Apply checked *operations* (spanning partitions) all or none; this host must be the
        primary of their home partition. Fires with the results in order."""
        try:
            home, groups = plan(operations, self.layout.partition_of)
            tx = self.local.ids.allocate(home)
            # Checked before anything is prepared, so that a bad document aborts nothing.
            units = [unit_of(c) for c in self._changes([operations[i] for i in groups[home]], home)]
        except Exception:
            return defer.fail()
        coordination = Coordination(tx, operations, home, groups, units, self.settings, self.clock.seconds())
        return _Coordinating(self, coordination).start()

    def _changes(self, operations, partition):
        return changes_of(operations, lambda: self.local.ids.allocate(partition), self.local.encode_document)

    def _forget_decision(self, tx):
        d = self.local.commit([Delete(DECISION_TYPE, tx)])
        d.addErrback(lambda f: self._log.debug("decision {tx} stays: {e}", tx=tx, e=f.value))

    def _call(self, partition, op, arguments, timeout):
        """*op* at the primary of *partition*: here directly, or over the network."""
        try:
            host = self.primary_of(partition)
        except errors.NodeDBError as e:
            return defer.fail(e)
        if host == self.host_id:
            return defer.maybeDeferred(self._handlers[op], arguments)
        return self.call(host, op, arguments, timeout)

    # -- the participant ----------------------------------------------------------------------

    def _serve_prepare(self, request):
        tx = check_element_id(request.get("tx"))
        partition = _integer(request, "p")
        operations = parse_transaction(request.get("ops"))
        check_scope(operations, partition, self.layout.partition_of)
        return self.prepare(tx, partition, operations)

    def prepare(self, tx, partition, operations):
        epoch = self._epoch(partition)
        known = self.locks.prepared(partition, epoch, tx)
        if known is not None:
            # A repeated prepare: answer as the first one does, once the record is committed.
            if known.durable is not None and not known.durable.done:
                return known.durable.follow()
            if self.storage.get(PREPARED_TYPE, known.record_id) is None:
                raise errors.Unavailable(f"the prepare of transaction {tx} failed here")
            barrier = self.local.replication.read_barrier((partition,))
            reply = prepared_reply(known)
            return defer.succeed(reply) if barrier is None else barrier.addCallback(lambda _: reply)
        changes = self._changes(operations, partition)
        check_unlocked(changes, lambda key: self.locks.holder(partition, epoch, key))
        # Allocated last, so the partition's highest sequence covers the inserts' ids too.
        record_id = self.local.ids.allocate(partition)
        prepared = Prepared(tx, record_id, changes, self.clock.seconds())
        self.locks.acquire(partition, epoch, prepared)
        record = Insert(PREPARED_TYPE, record_id, encode_record(tx, changes))
        d = self.local.commit([record], owner=tx, check=lambda: check_changes(changes, self.storage.get))
        d.addCallbacks(lambda _: prepared_reply(prepared), self._prepare_failed, None, None, (partition, prepared))
        prepared.durable = _Shared(d)
        return prepared.durable.follow()

    def _prepare_failed(self, failure, partition, prepared):
        if failure.check(errors.Conflict, errors.NotFound):
            # The record is written but its changes no longer apply: withdraw it.
            self._finish(partition, prepared.tx, prepared.record_id, commit=False).addErrback(
                lambda f: self._log.debug("withdrawing prepare {tx}: {e}", tx=prepared.tx, e=f.value)
            )
        # Otherwise the record may or may not be written: the lock stays until the
        # transaction is resolved (or the partition's epoch changes and the table is rebuilt).
        return failure

    def _serve_decision(self, request, commit):
        tx = check_element_id(request.get("tx"))
        partition = _integer(request, "p")
        record_id = check_element_id(request.get("record"))
        if self.layout.partition_of(record_id) != partition:
            raise errors.InvalidRequest(f"record {record_id} is not in partition {partition}")
        return self._finish(partition, tx, record_id, commit).addCallback(lambda versions: {"versions": versions})

    def _finish(self, partition, tx, record_id, commit):
        """Apply (or drop) the prepared changes of *tx*; fires with their versions (ids for
        inserts), or [] for an abort. One completion at a time per transaction."""
        key = (partition, tx)
        if key in self._finished:
            return defer.succeed(self._finished[key])
        running = self._finishing.get(key)
        if running is None:
            running = _Shared(defer.ensureDeferred(self._complete(partition, tx, record_id, commit)))
            if not running.done:
                self._finishing[key] = running
                running.follow().addBoth(lambda _: self._finishing.pop(key, None))
        return running.follow()

    async def _complete(self, partition, tx, record_id, commit):
        self._epoch(partition)  # Unavailable unless this host leads the partition now
        found = self.storage.get(PREPARED_TYPE, record_id)
        if found is None:
            # Already completed (the reply was lost), or never written.
            self.locks.release(partition, tx)
            return []
        recorded_tx, changes = decode_record(found[0])
        if recorded_tx != tx:
            raise errors.InvalidRequest(f"record {record_id} belongs to another transaction")
        results = await self.local.commit(completion_units(record_id, changes, commit), owner=tx)
        self.locks.release(partition, tx)
        versions = applied_versions(changes, results) if commit else []
        self._finished[(partition, tx)] = versions
        while len(self._finished) > _REMEMBERED:
            self._finished.popitem(last=False)
        self._log.debug("partition {p}: transaction {tx} {outcome}", p=partition, tx=tx,
                        outcome="committed" if commit else "aborted")
        return versions

    # -- recovery -----------------------------------------------------------------------------

    def _serve_resolve(self, request):
        tx = check_element_id(request.get("tx"))
        return defer.ensureDeferred(self.resolve(tx))

    async def resolve(self, tx):
        """The decision of *tx*, as its home's primary: the committed decision record, or an
        abort written now if there is none."""
        coordination = self._coordinating.get(tx)
        if coordination is not None and coordination.undecided:
            raise errors.Unavailable(f"transaction {tx} is being decided")
        try:
            doc, _version = await self.local.get(DECISION_TYPE, tx)
            return {"commit": doc["commit"]}
        except errors.NotFound:
            pass
        try:
            await self.local.commit([abort_decision(tx)])
            self._log.info("transaction {tx} aborted by a participant's resolve", tx=tx)
            return {"commit": False}
        except errors.Conflict:
            doc, _version = await self.local.get(DECISION_TYPE, tx)
            return {"commit": doc["commit"]}

    def _resolve_due(self):
        due = self.locks.due(self.clock.seconds() - self.settings.resolve_after)
        ask, forget = in_doubt(due, self._epoch_if_leading)
        for partition in forget:
            self.locks.drop(partition)
        for partition, prepared in ask:
            prepared.resolving = True
            home = self.layout.partition_of(prepared.tx)
            d = self._call(home, "tx.resolve", {"tx": prepared.tx}, self.settings.prepare_timeout)
            d.addCallback(self._resolved, partition, prepared)
            d.addErrback(self._unresolved, partition, prepared)

    def _resolved(self, reply, partition, prepared):
        return self._finish(partition, prepared.tx, prepared.record_id, decision_of(reply))

    def _unresolved(self, failure, partition, prepared):
        prepared.resolving = False
        self._log.debug("partition {p}: transaction {tx} not resolved yet: {e}", p=partition, tx=prepared.tx,
                        e=failure.value)


class _Coordinating:
    """Carries out the actions of one :class:`~nodedb.transactions.coordinator.Coordination`
    and reports back what came of them and when its time came."""

    def __init__(self, service, coordination):
        self._service = service
        self._coordination = coordination
        self._outcome = defer.Deferred()
        self._timer = None  # (when, IDelayedCall) of the wake the coordination asked for
        self._perform = {
            Call: self._send,
            WriteDecision: self._write_decision,
            LookUpDecision: self._look_up_decision,
            ForgetDecision: lambda action: service._forget_decision(action.tx),
            Succeed: lambda action: self._settle(self._outcome.callback, action.results),
            Fail: lambda action: self._settle(self._outcome.errback, action.error),
        }

    def start(self):
        self._service._coordinating[self._coordination.tx] = self._coordination
        self._carry_out(self._coordination.start(self._now()))
        return self._outcome

    def _now(self):
        return self._service.clock.seconds()

    def _carry_out(self, actions):
        for action in actions:
            self._perform[type(action)](action)
        self._set_timer()

    def _send(self, call):
        d = self._service._call(call.partition, call.op, call.arguments, call.timeout)
        d.addCallbacks(
            lambda reply: self._carry_out(self._coordination.answered(call.partition, reply, self._now())),
            lambda failure: self._carry_out(self._coordination.failed(call.partition, failure.value, self._now())),
        )

    def _write_decision(self, action):
        d = defer.maybeDeferred(self._service.local.commit, action.units, owner=self._coordination.tx)
        d.addCallbacks(
            lambda results: self._carry_out(self._coordination.decision_written(results, self._now())),
            lambda failure: self._carry_out(self._coordination.decision_failed(failure.value, self._now())),
        )

    def _look_up_decision(self, _action):
        found = self._service.storage.get(DECISION_TYPE, self._coordination.tx) is not None
        self._carry_out(self._coordination.decision_looked_up(found))

    def _settle(self, fire, outcome):
        del self._service._coordinating[self._coordination.tx]
        fire(outcome)

    def _set_timer(self):
        wake_at = self._coordination.wake_at
        if self._timer is not None:
            if self._timer[0] == wake_at:
                return
            self._timer[1].cancel()
            self._timer = None
        if wake_at is not None:
            clock = self._service.clock
            self._timer = (wake_at, clock.callLater(max(0.0, wake_at - clock.seconds()), self._wake))

    def _wake(self):
        self._timer = None
        self._carry_out(self._coordination.wake(self._now()))


class _Shared:
    """The outcome of one Deferred, for any number of followers, early or late."""

    def __init__(self, d):
        self.done = False
        self._result = None
        self._followers = []
        d.addBoth(self._finished)

    def _finished(self, result):
        self.done, self._result = True, result
        followers, self._followers = self._followers, []
        for follower in followers:
            _relay(result, follower)

    def follow(self):
        follower = defer.Deferred()
        if self.done:
            _relay(self._result, follower)
        else:
            self._followers.append(follower)
        return follower


def _relay(result, follower):
    if isinstance(result, Failure):
        follower.errback(result)
    else:
        follower.callback(result)
