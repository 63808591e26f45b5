"""The LMDB storage backend: durable, memory-mapped, with group commit.

Layout of the environment (one per host, in ``DATA_DIR/lmdb``):

- ``meta``: ``b"m:" + key`` -> CBOR value (host id, cluster settings, ``schema_version``);
  ``b"p:" + partition`` -> :class:`~nodedb.storage.PartitionState`.
- ``log``: ``partition | commit_id`` (big-endian) -> commit log entry.
- ``t:<record type>``: one sub-database per record type, keyed by the 8-byte big-endian
  element id (so a partition is a contiguous key range), value ``version | CBOR document``.

Writes run on one dedicated writer thread. Every :meth:`commit` that arrives while a synced
transaction is under way waits for the next one, and that next transaction carries all of
them; a unit that fails its checks writes nothing, so it does not spoil the others. The
reactor never waits on fsync; reads are memory-mapped and stay on the reactor.
"""

import fcntl
import os
import shutil
import struct

import lmdb
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from nodedb.errors import NodeDBError, Unavailable
from nodedb.ids import IdLayout
from nodedb.interfaces import IStorageBackend
from nodedb.storage import SCHEMA_VERSION, Append, Load, LogEntry, PartitionState
from nodedb.storage.apply import apply_operations, apply_replication
from nodedb import codec

_ID = struct.Struct(">Q")


def _type_key(record_type):
    return b"t:" + record_type.encode("ascii")


_VERSION = struct.Struct(">Q")
_PARTITION = struct.Struct(">I")

DEFAULT_MAP_SIZE = 64 * 1024**3
DEFAULT_MAX_TYPES = 1000
#: The most commit calls one synced transaction carries.
MAX_BATCH = 4096


class _Txn:
    """The :class:`nodedb.storage.apply.StoreTransaction` view of one LMDB write transaction."""

    def __init__(self, backend, txn):
        self.backend = backend
        self.txn = txn
        self._states = {}  # partition -> PartitionState as this transaction left it
        self._dirty = set()  # partitions whose state is written once, by flush()

    def get_element(self, record_type, element_id):
        value = self.txn.get(_ID.pack(element_id), db=self.backend._types[record_type])
        if value is None:
            return None
        return value[8:], _VERSION.unpack_from(value)[0]

    def put_element(self, record_type, element_id, data, version):
        self.txn.put(_ID.pack(element_id), _VERSION.pack(version) + data, db=self.backend._types[record_type])

    def delete_element(self, record_type, element_id):
        self.txn.delete(_ID.pack(element_id), db=self.backend._types[record_type])

    def partition_state(self, partition):
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = self.backend._read_partition_state(self.txn, partition)
        return state.copy()

    def put_partition_state(self, state):
        self._states[state.partition] = state
        self._dirty.add(state.partition)

    def put_meta(self, key, value):
        if value is None:
            self.txn.delete(key, db=self.backend._meta)
        else:
            self.txn.put(key, value, db=self.backend._meta)

    def flush(self):
        """Write the partition states the batch changed (once each, however many units
        changed them)."""
        for partition in sorted(self._dirty):
            state = self._states[partition]
            self.txn.put(b"p:" + _PARTITION.pack(partition), state.to_bytes(), db=self.backend._meta)
        self._dirty.clear()

    def append_log(self, entry):
        self.txn.put(entry.key(), entry.value(), db=self.backend._log)

    def log_epoch(self, partition, commit_id):
        value = self.txn.get(LogEntry.log_key(partition, commit_id), db=self.backend._log)
        return None if value is None else LogEntry.from_record(LogEntry.log_key(partition, commit_id), value).epoch

    def delete_log(self, partition, upto):
        self._delete_range(self.backend._log, LogEntry.log_key(partition, 0), LogEntry.log_key(partition, upto))

    def delete_partition(self, partition):
        layout = self.backend.layout
        first, last = _ID.pack(layout.first_id(partition)), _ID.pack(layout.last_id(partition))
        for db in self.backend._types.values():
            self._delete_range(db, first, last)
        self._delete_range(self.backend._log, LogEntry.log_key(partition, 0), LogEntry.log_key(partition, (1 << 64) - 1))

    def _delete_range(self, db, first, last):
        """Delete the keys in ``[first, last]`` of *db*."""
        cursor = self.txn.cursor(db=db)
        if not cursor.set_range(first):
            return
        while cursor.key() and cursor.key() <= last:
            if not cursor.delete():
                break


