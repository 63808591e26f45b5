"""Query processing on one host that holds every partition it is asked about.

This is the whole of query processing for a single node, and the part of it that runs where
the data is once requests are routed between hosts.
"""

from zope.interface import implementer

from nodedb.errors import InvalidRequest, NotFound
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
    """

    def __init__(self, storage, ids, clock, status, max_document_size=DEFAULT_MAX_DOCUMENT_SIZE):
        self.storage = storage
        self.ids = ids
        self.clock = clock
        self._status = status
        self.max_document_size = max_document_size

    def encode_document(self, doc):
        """The stored form of *doc*, or InvalidRequest if it is too large."""
        data = codec.encode(doc)
        if len(data) > self.max_document_size:
            raise InvalidRequest(
                f"document is {len(data)} bytes encoded; the limit is {self.max_document_size}"
            )
        return data

    def _commit(self, operations):
        return self.storage.commit(operations, self.clock.seconds())

    def _insert_operation(self, record_type, doc, near):
        data = self.encode_document(doc)
        return Insert(record_type, self.ids.allocate(self.ids.choose_partition(near)), data)

    def insert(self, record_type, doc, near=None):
        return self._commit([self._insert_operation(record_type, doc, near)]).addCallback(_only_id)

    def get(self, record_type, element_id):
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

    def scan(self, record_type, where=None, limit=None, cursor=None):
        predicate = compile_where(where)
        limit = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        after = decode_cursor(cursor)
        items = []
        examined = size = 0
        while True:
            batch = self.storage.scan(record_type, after, _SCAN_BATCH)
            for element_id, data, version in batch:
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
