"""How a unit of operations changes a store: the one definition every backend runs.

A backend supplies a small transaction object (:class:`StoreTransaction`); this module decides
what each operation checks, which commit id it gets, and what it writes to the element
tables, the commit log and the partition metadata.
"""

from typing import Protocol

from nodedb.errors import Conflict, NotFound
from nodedb.storage import ChangeType, Delete, Insert, LogEntry, PartitionState, Update


class StoreTransaction(Protocol):
    """The primitive reads and writes :func:`apply_operations` needs inside one transaction."""

    def get_element(self, record_type: str, element_id: int) -> tuple[bytes, int] | None: ...

    def put_element(self, record_type: str, element_id: int, data: bytes, version: int) -> None: ...

    def delete_element(self, record_type: str, element_id: int) -> None: ...

    def partition_state(self, partition: int) -> PartitionState: ...

    def put_partition_state(self, state: PartitionState) -> None: ...

    def append_log(self, entry: LogEntry) -> None: ...


def apply_operations(txn, operations, timestamp, layout):
    """Check and apply *operations* inside *txn*.

    :return: ``[(element_id, version), ...]`` in order.
    :raise Conflict, NotFound: before anything is written for that operation; the caller
        discards the transaction so that the unit applies all-or-nothing.
    """
    states = {}
    results = []
    for op in operations:
        partition = layout.partition_of(op.element_id)
        state = states.get(partition)
        if state is None:
            state = states[partition] = txn.partition_state(partition)
        current = txn.get_element(op.record_type, op.element_id)
        if type(op) is Insert:
            if current is not None:
                raise Conflict(f"element {op.element_id} already exists")
            change = ChangeType.CREATE
        else:
            if current is None:
                raise NotFound(f"{op.record_type} {op.element_id} not found")
            if op.if_version is not None and current[1] != op.if_version:
                raise Conflict(
                    f"{op.record_type} {op.element_id} is at version {current[1]}, not {op.if_version}"
                )
            change = ChangeType.UPDATE if type(op) is Update else ChangeType.DELETE
        commit_id = state.last_commit_id + 1
        state.last_commit_id = commit_id
        if change is ChangeType.DELETE:
            data = b""
            txn.delete_element(op.record_type, op.element_id)
        else:
            data = op.data
            txn.put_element(op.record_type, op.element_id, data, commit_id)
            if change is ChangeType.CREATE:
                state.max_sequence = max(state.max_sequence, layout.sequence_of(op.element_id))
        txn.append_log(LogEntry(partition, commit_id, timestamp, change, op.record_type, op.element_id, data))
        results.append((op.element_id, commit_id))
    for state in states.values():
        txn.put_partition_state(state)
    return results


__all__ = ["apply_operations", "StoreTransaction", "Insert", "Update", "Delete"]