@implementer(IStorageBackend)
class LMDBStorage:
    """Elements, commit log and metadata in one LMDB environment.

    :param path: directory of the environment (created if missing).
    :param reactor: used to hand results back from the writer thread.
    :param synchronous: run writes inline on the calling thread (for unit tests only).
    """

    name = "lmdb"
    _log_ = Logger()

    def __init__(
        self,
        path,
        reactor,
        layout=None,
        map_size=DEFAULT_MAP_SIZE,
        max_types=DEFAULT_MAX_TYPES,
        synchronous=False,
    ):
        self.path = path
        self.reactor = reactor
        self.layout = layout or IdLayout()
        self.map_size = map_size
        self.max_types = max_types
        self.synchronous = synchronous
        self.env = None
        self._meta = self._log = None
        self._types = {}  # record type name -> LMDB database handle
        self._queue = []  # pending (work, Deferred)
        self._writing = False
        self._idle = None  # Deferred fired when the queue drains, during close
        self._pool = None
        self._lock = None
        self._batch_observers = []

    def observe_batches(self, callback):
        """Call ``callback(count)`` with the number of commit calls in each synced
        transaction (for metrics)."""
        self._batch_observers.append(callback)

    # -- lifecycle --------------------------------------------------------------------------

    def open(self):
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock_directory()
            self.env = lmdb.open(
                self.path,
                map_size=self.map_size,
                max_dbs=self.max_types + 2,
                sync=True,
                metasync=True,
                subdir=True,
                max_spare_txns=4,
            )
            self._meta = self.env.open_db(b"meta")
            self._log = self.env.open_db(b"log")
            self._check_schema()
            self._open_existing_types()
        except (lmdb.Error, OSError) as e:
            self._close_env()
            return defer.fail(Unavailable(f"cannot open storage at {self.path}: {e}"))
        except Unavailable as e:
            self._close_env()
            return defer.fail(e)
        if not self.synchronous:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="nodedb-lmdb-writer")
            self._pool.start()
        return defer.succeed(None)

    def _lock_directory(self):
        """Hold an exclusive lock on the store for as long as it is open: LMDB lets several
        processes share an environment, but two nodes on one store would hand out the same
        ids."""
        self._lock = open(os.path.join(self.path, "nodedb.lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise Unavailable(f"storage at {self.path} is in use by another nodedb process") from None

    def _check_schema(self):
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"m:schema_version", db=self._meta)
            if raw is None:
                txn.put(b"m:schema_version", codec.encode(SCHEMA_VERSION), db=self._meta)
                return
            version = codec.decode_stored(raw)
            if version > SCHEMA_VERSION:
                raise Unavailable(
                    f"storage at {self.path} has schema version {version}; "
                    f"this nodedb understands up to {SCHEMA_VERSION}: upgrade nodedb"
                )
            if version == 1:
                self._upgrade_log_to_v2(txn)
                txn.put(b"m:schema_version", codec.encode(SCHEMA_VERSION), db=self._meta)

    def _upgrade_log_to_v2(self, txn):
        """Version 2 records each log entry's epoch (0 for every entry written before)."""
        old_head = struct.Struct(">dBQB")
        cursor = txn.cursor(db=self._log)
        for key, value in list(cursor):
            timestamp, change_type, element_id, name_length = old_head.unpack_from(value)
            rest = value[old_head.size :]
            txn.put(key, struct.pack(">dHBQB", timestamp, 0, change_type, element_id, name_length) + rest, db=self._log)

    def _open_existing_types(self):
        with self.env.begin() as txn:
            names = [bytes(key) for key, _value in txn.cursor() if bytes(key).startswith(b"t:")]
        for name in names:
            self._types[name[2:].decode("ascii")] = self.env.open_db(name, create=False)

    @defer.inlineCallbacks
    def close(self):
        if self.env is None:
            return
        if self._writing or self._queue:
            self._idle = defer.Deferred()
            yield self._idle
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        self._close_env()

    def _close_env(self):
        if self.env is not None:
            self.env.close()
            self.env = None
            self._types.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- writes -----------------------------------------------------------------------------

    def commit(self, operations, timestamp, epochs=None):
        types = (operations[0].record_type,) if len(operations) == 1 else {op.record_type for op in operations}
        return self._submit(lambda txn: apply_operations(txn, operations, timestamp, self.layout, epochs), types)

    def replicate(self, units):
        types = set()
        for unit in units:
            if type(unit) is Append:
                types.update(entry.record_type for entry in unit.entries)
            elif type(unit) is Load:
                types.update(element[0] for element in unit.elements)
        return self._submit(lambda txn: apply_replication(txn, units, self.layout), types)

    def record_types(self):
        return sorted(self._types)

    def set_meta(self, items):
        encoded = [
            (b"m:" + key.encode("utf-8"), None if value is None else codec.encode(value)) for key, value in items.items()
        ]

        def write(txn):
            for key, value in encoded:
                txn.put_meta(key, value)

        return self._submit(write, ())

    def _submit(self, work, types):
        if self.env is None or self._idle is not None:
            return defer.fail(Unavailable("storage is closed"))
        d = defer.Deferred()
        self._queue.append((work, types, d))
        if not self._writing:
            self._writing = True
            if self.synchronous:
                self._start_batch()
            else:
                # Start on the next reactor turn, so that every request that arrived in the
                # same read joins this transaction rather than waiting for the next one.
                self.reactor.callLater(0, self._start_batch)
        return d

    def _start_batch(self):
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if self.synchronous:
            self._finish_batch(batch, self._write_batch(batch))
        else:
            self._pool.callInThread(self._write_in_thread, batch)

    def _write_in_thread(self, batch):
        outcomes = self._write_batch(batch)
        self.reactor.callFromThread(self._finish_batch, batch, outcomes)

    def _write_batch(self, batch):
        """Run every work of *batch* in one synced transaction.

        A work checks everything before it writes (see :mod:`nodedb.storage.apply`), so one
        that fails leaves the transaction as it found it and the others still commit.

        :return: per work, ``(True, result)`` or ``(False, exception)``.
        """
        outcomes = [None] * len(batch)
        for index, (_work, types, _d) in enumerate(batch):
            try:
                self._ensure_type_dbs(types)
            except NodeDBError as e:
                outcomes[index] = (False, e)
        try:
            with self.env.begin(write=True) as txn:
                view = _Txn(self, txn)
                for index, (work, _types, _d) in enumerate(batch):
                    if outcomes[index] is None:
                        try:
                            outcomes[index] = (True, work(view))
                        except NodeDBError as e:
                            outcomes[index] = (False, e)
                view.flush()
        except lmdb.MapFullError:
            return [(False, Unavailable("storage is full"))] * len(batch)
        except lmdb.Error as e:
            return [(False, Unavailable(f"storage error: {e}"))] * len(batch)
        except Exception as e:  # a bug: report it to every caller rather than lose it
            return [(False, e)] * len(batch)
        return outcomes

    def _ensure_type_dbs(self, types):
        """Open (creating if needed) the sub-database of each record type; writer thread only.

        Handles are opened outside any other transaction and cached for good, so the reactor
        thread never opens one (LMDB forbids concurrent opens).
        """
        for record_type in types:
            if record_type in self._types:
                continue
            if len(self._types) >= self.max_types:
                raise Unavailable(f"too many record types (the limit is {self.max_types})")
            try:
                self._types[record_type] = self.env.open_db(_type_key(record_type), create=True)
            except lmdb.DbsFullError:
                raise Unavailable(f"too many record types (the limit is {self.max_types})") from None

    def _finish_batch(self, batch, outcomes):
        for observer in self._batch_observers:
            observer(len(batch))
        if self._queue:
            self._start_batch()
        else:
            self._writing = False
            if self._idle is not None:
                self._idle, idle = None, self._idle
                idle.callback(None)
        for (_work, _types, d), (ok, value) in zip(batch, outcomes):
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    # -- reads ------------------------------------------------------------------------------

    def get(self, record_type, element_id):
        with self.env.begin() as txn:
            db = self._types.get(record_type)
            if db is None:
                return None
            value = txn.get(_ID.pack(element_id), db=db)
        if value is None:
            return None
        return value[8:], _VERSION.unpack_from(value)[0]

    def scan(self, record_type, after_id, limit):
        items = []
        with self.env.begin() as txn:
            db = self._types.get(record_type)
            if db is None:
                return items
            cursor = txn.cursor(db=db)
            start = _ID.pack(after_id + 1) if after_id < (1 << 64) - 1 else None
            if start is None or not cursor.set_range(start):
                return items
            for key, value in cursor:
                items.append((_ID.unpack(key)[0], value[8:], _VERSION.unpack_from(value)[0]))
                if len(items) >= limit:
                    break
        return items

    def read_log(self, partition, after_commit_id, limit):
        entries = []
        end = LogEntry.log_key(partition + 1, 0)
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._log)
            if not cursor.set_range(LogEntry.log_key(partition, after_commit_id + 1)):
                return entries
            for key, value in cursor:
                if key >= end or len(entries) >= limit:
                    break
                entries.append(LogEntry.from_record(key, value))
        return entries

    def _read_partition_state(self, txn, partition):
        raw = txn.get(b"p:" + _PARTITION.pack(partition), db=self._meta)
        return PartitionState(partition) if raw is None else PartitionState.from_bytes(partition, raw)

    def partition_state(self, partition):
        with self.env.begin() as txn:
            return self._read_partition_state(txn, partition)

    def get_meta(self, key):
        with self.env.begin() as txn:
            raw = txn.get(b"m:" + key.encode("utf-8"), db=self._meta)
        return None if raw is None else codec.decode_stored(raw)

    def stats(self):
        info = self.env.info()
        stat = self.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        disk_free = shutil.disk_usage(self.path).free
        return {"size_bytes": used, "free_bytes": max(0, min(disk_free, self.map_size - used))}
