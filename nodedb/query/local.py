"""Query processing on one host that holds every partition it is asked about.

This is the whole of query processing for a single node, and the part of it that runs where
the data is once requests are routed between hosts.
"""

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from nodedb.errors import Conflict, InvalidRequest, NodeDBError, NotFound
from nodedb.interfaces import IQuery
from nodedb.query.cursor import decode_cursor, encode_cursor
from nodedb.query.filters import compile_where
from nodedb.storage import Delete, Insert, Update
from nodedb import codec

DEFAULT_MAX_DOCUMENT_SIZE = 1024 * 1024
#: Page size when a scan gives no limit, and the largest limit accepted.
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000
#: A page stops after examining this many elements, so that a filter matching little
#: never holds the reactor for long; the cursor then resumes where it stopped.
MAX_EXAMINED_PER_PAGE = 50_000
#: A page also stops once its documents add up to this many encoded bytes (it always holds at
#: least one), so that a page of large documents still fits in one reply frame.
MAX_PAGE_BYTES = 1024 * 1024
_SCAN_BATCH = 512


@implementer(IQuery)
class LocalQuery:
    """Runs every request against the local storage backend.

    :param storage: the :class:`~nodedb.interfaces.IStorageBackend`.
    :param ids: the :class:`~nodedb.interfaces.IIdAllocator`.
    :param clock: an ``IReactorTime``; its ``seconds()`` stamps commit log entries.
    :param status: a callable returning the status document.
    :param replication: the node's LogSync, once it has one: writes then commit only in the
        partitions this host is the ready primary of, at their epoch, and are acknowledged once
        a majority of the replicas has them; reads wait for its read barrier. None on a lone
        node without replication (every write is acknowledged once durable here).
    :param locks: the :class:`~nodedb.transactions.locks.LockTable` of a replicated node:
        writes and reads wait for the elements prepared transactions hold (None: no
        transactions across partitions).
    """

    def __init__(
        self, storage, ids, clock, status, max_document_size=DEFAULT_MAX_DOCUMENT_SIZE, replication=None, locks=None
    ):
        self.storage = storage
        self.ids = ids
        self.clock = clock
        self._status = status
        self.max_document_size = max_document_size
        self.replication = replication
        self.locks = locks
        #: How long a write or read waits for a transaction's lock before answering
        #: Unavailable (nothing applied; the client retries).
        self.lock_timeout = 5.0

    def encode_document(self, doc):
        """The stored form of *doc*, or InvalidRequest if it is too large."""
        data = codec.encode(doc)
        if len(data) > self.max_document_size:
            raise InvalidRequest(
                f"document is {len(data)} bytes encoded; the limit is {self.max_document_size}"
            )
        return data

    def commit(self, operations, owner=None, check=None):
        """Commit storage *operations* as one unit, acknowledged once a majority of each
        partition's replicas has it.

        :param owner: the transaction whose locks these operations may pass. Another
            transaction's lock on an element they change is a Conflict for a transaction, and
            makes a plain write wait for its release.
        :param check: called once the unit is durable here and before the majority is awaited:
            a prepare checks its operations then, against a store that holds every write
            submitted before it.
        """
        if self.replication is None:
            return self.storage.commit(operations, self.clock.seconds())
        partition_of = self.storage.layout.partition_of
        try:
            epochs = self.replication.begin({partition_of(op.element_id) for op in operations})
        except NodeDBError as e:
            return defer.fail(e)
        if self.locks is not None:
            held = self.locks.blocked(epochs, operations, partition_of, owner)
            if held:
                self.replication.landed(epochs)
                if owner is not None:
                    # Transactions never wait for each other, so they never deadlock.
                    return defer.fail(Conflict(f"{held[0][0]} {held[0][1]} is in another transaction being committed"))
                waiting = self.locks.wait(held, self.lock_timeout)
                return waiting.addCallback(lambda _: self.commit(operations, owner, check))
        d = self.storage.commit(operations, self.clock.seconds(), epochs)
        return d.addCallbacks(self._acknowledged, self._refused, (epochs, check), None, (epochs,))

    def _acknowledged(self, results, epochs, check=None):
        waiting = self.replication.acknowledge(results, epochs)
        if check is not None:
            try:
                check()
            except NodeDBError:
                if waiting is not None:
                    waiting.addErrback(lambda _: None)
                raise
        return results if waiting is None else waiting.addCallback(lambda _: results)

    def _refused(self, failure, epochs):
        """A NotFound or Conflict observed local state that may include writes not yet
        acknowledged: answer only once those are committed (as a read would), so that the
        refusal never reports a state a failover could undo."""
        self.replication.landed(epochs)
        partitions = tuple(epochs)
        failure.trap(NotFound, Conflict)
        barrier = self.replication.read_barrier(partitions)
        return failure if barrier is None else barrier.addCallback(lambda _: failure)

    def _after_barrier(self, partitions, read, *arguments):
        """``read(*arguments)`` now, answered once the read barrier of *partitions* says
        that what it saw is committed and this host still leads them (read-index)."""
        if self.replication is None:
            return read(*arguments)
        try:
            outcome = read(*arguments)
        except NodeDBError:
            outcome = Failure()
        barrier = self.replication.read_barrier(partitions)
        if barrier is None:
            if isinstance(outcome, Failure):
                outcome.raiseException()
            return outcome
        return barrier.addCallback(lambda _: outcome)

    def _insert_operation(self, record_type, doc, near, partition=None):
        data = self.encode_document(doc)
        if partition is None:
            partition = self.ids.choose_partition(near)
        return Insert(record_type, self.ids.allocate(partition), data)

    def insert(self, record_type, doc, near=None):
        return self.commit([self._insert_operation(record_type, doc, near)]).addCallback(_only_id)

    def get(self, record_type, element_id, consistency=None):
        """With ``consistency="replica"`` the local copy is read as it is (it may be stale);
        otherwise only the partition's primary answers, after its read barrier."""
        if consistency == "replica":
            return self.read(record_type, element_id)
        partition = self.storage.layout.partition_of(element_id)
        if self.locks is not None:
            waiting = self._wait_unlocked(partition, (record_type, element_id))
            if waiting is not None:
                return waiting.addCallback(lambda _: self.get(record_type, element_id))
        return self._after_barrier((partition,), self.read, record_type, element_id)

    def _wait_unlocked(self, partition, key):
        """A Deferred that fires once *key* is not locked by a prepared transaction, or None
        when it is not: a read never sees one partition of a transaction applied and another
        not yet."""
        try:
            epoch = self.replication.epochs((partition,))[partition]
        except NodeDBError:
            return None  # not the primary: the read barrier answers that
        if self.locks.holder(partition, epoch, key) is None:
            return None
        return self.locks.wait([key], self.lock_timeout)

    def read(self, record_type, element_id):
        """The local copy of the element, with no check that it is current."""
        found = self.storage.get(record_type, element_id)
        if found is None:
            raise NotFound(f"{record_type} {element_id} not found")
        data, version = found
        return [codec.decode_stored(data), version]

    def update(self, record_type, element_id, doc, if_version=None):
        operation = Update(record_type, element_id, self.encode_document(doc), if_version)
        return self.commit([operation]).addCallback(_only_version)

    def delete(self, record_type, element_id, if_version=None):
        return self.commit([Delete(record_type, element_id, if_version)]).addCallback(_only_version)

    def scan(self, record_type, where=None, limit=None, cursor=None, until=None):
        """A page of the elements with ids after the cursor, up to *until* (the last id of
        the partitions this host is primary for, when the router asks it for a range)."""
        predicate = compile_where(where)
        limit = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        after = decode_cursor(cursor)
        if until is None or self.replication is None:
            return self._scan(record_type, predicate, limit, after, until)
        layout = self.storage.layout
        partitions = range(layout.partition_of(after + 1), layout.partition_of(until) + 1)
        return self._after_barrier(partitions, self._scan, record_type, predicate, limit, after, until)

    def _scan(self, record_type, predicate, limit, after, until):
        items, _sizes, position, finished, _examined = self._scan_range(
            record_type, predicate, after, until, limit, MAX_EXAMINED_PER_PAGE, MAX_PAGE_BYTES
        )
        return {"items": items, "cursor": None if finished else encode_cursor(position)}

    def scan_parts(self, record_type, where, parts, limit, examine):
        """One batch of a distributed scan (:mod:`nodedb.query.scans`): scan each of *parts*,
        ``(partition, after)`` pairs in increasing partition order that this host leads, from
        after *after* to the partition's end, until *limit* matches, *examine* elements
        examined or :data:`MAX_PAGE_BYTES` of matching documents.

        :return: ``{"parts": [[partition, position, items, sizes], ...], "examined": n}`` for
            the partitions reached, in order. *position* is the last id examined (the
            partition's last id once it is finished), *items* the matches ``[id, doc,
            version]`` up to there, *sizes* their encoded sizes. Answered once the read
            barrier of the partitions reached has passed, as for :meth:`get`.
        :raise Unavailable: if this host does not lead one of the partitions reached.
        """
        predicate = compile_where(where)
        last_id = self.storage.layout.last_id
        reached = []
        examined = size = 0
        for partition, after in parts:
            if limit <= 0 or examined >= examine or size >= MAX_PAGE_BYTES:
                break
            until = last_id(partition)
            items, sizes, position, finished, count = self._scan_range(
                record_type, predicate, after, until, limit, examine - examined, MAX_PAGE_BYTES - size
            )
            reached.append([partition, until if finished else position, items, sizes])
            limit -= len(items)
            examined += count
            size += sum(sizes)
        outcome = {"parts": reached, "examined": examined}
        if self.replication is None:
            return outcome
        barrier = self.replication.read_barrier([part[0] for part in reached])
        return outcome if barrier is None else barrier.addCallback(lambda _: outcome)

    def _scan_range(self, record_type, predicate, after, until, limit, examine, max_bytes):
        """Scan the ids after *after* (up to *until*, if not None) until *limit* matches,
        *examine* elements examined, or *max_bytes* of matching documents (at least one).

        :return: ``(items, sizes, position, finished, examined)``: the matches, their encoded
            sizes, the last id examined (*after* if none), whether nothing is left to examine.
        """
        items, sizes = [], []
        examined = size = 0
        while True:
            batch = self.storage.scan(record_type, after, _SCAN_BATCH)
            for element_id, data, version in batch:
                if until is not None and element_id > until:
                    return items, sizes, after, True, examined
                after = element_id
                examined += 1
                doc = codec.decode_stored(data)
                if predicate is None or predicate(doc):
                    items.append([element_id, doc, version])
                    sizes.append(len(data))
                    size += len(data)
                    if len(items) >= limit or size >= max_bytes:
                        return items, sizes, after, False, examined
                if examined >= examine:
                    return items, sizes, after, False, examined
            if len(batch) < _SCAN_BATCH:
                return items, sizes, after, True, examined

    def transaction(self, operations):
        """Apply *operations* all or none in one storage commit: on a lone node (or when every
        operation is in one partition, as the router arranges in a cluster). Inserts without
        ``near`` go to one partition, so that a replicated commit stays in one log."""
        storage_ops = []
        partition = None
        for operation in operations:
            kind = operation["op"]
            if kind == "insert":
                near = operation.get("near")
                if near is None and partition is None:
                    partition = self.ids.choose_partition()
                insert = self._insert_operation(operation["type"], operation["doc"], near, partition if near is None else None)
                storage_ops.append(insert)
            elif kind == "update":
                data = self.encode_document(operation["doc"])
                storage_ops.append(Update(operation["type"], operation["id"], data, operation.get("if_version")))
            else:
                storage_ops.append(Delete(operation["type"], operation["id"], operation.get("if_version")))
        d = self.commit(storage_ops)
        d.addCallback(
            lambda results: [
                element_id if type(op) is Insert else version
                for op, (element_id, version) in zip(storage_ops, results)
            ]
        )
        return d

    def status(self):
        return self._status()


def _only_id(results):
    return results[0][0]


def _only_version(results):
    return results[0][1]
