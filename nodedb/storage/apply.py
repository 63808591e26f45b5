"""How a unit of operations changes a store: the one definition every backend runs.

A backend supplies a small transaction object (:class:`StoreTransaction`); this module decides
what each operation checks, which commit id it gets, and what it writes to the element
tables, the commit log and the partition metadata.

A unit is applied in two phases: every operation is checked first (against the store as the
earlier operations of the same unit would leave it), and only if all pass is anything
written. So a failed unit leaves its transaction untouched, and a backend needs no nested
transaction to make a unit all-or-nothing.
"""

from typing import Protocol

from nodedb.errors import Conflict, NotFound, Unavailable
from nodedb.storage import Append, ChangeType, Insert, Load, LogEntry, PartitionState, Promise, Reset, Truncate, Update


class StoreTransaction(Protocol):
    """The primitive reads and writes :func:`apply_operations` needs inside one transaction."""

    def get_element(self, record_type: str, element_id: int) -> tuple[bytes, int] | None: ...

    def put_element(self, record_type: str, element_id: int, data: bytes, version: int) -> None: ...

    def delete_element(self, record_type: str, element_id: int) -> None: ...

    def partition_state(self, partition: int) -> PartitionState:
        """A copy of the partition's state, which the caller may change."""

    def put_partition_state(self, state: PartitionState) -> None: ...

    def append_log(self, entry: LogEntry) -> None: ...

    def log_epoch(self, partition: int, commit_id: int) -> int | None:
        """The epoch of the log entry *commit_id* of *partition*, or None if it is not there."""

    def delete_log(self, partition: int, upto: int) -> None:
        """Drop the log entries of *partition* with commit ids up to *upto*."""

    def delete_partition(self, partition: int) -> None:
        """Drop every element (of every record type) and every log entry of *partition*."""


_MISSING = object()


def apply_operations(txn, operations, timestamp, layout, epochs=None):
    """Check, then apply, *operations* inside *txn*.

    :param epochs: ``{partition: epoch}``: when given, every partition written must be one of
        them, followed at exactly that epoch (so a primary that a failover fenced, or one not
        yet ready, writes nothing).
    :return: ``[(element_id, version), ...]`` in order.
    :raise Conflict, NotFound, Unavailable: before anything is written.
    """
    states = {}
    seen = {}  # (type, id) -> (data, version) or None, as earlier operations of the unit left it
    planned = []
    for op in operations:
        partition = layout.partition_of(op.element_id)
        state = states.get(partition)
        if state is None:
            state = states[partition] = txn.partition_state(partition)
            if epochs is not None and (epochs.get(partition) != state.epoch or state.syncing):
                raise Unavailable(f"this host is not the primary of partition {partition} now")
        key = (op.record_type, op.element_id)
        current = seen.get(key, _MISSING)
        if current is _MISSING:
            current = txn.get_element(op.record_type, op.element_id)
        kind = type(op)
        if kind is Insert:
            if current is not None:
                raise Conflict(f"element {op.element_id} already exists")
            change = ChangeType.CREATE
            state.max_sequence = max(state.max_sequence, layout.sequence_of(op.element_id))
        else:
            if current is None:
                raise NotFound(f"{op.record_type} {op.element_id} not found")
            if op.if_version is not None and current[1] != op.if_version:
                raise Conflict(f"{op.record_type} {op.element_id} is at version {current[1]}, not {op.if_version}")
            change = ChangeType.UPDATE if kind is Update else ChangeType.DELETE
        state.last_commit_id += 1
        commit_id = state.last_commit_id
        data = b"" if change is ChangeType.DELETE else op.data
        seen[key] = None if change is ChangeType.DELETE else (data, commit_id)
        state.last_epoch = state.epoch
        planned.append(LogEntry(partition, commit_id, timestamp, change, op.record_type, op.element_id, data, state.epoch))
    last_of = {entry.partition: index for index, entry in enumerate(planned)}
    results = []
    for index, entry in enumerate(planned):
        entry.more = last_of[entry.partition] != index
        if entry.change_type is ChangeType.DELETE:
            txn.delete_element(entry.record_type, entry.element_id)
        else:
            txn.put_element(entry.record_type, entry.element_id, entry.data, entry.commit_id)
        txn.append_log(entry)
        results.append((entry.element_id, entry.commit_id))
    for state in states.values():
        txn.put_partition_state(state)
    return results


# -- replication ----------------------------------------------------------------------------


