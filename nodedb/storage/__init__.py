"""Storage: the values that cross the :class:`nodedb.interfaces.IStorageBackend` boundary.

Backends live beside this module: :mod:`nodedb.storage.lmdb` (the default, durable one) and
:mod:`nodedb.storage.memory` (for tests and the simulator). Both apply changes through the
same :func:`nodedb.storage.apply.apply_operations`, so they cannot disagree on semantics.
"""

import dataclasses
import enum
import struct
from dataclasses import dataclass


_LOG_KEY = struct.Struct(">IQ")
_LOG_HEAD = struct.Struct(">dHBQB")
_STATE = struct.Struct(">dQQQQQQQB")
_STATE_V1 = struct.Struct(">dQQQ")


class ChangeType(enum.IntEnum):
    """The change type of a commit log entry (the design's two-bit codes)."""

    CREATE = 0b00
    DELETE = 0b01
    UPDATE = 0b10
    TRANSACTION = 0b11  # reserved


#: Set in a log entry's change byte when the next entry of the partition belongs to the same
#: commit: replication ships a commit's entries together, so no copy holds half of one.
MORE = 0b100


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
class Promise:
    """Follow no epoch older than *epoch* in *partition* (a failover fences the old primary
    with it). With *lead*, this host is the primary of *epoch* from now on."""

    partition: int
    epoch: int
    lead: bool = False


@dataclass(slots=True)
class Append:
    """Entries shipped by the primary of *epoch*; *prev* is ``(commit_id, epoch)`` of the
    entry just before them. The log may be dropped up to *truncate* (every replica has it).
    *start* is the primary's last commit id when it took up *epoch*: a copy follows *epoch*
    (see :attr:`PartitionState.followed`) only once it holds everything up to there."""

    partition: int
    epoch: int
    prev: tuple
    entries: list
    truncate: int = 0
    start: int = 0


@dataclass(slots=True)
class Reset:
    """Start a full resync of *partition*: drop its elements and log."""

    partition: int
    epoch: int
    mtime: float


@dataclass(slots=True)
class Load:
    """Elements ``(record_type, element_id, data, version)`` copied by a full resync; *done*,
    when given, is ``(commit_id, epoch)``: the copy is complete as of that entry."""

    partition: int
    epoch: int
    elements: list
    done: tuple | None = None


@dataclass(slots=True)
class Truncate:
    """Drop the log of *partition* up to commit id *upto*."""

    partition: int
    upto: int


@dataclass(slots=True)
class LogEntry:
    """One commit log entry: ``timestamp | commit_id | change_type | element_id | data``.

    *data* is the document's CBOR for creates and updates and empty for deletes; the record
    type travels beside it so that a replica can replay the entry. *epoch* is the partition
    epoch of the primary that wrote it: two replicas whose entries at one commit id share the
    epoch hold the same log up to there (the log-matching rule replication relies on).
    """

    partition: int
    commit_id: int
    timestamp: float
    change_type: ChangeType
    record_type: str
    element_id: int
    data: bytes
    epoch: int = 0
    more: bool = False

    def key(self):
        """The log key: partition then commit id, so a partition's log is one key range."""
        return _LOG_KEY.pack(self.partition, self.commit_id)

    def value(self):
        name = self.record_type.encode("ascii")
        change = self.change_type | (MORE if self.more else 0)
        head = _LOG_HEAD.pack(self.timestamp, self.epoch, change, self.element_id, len(name))
        return head + name + self.data

    @staticmethod
    def log_key(partition, commit_id):
        return _LOG_KEY.pack(partition, commit_id)

    @classmethod
    def from_record(cls, key, value):
        partition, commit_id = _LOG_KEY.unpack(key)
        timestamp, epoch, change_type, element_id, name_length = _LOG_HEAD.unpack_from(value)
        start = _LOG_HEAD.size
        name = bytes(value[start : start + name_length]).decode("ascii")
        data = bytes(value[start + name_length :])
        more = bool(change_type & MORE)
        return cls(partition, commit_id, timestamp, ChangeType(change_type & 3), name, element_id, data, epoch, more)

    @classmethod
    def from_wire(cls, partition, value):
        commit_id, epoch, timestamp, change, record_type, element_id, data = value
        more = bool(change & MORE)
        return cls(partition, commit_id, timestamp, ChangeType(change & 3), record_type, element_id, data, epoch, more)

    def to_wire(self):
        change = int(self.change_type) | (MORE if self.more else 0)
        return [self.commit_id, self.epoch, self.timestamp, change, self.record_type, self.element_id, self.data]


@dataclass(slots=True)
class PartitionState:
    """What a host knows of its copy of one partition.

    *mtime* is when the copy was last reset (a full resync), *last_commit_id* the newest commit
    applied and *last_epoch* the epoch of that entry, *epoch* the newest replication epoch this
    copy has promised to follow (it refuses entries of older ones), *max_sequence* the highest
    id sequence ever used in it (so ids are never reused, even after deletes). The log holds
    the entries after *truncated* (whose entry had *truncated_epoch*); *syncing* is set while a
    full resync is filling the copy. *followed* is the newest epoch whose primary verified that
    this copy's whole log is a prefix of its own and holds at least everything that primary
    held when its epoch began (as in Viewstamped Replication's last normal view): a failover
    picks the replica with the highest ``(followed, last_commit_id)``.
    """

    partition: int
    mtime: float = 0.0
    last_commit_id: int = 0
    epoch: int = 0
    max_sequence: int = 0
    last_epoch: int = 0
    truncated: int = 0
    truncated_epoch: int = 0
    followed: int = 0
    syncing: bool = False

    def copy(self):
        return dataclasses.replace(self)

    def to_bytes(self):
        return _STATE.pack(
            self.mtime,
            self.last_commit_id,
            self.epoch,
            self.max_sequence,
            self.last_epoch,
            self.truncated,
            self.truncated_epoch,
            self.followed,
            self.syncing,
        )

    @classmethod
    def from_bytes(cls, partition, data):
        if len(data) == _STATE_V1.size:
            return cls(partition, *_STATE_V1.unpack(data))
        *fields, syncing = _STATE.unpack(data)
        return cls(partition, *fields, bool(syncing))

    def position(self):
        """How complete this copy is, as a failover compares them: ``(followed, last)``."""
        return (self.followed, self.last_commit_id)


#: The on-disk schema version; a store written by a newer one is refused.
SCHEMA_VERSION = 2
