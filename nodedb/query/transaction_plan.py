"""How a transaction request spreads over partitions, and its operations back in request form.

The router uses :func:`plan` to find the host a transaction goes to (the primary of its home
partition), and the coordinator in :mod:`nodedb.transactions` uses it to split the transaction
into each partition's share. Both sit here, below the two, so that the query layer reaches
the coordinator only through :class:`~nodedb.interfaces.ITransactions` and never imports it.
"""


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
    inverse of :func:`nodedb.query.api.parse_transaction`."""
    wire = []
    for operation in operations:
        item = {name: value for name, value in operation.items() if name != "id" and value is not None}
        if "id" in operation:
            item["key"] = operation["id"]
        wire.append(item)
    return wire