def apply_replication(txn, units, layout):
    """Apply replication *units* (:class:`~nodedb.storage.Promise`, ``Append``, ``Reset``,
    ``Load``, ``Truncate``) inside *txn*, each on its own.

    A unit from an older epoch than the partition follows, or one that does not continue
    this copy's log, is refused and changes nothing but what it had already applied (each
    entry is valid on its own).

    :return: ``[(accepted, PartitionState), ...]``: per unit, whether it was taken, and the
        partition's state after it.
    """
    results = []
    for unit in units:
        state = txn.partition_state(unit.partition)
        accepted = _REPLICATION[type(unit)](txn, state, unit, layout)
        txn.put_partition_state(state)
        results.append((accepted, state.copy()))
    return results


def epoch_at(state, commit_id, log_epoch):
    """The epoch of the entry *commit_id* of the copy whose state is *state*, or None when it
    is not known there; ``log_epoch(partition, commit_id)`` reads it from the log."""
    if commit_id == 0:
        return 0
    if commit_id == state.last_commit_id:
        return state.last_epoch
    if commit_id == state.truncated:
        return state.truncated_epoch
    if commit_id < state.truncated or commit_id > state.last_commit_id:
        return None
    return log_epoch(state.partition, commit_id)


def _epoch_at(txn, state, commit_id):
    return epoch_at(state, commit_id, txn.log_epoch)


def _promise(txn, state, unit, layout):
    if unit.epoch < state.epoch:
        return False
    state.epoch = unit.epoch
    if unit.lead:
        state.followed = unit.epoch
    return True


def _append(txn, state, unit, layout):
    if unit.epoch < state.epoch or state.syncing:
        return False
    state.epoch = unit.epoch
    prev_id, prev_epoch = unit.prev
    if _epoch_at(txn, state, prev_id) != prev_epoch:
        return False
    if prev_id + len(unit.entries) < state.last_commit_id:
        # Entries held here past the batch are not vouched for by this primary: it must
        # compare the end of this log with its own first.
        return False
    for entry in unit.entries:
        if entry.commit_id <= state.last_commit_id:
            if _epoch_at(txn, state, entry.commit_id) != entry.epoch:
                return False
            continue
        if entry.commit_id != state.last_commit_id + 1:
            return False
        _apply_entry(txn, state, entry, layout)
    if state.last_commit_id >= unit.start:
        # Only now does this copy hold all that the primary held when its epoch began (and
        # so every write acknowledged before): until then a failover must not prefer it.
        state.followed = unit.epoch
    _truncate(txn, state, min(unit.truncate, state.last_commit_id))
    return True


def _apply_entry(txn, state, entry, layout):
    if entry.change_type is ChangeType.DELETE:
        txn.delete_element(entry.record_type, entry.element_id)
    else:
        txn.put_element(entry.record_type, entry.element_id, entry.data, entry.commit_id)
        state.max_sequence = max(state.max_sequence, layout.sequence_of(entry.element_id))
    txn.append_log(entry)
    state.last_commit_id = entry.commit_id
    state.last_epoch = entry.epoch


def _reset(txn, state, unit, layout):
    if unit.epoch < state.epoch:
        return False
    txn.delete_partition(state.partition)
    fresh = PartitionState(state.partition, mtime=unit.mtime, epoch=unit.epoch, max_sequence=state.max_sequence)
    fresh.syncing = True
    for name in PartitionState.__slots__:
        setattr(state, name, getattr(fresh, name))
    return True


def _load(txn, state, unit, layout):
    if unit.epoch < state.epoch or not state.syncing:
        return False
    state.epoch = unit.epoch
    for record_type, element_id, data, version in unit.elements:
        txn.put_element(record_type, element_id, data, version)
        state.max_sequence = max(state.max_sequence, layout.sequence_of(element_id))
    if unit.done is not None:
        commit_id, epoch = unit.done
        state.last_commit_id = state.truncated = commit_id
        state.last_epoch = state.truncated_epoch = epoch
        state.followed = unit.epoch
        state.syncing = False
    return True


def _truncate(txn, state, upto):
    if upto <= state.truncated:
        return
    epoch = _epoch_at(txn, state, upto)
    txn.delete_log(state.partition, upto)
    state.truncated, state.truncated_epoch = upto, epoch


def _truncate_unit(txn, state, unit, layout):
    _truncate(txn, state, min(unit.upto, state.last_commit_id))
    return True


_REPLICATION = {Promise: _promise, Append: _append, Reset: _reset, Load: _load, Truncate: _truncate_unit}
