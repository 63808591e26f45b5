"""Two-phase commit whose prepare and decision records go through the partitions' logs.

A transaction's *home* is the partition of its first operation that names an id; the home's
primary coordinates, and its inserts without ``near`` go there. The protocol:

1. **Prepare.** The coordinator sends each other partition (a *participant*) its operations
   (``tx.prepare``). The participant's primary locks the elements, allocates the ids of its
   inserts and commits a prepare record (an element of the internal type ``nodedb.prepared``
   holding the changes) through its replicated log. Once durable here it checks the changes
   against the store, which then holds every write submitted before the prepare, and answers
   once a majority has the record. A lock held by another transaction is a Conflict at once:
   transactions never wait for each other, so they never deadlock.
2. **Decision.** With every participant prepared, the coordinator commits, in one unit of the
   home partition, the home's own changes and the decision record (``nodedb.decision``, keyed
   by the transaction id). That commit is the transaction's commit point. A failed prepare
   aborts instead.
3. **Completion.** Each participant applies its prepared changes and deletes its prepare
   record in one commit (``tx.commit``), or only deletes it (``tx.abort``). The decision record
   is dropped once every participant has confirmed.

**Recovery.** A participant whose prepare is older than ``resolve_after`` asks the home's
primary (``tx.resolve``). That primary answers from the decision record (read-index, so only a
committed decision counts) or, when there is none, writes an abort decision. Both decisions
are inserts of the same element, so whichever commits first wins and the coordinator's commit
then fails. So a transaction is decided exactly once, by a replicated write, whatever host
dies: the participants finish it on their own.

Locks live in memory (:class:`~nodedb.transactions.locks.LockTable`), rebuilt from the prepare
records whenever a partition's epoch changes, so a new primary holds its predecessor's locks.
"""

