"""An in-memory storage backend: the reference for tests and the cluster simulator.

It keeps exactly the semantics of the LMDB backend (both run
:func:`nodedb.storage.apply.apply_operations`) but nothing survives the process, unless the
simulator hands the same :class:`MemoryStore` to a restarted node to model "restart from
storage".
"""

import bisect

from twisted.internet import defer
from zope.interface import implementer

from nodedb.errors import NodeDBError, Unavailable
from nodedb.ids import IdLayout
from nodedb.interfaces import IStorageBackend
from nodedb.storage import SCHEMA_VERSION, LogEntry, PartitionState
from nodedb.storage.apply import apply_operations, apply_replication


class MemoryStore:
    """The data of a memory backend, kept apart so that it can outlive one backend object."""

    def __init__(self):
        self.types = {}  # record type -> {element id: (data, version)}
        self.sorted_ids = {}  # record type -> sorted list of ids
        self.log = {}  # partition -> list of LogEntry in commit order
        self.partitions = {}  # partition -> PartitionState
        self.meta = {"schema_version": SCHEMA_VERSION}


class _MemoryTransaction:
    """Reads and writes straight on a :class:`MemoryStore`.

    :func:`apply_operations` writes only once every check has passed, so there is nothing to
    roll back.
    """

    def __init__(self, store, layout):
        self.store = store
        self.layout = layout

    def get_element(self, record_type, element_id):
        return self.store.types.get(record_type, {}).get(element_id)

    def put_element(self, record_type, element_id, data, version):
        table = self.store.types.setdefault(record_type, {})
        if element_id not in table:
            bisect.insort(self.store.sorted_ids.setdefault(record_type, []), element_id)
        table[element_id] = (data, version)

    def delete_element(self, record_type, element_id):
        if self.store.types.get(record_type, {}).pop(element_id, None) is not None:
            ids = self.store.sorted_ids[record_type]
            del ids[bisect.bisect_left(ids, element_id)]

    def partition_state(self, partition):
        state = self.store.partitions.get(partition)
        return state.copy() if state is not None else PartitionState(partition)

    def put_partition_state(self, state):
        self.store.partitions[state.partition] = state.copy()

    def append_log(self, entry):
        self.store.log.setdefault(entry.partition, []).append(entry)

    def _log_index(self, partition, commit_id):
        return bisect.bisect_left(self.store.log.get(partition, []), commit_id, key=_commit_id)

    def log_epoch(self, partition, commit_id):
        entries = self.store.log.get(partition, [])
        index = self._log_index(partition, commit_id)
        if index < len(entries) and entries[index].commit_id == commit_id:
            return entries[index].epoch
        return None

    def delete_log(self, partition, upto):
        entries = self.store.log.get(partition, [])
        del entries[: self._log_index(partition, upto + 1)]

    def delete_partition(self, partition):
        self.store.log.pop(partition, None)
        for record_type, ids in self.store.sorted_ids.items():
            first = bisect.bisect_left(ids, self.layout.first_id(partition))
            last = bisect.bisect_right(ids, self.layout.last_id(partition))
            table = self.store.types[record_type]
            for element_id in ids[first:last]:
                del table[element_id]
            del ids[first:last]


def _commit_id(entry):
    return entry.commit_id


@implementer(IStorageBackend)
class MemoryStorage:
    """Storage in Python dicts; every commit is applied at once."""

    name = "memory"

    def __init__(self, store=None, layout=None):
        self.store = store if store is not None else MemoryStore()
        self.layout = layout or IdLayout()
        self._open = False

    def open(self):
        self._open = True
        return defer.succeed(None)

    def close(self):
        self._open = False
        return defer.succeed(None)

    def commit(self, operations, timestamp, epochs=None):
        if not self._open:
            return defer.fail(Unavailable("storage is closed"))
        try:
            results = apply_operations(self._transaction(), operations, timestamp, self.layout, epochs)
        except NodeDBError as e:
            return defer.fail(e)
        return defer.succeed(results)

    def replicate(self, units):
        if not self._open:
            return defer.fail(Unavailable("storage is closed"))
        return defer.succeed(apply_replication(self._transaction(), units, self.layout))

    def _transaction(self):
        return _MemoryTransaction(self.store, self.layout)

    def record_types(self):
        return sorted(name for name, ids in self.store.sorted_ids.items() if ids)

    def get(self, record_type, element_id):
        return self.store.types.get(record_type, {}).get(element_id)

    def scan(self, record_type, after_id, limit):
        ids = self.store.sorted_ids.get(record_type, [])
        table = self.store.types[record_type] if ids else {}
        start = bisect.bisect_right(ids, after_id)
        return [(i, *table[i]) for i in ids[start : start + limit]]

    def read_log(self, partition, after_commit_id, limit):
        entries = self.store.log.get(partition, [])
        start = bisect.bisect_right(entries, after_commit_id, key=_commit_id)
        return entries[start : start + limit]

    def partition_state(self, partition):
        return self._transaction().partition_state(partition)

    def get_meta(self, key):
        return self.store.meta.get(key)

    def set_meta(self, items):
        if not self._open:
            return defer.fail(Unavailable("storage is closed"))
        for key, value in items.items():
            if value is None:
                self.store.meta.pop(key, None)
            else:
                self.store.meta[key] = value
        return defer.succeed(None)

    def stats(self):
        size = sum(len(data) + 16 for table in self.store.types.values() for data, _v in table.values())
        size += sum(len(entry.data) + 32 for log in self.store.log.values() for entry in log)
        return {"size_bytes": size, "free_bytes": 1 << 40}


__all__ = ["MemoryStorage", "MemoryStore", "LogEntry"]
