"""The participant's side of two-phase commit and the recovery of prepares left in doubt, as
pure functions: what a prepare records and checks, what a decision applies, which prepares to
ask the home about, and what its answer means.

A *change* is ``[kind, type, id, data, if_version]``: one operation of a transaction with its
id allocated and its document encoded, as a prepare record holds it
(:func:`nodedb.transactions.locks.encode_record`).
:class:`~nodedb.transactions.service.TransactionService` does the I/O around these.
"""

from nodedb import codec, errors
from nodedb.codec import DECISION_TYPE, PREPARED_TYPE
from nodedb.storage import Delete, Insert, Update


def changes_of(operations, allocate, encode):
    """The changes of checked *operations*: each insert gets the id ``allocate()`` gives, each
    document is ``encode(doc)`` (which raises InvalidRequest for one too large)."""
    changes = []
    for operation in operations:
        kind = operation["op"]
        if kind == "insert":
            element_id = allocate()
            changes.append([kind, operation["type"], element_id, encode(operation["doc"]), None])
        else:
            data = encode(operation["doc"]) if kind == "update" else None
            changes.append([kind, operation["type"], operation["id"], data, operation.get("if_version")])
    return changes


def unit_of(change):
    """The storage operation that applies *change*."""
    kind, record_type, element_id, data, if_version = change
    if kind == "insert":
        return Insert(record_type, element_id, data)
    if kind == "update":
        return Update(record_type, element_id, data, if_version)
    return Delete(record_type, element_id, if_version)


def check_scope(operations, partition, partition_of):
    """:raise InvalidRequest: if an operation of a ``tx.prepare`` for *partition* names an
    element of another partition."""
    for operation in operations:
        key = operation.get("id", operation.get("near"))
        if key is not None and partition_of(key) != partition:
            raise errors.InvalidRequest(f"tx.prepare: element {key} is not in partition {partition}")


def check_unlocked(changes, holder):
    """:raise Conflict: if another prepared transaction holds an element *changes* change
    (``holder((type, id))`` -> its tx or None). Transactions never wait for each other, so they
    never deadlock."""
    for _kind, record_type, element_id, _data, _if_version in changes:
        if holder((record_type, element_id)) is not None:
            raise errors.Conflict(f"{record_type} {element_id} is in another transaction being committed")


def check_changes(changes, get):
    """:raise Conflict or NotFound: if *changes* no longer apply to the store
    (``get(type, id)`` -> ``(data, version)`` or None)."""
    for kind, record_type, element_id, _data, if_version in changes:
        current = get(record_type, element_id)
        if kind == "insert":
            if current is not None:
                raise errors.Conflict(f"element {element_id} already exists")
        elif current is None:
            raise errors.NotFound(f"{record_type} {element_id} not found")
        elif if_version is not None and current[1] != if_version:
            raise errors.Conflict(f"{record_type} {element_id} is at version {current[1]}, not {if_version}")


def prepared_reply(prepared):
    """The ``tx.prepare`` reply for a :class:`~nodedb.transactions.locks.Prepared`: its record
    and the ids its inserts were given (None for the other operations)."""
    return {"record": prepared.record_id, "ids": [c[2] if c[0] == "insert" else None for c in prepared.ops]}


def completion_units(record_id, changes, commit):
    """What completing a prepare commits as one unit: its changes (on commit) and the deletion
    of its record."""
    units = [Delete(PREPARED_TYPE, record_id)]
    if commit:
        units = [unit_of(change) for change in changes] + units
    return units


def applied_versions(changes, results):
    """The ``tx.commit`` reply's versions: each insert's id, each other change's version."""
    return [element_id if change[0] == "insert" else version for change, (element_id, version) in zip(changes, results)]


def in_doubt(due, epoch_of):
    """What to do about the prepares *due* (:meth:`~nodedb.transactions.locks.LockTable.due`):
    ``(ask, forget)``. *ask* lists the ``(partition, Prepared)`` to ask the home about: those of
    a partition this host still leads at the epoch the lock was taken in (``epoch_of(partition)``
    -> its epoch now, or None when this host does not lead it). *forget* lists the partitions
    this host no longer leads. A prepare of a partition whose epoch moved on waits for the lock
    table's rebuild."""
    ask, forget = [], []
    for partition, epoch, prepared in due:
        current = epoch_of(partition)
        if current is None:
            if partition not in forget:
                forget.append(partition)
        elif current == epoch:
            ask.append((partition, prepared))
    return ask, forget


def decision_of(reply):
    """Whether a ``tx.resolve`` *reply* commits the transaction; :raise ProtocolError: if malformed."""
    commit = reply.get("commit") if type(reply) is dict else None
    if type(commit) is not bool:
        raise errors.ProtocolError("malformed tx.resolve reply")
    return commit


def abort_decision(tx):
    """The decision record a home writes when a participant asks about *tx* and there is none.
    The coordinator's commit decision is an insert of the same element, so whichever commits
    first wins."""
    return Insert(DECISION_TYPE, tx, codec.encode({"commit": False}))