import collections

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nodedb import errors
from nodedb.ids import check_element_id
from nodedb.interfaces import ITransactions
from nodedb.query.api import parse_transaction
from nodedb.query.transaction_plan import plan
from nodedb.storage import Delete, Insert, Update
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
from nodedb.transactions.locks import LockTable, Prepared, decode_record, encode_record
from nodedb import codec
from nodedb.codec import DECISION_TYPE, PREPARED_TYPE

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

    :param local: the host's :class:`~nodedb.query.local.LocalQuery` (with replication).
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
        self.locks = local.locks = LockTable(self._prepare_records, clock)
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

    def _prepare_records(self, partition):
        first, last = self.layout.first_id(partition), self.layout.last_id(partition)
        records, after = [], first - 1
        while True:
            batch = self.storage.scan(PREPARED_TYPE, after, 256)
            records.extend((element_id, data) for element_id, data, _version in batch if element_id <= last)
            if len(batch) < 256 or batch[-1][0] >= last:
                return records
            after = batch[-1][0]

    def _epoch(self, partition):
        return self.local.replication.epochs((partition,))[partition]

    # -- the coordinator ----------------------------------------------------------------------

    def run(self, operations):
        """Apply checked *operations* (spanning partitions) all or none; this host must be the
        primary of their home partition. Fires with the results in order."""
        try:
            home, groups = plan(operations, self.layout.partition_of)
            tx = self.local.ids.allocate(home)
            # Checked before anything is prepared, so that a bad document aborts nothing.
            units = self._home_changes(operations, groups[home], home)
        except Exception:
            return defer.fail()
        coordination = Coordination(tx, operations, home, groups, units, self.settings, self.clock.seconds())
        return _Coordinating(self, coordination).start()

    def _home_changes(self, operations, indexes, home):
        units = []
        for index in indexes:
            operation = operations[index]
            kind = operation["op"]
            if kind == "insert":
                element_id = self.local.ids.allocate(home)
                units.append(Insert(operation["type"], element_id, self.local.encode_document(operation["doc"])))
            elif kind == "update":
                data = self.local.encode_document(operation["doc"])
                units.append(Update(operation["type"], operation["id"], data, operation.get("if_version")))
            else:
                units.append(Delete(operation["type"], operation["id"], operation.get("if_version")))
        return units

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
        for operation in operations:
            key = operation.get("id", operation.get("near"))
            if key is not None and self.layout.partition_of(key) != partition:
                raise errors.InvalidRequest(f"tx.prepare: element {key} is not in partition {partition}")
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
            reply = _prepared_reply(known)
            return defer.succeed(reply) if barrier is None else barrier.addCallback(lambda _: reply)
        changes = []
        for operation in operations:
            kind = operation["op"]
            if kind == "insert":
                element_id = self.local.ids.allocate(partition)
                changes.append([kind, operation["type"], element_id, self.local.encode_document(operation["doc"]), None])
            else:
                data = self.local.encode_document(operation["doc"]) if kind == "update" else None
                changes.append([kind, operation["type"], operation["id"], data, operation.get("if_version")])
        for change in changes:
            holder = self.locks.holder(partition, epoch, (change[1], change[2]))
            if holder is not None:
                raise errors.Conflict(f"{change[1]} {change[2]} is in another transaction being committed")
        # Allocated last, so the partition's highest sequence covers the inserts' ids too.
        record_id = self.local.ids.allocate(partition)
        prepared = Prepared(tx, record_id, changes, self.clock.seconds())
        self.locks.acquire(partition, epoch, prepared)
        record = Insert(PREPARED_TYPE, record_id, encode_record(tx, changes))
        d = self.local.commit([record], owner=tx, check=lambda: self._check_changes(changes))
        d.addCallbacks(lambda _: _prepared_reply(prepared), self._prepare_failed, None, None, (partition, prepared))
        prepared.durable = _Shared(d)
        return prepared.durable.follow()

    def _check_changes(self, changes):
        for kind, record_type, element_id, _data, if_version in changes:
            current = self.storage.get(record_type, element_id)
            if kind == "insert":
                if current is not None:
                    raise errors.Conflict(f"element {element_id} already exists")
            elif current is None:
                raise errors.NotFound(f"{record_type} {element_id} not found")
            elif if_version is not None and current[1] != if_version:
                raise errors.Conflict(f"{record_type} {element_id} is at version {current[1]}, not {if_version}")

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
        units = [Delete(PREPARED_TYPE, record_id)]
        if commit:
            units = [_unit(change) for change in changes] + units
        results = await self.local.commit(units, owner=tx)
        self.locks.release(partition, tx)
        versions = []
        if commit:
            versions = [
                element_id if change[0] == "insert" else version
                for change, (element_id, version) in zip(changes, results)
            ]
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
            await self.local.commit([Insert(DECISION_TYPE, tx, codec.encode({"commit": False}))])
            self._log.info("transaction {tx} aborted by a participant's resolve", tx=tx)
            return {"commit": False}
        except errors.Conflict:
            doc, _version = await self.local.get(DECISION_TYPE, tx)
            return {"commit": doc["commit"]}

    def _resolve_due(self):
        for partition, epoch, prepared in self.locks.due(self.clock.seconds() - self.settings.resolve_after):
            try:
                current = self._epoch(partition)
            except errors.NodeDBError:
                self.locks.drop(partition)
                continue
            if current != epoch:
                continue
            prepared.resolving = True
            home = self.layout.partition_of(prepared.tx)
            d = self._call(home, "tx.resolve", {"tx": prepared.tx}, self.settings.prepare_timeout)
            d.addCallback(self._resolved, partition, prepared)
            d.addErrback(self._unresolved, partition, prepared)

    def _resolved(self, reply, partition, prepared):
        commit = reply.get("commit") if type(reply) is dict else None
        if type(commit) is not bool:
            raise errors.ProtocolError("malformed tx.resolve reply")
        return self._finish(partition, prepared.tx, prepared.record_id, commit)

    def _unresolved(self, failure, partition, prepared):
        prepared.resolving = False
        self._log.debug("partition {p}: transaction {tx} not resolved yet: {e}", p=partition, tx=prepared.tx,
                        e=failure.value)


def _unit(change):
    kind, record_type, element_id, data, if_version = change
    if kind == "insert":
        return Insert(record_type, element_id, data)
    if kind == "update":
        return Update(record_type, element_id, data, if_version)
    return Delete(record_type, element_id, if_version)


def _prepared_reply(prepared):
    return {"record": prepared.record_id, "ids": [c[2] if c[0] == "insert" else None for c in prepared.ops]}


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
