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

from nodedb.errors import Conflict, NotFound
from nodedb.storage import ChangeType, Insert, LogEntry, PartitionState, Update


class StoreTransaction(Protocol):
    """The primitive reads and writes :func:`apply_operations` needs inside one transaction."""

    def get_element(self, record_type: str, element_id: int) -> tuple[bytes, int] | None: ...

    def put_element(self, record_type: str, element_id: int, data: bytes, version: int) -> None: ...

    def delete_element(self, record_type: str, element_id: int) -> None: ...

    def partition_state(self, partition: int) -> PartitionState:
        """A copy of the partition's state, which the caller may change."""

    def put_partition_state(self, state: PartitionState) -> None: ...

    def append_log(self, entry: LogEntry) -> None: ...


_MISSING = object()


def apply_operations(txn, operations, timestamp, layout):
    """Check, then apply, *operations* inside *txn*.

    :return: ``[(element_id, version), ...]`` in order.
    :raise Conflict, NotFound: before anything is written.
    """
    states = {}
    seen = {}  # (type, id) -> (data, version) or None, as earlier operations of the unit left it
    planned = []
    for op in operations:
        partition = layout.partition_of(op.element_id)
        state = states.get(partition)
        if state is None:
            state = states[partition] = txn.partition_state(partition)
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
        planned.append(LogEntry(partition, commit_id, timestamp, change, op.record_type, op.element_id, data))
    results = []
    for entry in planned:
        if entry.change_type is ChangeType.DELETE:
            txn.delete_element(entry.record_type, entry.element_id)
        else:
            txn.put_element(entry.record_type, entry.element_id, entry.data, entry.commit_id)
        txn.append_log(entry)
        results.append((entry.element_id, entry.commit_id))
    for state in states.values():
        txn.put_partition_state(state)
    return results
