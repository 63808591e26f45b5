"""Which elements prepared transactions hold, per partition a host leads.

A participant that prepared a transaction must be able to apply it later whatever happens
in between, so the elements it changes are locked from the prepare until the decision is
applied. The durable truth is the partition's prepare records (replicated like any element);
this table is their in-memory index, rebuilt from storage whenever the partition's epoch
changes, so a new primary after a failover holds exactly the locks its predecessor held.
"""

from dataclasses import dataclass, field

from twisted.internet import defer

from nodedb import codec
from nodedb.errors import Unavailable


@dataclass
class Prepared:
    """One prepared transaction in one partition.

    *record_id* is its prepare record, *ops* the changes it will apply (``[kind, type, id,
    data, if_version]``), *since* when this host learned of it (the clock's seconds). *durable*
    shares the outcome of its prepare here (None once rebuilt from storage).
    """

    tx: int
    record_id: int
    ops: list
    since: float
    resolving: bool = False
    keys: frozenset = field(default_factory=frozenset)
    durable: object = None


def record_keys(ops):
    """The ``(type, id)`` of every element *ops* change."""
    return frozenset((op[1], op[2]) for op in ops)


def encode_record(tx, ops):
    return codec.encode({"tx": tx, "ops": ops})


def decode_record(data):
    value = codec.decode_stored(data)
    return value["tx"], value["ops"]


def stored_prepares(storage):
    """:return: ``load(partition)`` for a :class:`LockTable`: the prepare records *storage*
    holds in the partition, in id order."""

    def load(partition):
        layout = storage.layout
        first, last = layout.first_id(partition), layout.last_id(partition)
        records, after = [], first - 1
        while True:
            batch = storage.scan(codec.PREPARED_TYPE, after, 256)
            records.extend((element_id, data) for element_id, data, _version in batch if element_id <= last)
            if len(batch) < 256 or batch[-1][0] >= last:
                return records
            after = batch[-1][0]

    return load


class _Partition:
    def __init__(self, epoch):
        self.epoch = epoch
        self.holders = {}  # (type, id) -> tx
        self.prepared = {}  # tx -> Prepared


class LockTable:
    """The locks of the partitions this host leads.

    :param load: ``load(partition)`` -> ``[(record_id, data), ...]``: the partition's prepare
        records as stored.
    :param clock: an ``IReactorTime``.
    """

    def __init__(self, load, clock):
        self._load = load
        self._clock = clock
        self._partitions = {}
        self._waiters = {}  # (type, id) -> [Deferred]

    def sync(self, partition, epoch):
        """The table of *partition* as of *epoch*, rebuilt from storage if it is older."""
        table = self._partitions.get(partition)
        if table is None or table.epoch != epoch:
            if table is not None:
                self._wake(table.holders)
            table = self._partitions[partition] = _Partition(epoch)
            now = self._clock.seconds()
            for record_id, data in self._load(partition):
                tx, ops = decode_record(data)
                self._hold(table, Prepared(tx, record_id, ops, now))
        return table

    @staticmethod
    def _hold(table, prepared):
        prepared.keys = record_keys(prepared.ops)
        table.prepared[prepared.tx] = prepared
        for key in prepared.keys:
            table.holders[key] = prepared.tx

    def prepared(self, partition, epoch, tx):
        return self.sync(partition, epoch).prepared.get(tx)

    def holder(self, partition, epoch, key):
        """The transaction that holds *key*, or None."""
        return self.sync(partition, epoch).holders.get(key)

    def acquire(self, partition, epoch, prepared):
        """Lock the elements of *prepared*; the caller checked that none is held."""
        self._hold(self.sync(partition, epoch), prepared)

    def release(self, partition, tx):
        table = self._partitions.get(partition)
        prepared = table.prepared.pop(tx, None) if table is not None else None
        if prepared is None:
            return
        for key in prepared.keys:
            if table.holders.get(key) == tx:
                del table.holders[key]
        self._wake(prepared.keys)

    def _wake(self, keys):
        for key in keys:
            for waiter in self._waiters.pop(key, ()):
                if not waiter.called:
                    waiter.callback(None)

    def wait(self, keys, timeout):
        """A Deferred that fires when one of *keys* is released (or the table rebuilt), or
        fails with Unavailable after *timeout* seconds (nothing was applied: safe to retry)."""
        d = defer.Deferred()
        for key in keys:
            self._waiters.setdefault(key, []).append(d)
        timer = self._clock.callLater(
            timeout, lambda: d.called or d.errback(Unavailable("an element is locked by a transaction being decided"))
        )

        def forget(result):
            if timer.active():
                timer.cancel()
            for key in keys:
                waiting = self._waiters.get(key)
                if waiting and d in waiting:
                    waiting.remove(d)
                    if not waiting:
                        del self._waiters[key]
            return result

        return d.addBoth(forget)

    def blocked(self, epochs, operations, partition_of, owner=None):
        """The ``(type, id)`` that storage *operations* change and a transaction other than
        *owner* holds (*epochs*: ``{partition: epoch}`` of the partitions they are in)."""
        held = []
        busy = {}
        for partition, epoch in epochs.items():
            holders = self.sync(partition, epoch).holders
            if holders:
                busy[partition] = holders
        if busy:
            for op in operations:
                holders = busy.get(partition_of(op.element_id))
                key = (op.record_type, op.element_id)
                if holders is not None and holders.get(key, owner) != owner:
                    held.append(key)
        return held

    def due(self, older_than):
        """``[(partition, epoch, Prepared)]`` learned before *older_than* and not being resolved."""
        return [
            (partition, table.epoch, prepared)
            for partition, table in self._partitions.items()
            for prepared in table.prepared.values()
            if prepared.since <= older_than and not prepared.resolving
        ]

    def drop(self, partition):
        """Forget *partition* (this host no longer leads it); waiters retry and find out."""
        table = self._partitions.pop(partition, None)
        if table is not None:
            self._wake(list(table.holders))
