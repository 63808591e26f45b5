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
from nodedb.wire import codec

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
    """

    def __init__(self, storage, ids, clock, status, max_document_size=DEFAULT_MAX_DOCUMENT_SIZE, replication=None):
        self.storage = storage
        self.ids = ids
        self.clock = clock
        self._status = status
        self.max_document_size = max_document_size
        self.replication = replication

    def encode_document(self, doc):
        """The stored form of *doc*, or InvalidRequest if it is too large."""
        data = codec.encode(doc)
        if len(data) > self.max_document_size:
            raise InvalidRequest(
                f"document is {len(data)} bytes encoded; the limit is {self.max_document_size}"
            )
        return data

    def _commit(self, operations):
        if self.replication is None:
            return self.storage.commit(operations, self.clock.seconds())
        partition_of = self.storage.layout.partition_of
        try:
            epochs = self.replication.begin({partition_of(op.element_id) for op in operations})
        except NodeDBError as e:
            return defer.fail(e)
        d = self.storage.commit(operations, self.clock.seconds(), epochs)
        return d.addCallbacks(self._acknowledged, self._refused, (epochs,), None, (epochs,))

    def _acknowledged(self, results, epochs):
        waiting = self.replication.acknowledge(results, epochs)
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

    def _insert_operation(self, record_type, doc, near):
        data = self.encode_document(doc)
        return Insert(record_type, self.ids.allocate(self.ids.choose_partition(near)), data)

    def insert(self, record_type, doc, near=None):
        return self._commit([self._insert_operation(record_type, doc, near)]).addCallback(_only_id)

    def get(self, record_type, element_id, consistency=None):
        """With ``consistency="replica"`` the local copy is read as it is (it may be stale);
        otherwise only the partition's primary answers, after its read barrier."""
        if consistency == "replica":
            return self.read(record_type, element_id)
        partition = self.storage.layout.partition_of(element_id)
        return self._after_barrier((partition,), self.read, record_type, element_id)

    def read(self, record_type, element_id):
        """The local copy of the element, with no check that it is current."""
        found = self.storage.get(record_type, element_id)
        if found is None:
            raise NotFound(f"{record_type} {element_id} not found")
        data, version = found
        return [codec.decode_stored(data), version]

    def update(self, record_type, element_id, doc, if_version=None):
        operation = Update(record_type, element_id, self.encode_document(doc), if_version)
        return self._commit([operation]).addCallback(_only_version)

    def delete(self, record_type, element_id, if_version=None):
        return self._commit([Delete(record_type, element_id, if_version)]).addCallback(_only_version)

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
        items = []
        examined = size = 0
        while True:
            batch = self.storage.scan(record_type, after, _SCAN_BATCH)
            for element_id, data, version in batch:
                if until is not None and element_id > until:
                    return {"items": items, "cursor": None}
                after = element_id
                examined += 1
                doc = codec.decode_stored(data)
                if predicate is None or predicate(doc):
                    items.append([element_id, doc, version])
                    size += len(data)
                    if len(items) >= limit or size >= MAX_PAGE_BYTES:
                        return {"items": items, "cursor": encode_cursor(after)}
                if examined >= MAX_EXAMINED_PER_PAGE:
                    return {"items": items, "cursor": encode_cursor(after)}
            if len(batch) < _SCAN_BATCH:
                return {"items": items, "cursor": None}

    def transaction(self, operations):
        """Apply *operations* all or none; on one node every partition is local, so one
        storage commit makes the whole transaction atomic."""
        storage_ops = []
        for operation in operations:
            kind = operation["op"]
            if kind == "insert":
                storage_ops.append(self._insert_operation(operation["type"], operation["doc"], operation.get("near")))
            elif kind == "update":
                data = self.encode_document(operation["doc"])
                storage_ops.append(Update(operation["type"], operation["id"], data, operation.get("if_version")))
            else:
                storage_ops.append(Delete(operation["type"], operation["id"], operation.get("if_version")))
        d = self._commit(storage_ops)
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
