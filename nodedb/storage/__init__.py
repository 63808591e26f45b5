"""Storage: the values that cross the :class:`nodedb.interfaces.IStorageBackend` boundary.

Backends live beside this module: :mod:`nodedb.storage.lmdb` (the default, durable one) and
:mod:`nodedb.storage.memory` (for tests and the simulator). Both apply changes through the
same :func:`nodedb.storage.apply.apply_operations`, so they cannot disagree on semantics.
"""

import enum
import struct
from dataclasses import dataclass


_LOG_KEY = struct.Struct(">IQ")
_LOG_HEAD = struct.Struct(">dBQB")
_STATE = struct.Struct(">dQQQ")


class ChangeType(enum.IntEnum):
    """The change type of a commit log entry (the design's two-bit codes)."""

    CREATE = 0b00
    DELETE = 0b01
    UPDATE = 0b10
    TRANSACTION = 0b11  # reserved for the prepare/decision records of multi-host transactions


@dataclass(slots=True)
class Insert:
    """Create element *element_id* of *record_type*; the id must not exist."""

    record_type: str
    element_id: int
    data: bytes


@dataclass(slots=True)
class Update:
    """Replace the document of an existing element; with *if_version*, only at that version."""

    record_type: str
    element_id: int
    data: bytes
    if_version: int | None = None


@dataclass(slots=True)
class Delete:
    """Remove an existing element; with *if_version*, only at that version."""

    record_type: str
    element_id: int
    if_version: int | None = None


@dataclass(slots=True)
class LogEntry:
    """One commit log entry: ``timestamp | commit_id | change_type | element_id | data``.

    *data* is the document's CBOR for creates and updates and empty for deletes; the record
    type travels beside it so that a replica can replay the entry.
    """

    partition: int
    commit_id: int
    timestamp: float
    change_type: ChangeType
    record_type: str
    element_id: int
    data: bytes

    def key(self):
        """The log key: partition then commit id, so a partition's log is one key range."""
        return _LOG_KEY.pack(self.partition, self.commit_id)

    def value(self):
        name = self.record_type.encode("ascii")
        return _LOG_HEAD.pack(self.timestamp, self.change_type, self.element_id, len(name)) + name + self.data

    @staticmethod
    def log_key(partition, commit_id):
        return _LOG_KEY.pack(partition, commit_id)

    @classmethod
    def from_record(cls, key, value):
        partition, commit_id = _LOG_KEY.unpack(key)
        timestamp, change_type, element_id, name_length = _LOG_HEAD.unpack_from(value)
        start = _LOG_HEAD.size
        name = bytes(value[start : start + name_length]).decode("ascii")
        data = bytes(value[start + name_length :])
        return cls(partition, commit_id, timestamp, ChangeType(change_type), name, element_id, data)


@dataclass(slots=True)
class PartitionState:
    """What a host knows of its copy of one partition.

    *mtime* is when the copy was last reset (a full resync), *last_commit_id* the newest commit
    applied, *epoch* the partition's replication epoch, *max_sequence* the highest id sequence
    ever used in it (so ids are never reused, even after deletes).
    """

    partition: int
    mtime: float = 0.0
    last_commit_id: int = 0
    epoch: int = 0
    max_sequence: int = 0

    def copy(self):
        return PartitionState(self.partition, self.mtime, self.last_commit_id, self.epoch, self.max_sequence)

    def to_bytes(self):
        return _STATE.pack(self.mtime, self.last_commit_id, self.epoch, self.max_sequence)

    @classmethod
    def from_bytes(cls, partition, data):
        return cls(partition, *_STATE.unpack(data))


#: The on-disk schema version; a store written by a newer one is refused.
SCHEMA_VERSION = 1
