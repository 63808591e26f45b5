"""The ``transaction`` request: its checks, how it spreads over partitions, and its operations
back in request form.

The request API checks it with :data:`TRANSACTION`; the router uses :func:`plan` to find the
host a transaction goes to (the primary of its home partition), and the coordinator in
:mod:`nodedb.transactions` uses it to split the transaction into each partition's share. All of
it sits here, below both, so that neither the query layer nor the transactions import the
other: the router reaches the coordinator only through
:class:`~nodedb.interfaces.ITransactions`.
"""

from nodedb import errors
from nodedb.wire.requests import parse_arguments
from nodedb.wire.schema import Field, Kind, Schema

MAX_TRANSACTION_OPERATIONS = 10_000
_OP_ONLY = frozenset({"op"})


def parse_transaction(operations):
    """The checked operations of a ``transaction`` request."""
    if type(operations) is not list or not operations:
        raise errors.InvalidRequest("transaction: ops must be a non-empty list")
    if len(operations) > MAX_TRANSACTION_OPERATIONS:
        raise errors.InvalidRequest(f"transaction: at most {MAX_TRANSACTION_OPERATIONS} operations")
    parsed = []
    for index, operation in enumerate(operations):
        op = operation.get("op") if type(operation) is dict else None
        if op not in ("insert", "update", "delete"):
            raise errors.InvalidRequest(f"transaction: operation {index} must be insert, update or delete")
        try:
            arguments = parse_arguments(op, operation, ignore=_OP_ONLY)
        except errors.InvalidRequest as e:
            raise errors.InvalidRequest(f"transaction: operation {index}: {e.message}") from None
        arguments["op"] = op
        if "key" in arguments:
            arguments["id"] = arguments.pop("key")
        parsed.append(arguments)
    return parsed


TRANSACTION = Schema(
    "transaction",
    (Field("ops", Kind("array", parse_transaction), required=True, check_missing=True, argument="operations"),),
)


def plan(operations, partition_of):
    """``(home, {partition: [operation index, ...]})`` of checked *operations*; home is None
    when no operation names an id (inserts without ``near`` only)."""
    home = None
    groups = {}
    for index, operation in enumerate(operations):
        key = operation.get("id", operation.get("near"))
        if key is None:
            continue
        partition = partition_of(key)
        if home is None:
            home = partition
        groups.setdefault(partition, []).append(index)
    if home is not None:
        unplaced = [i for i, op in enumerate(operations) if op.get("id", op.get("near")) is None]
        groups[home] = sorted(groups[home] + unplaced)
    return home, groups


def to_wire(operations):
    """Checked operations back in their request form (``key`` for the element id), the
    inverse of :func:`parse_transaction`."""
    wire = []
    for operation in operations:
        item = {name: value for name, value in operation.items() if name != "id" and value is not None}
        if "id" in operation:
            item["key"] = operation["id"]
        wire.append(item)
    return wire
