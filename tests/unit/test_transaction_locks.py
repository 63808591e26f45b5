"""The lock table of prepared transactions, and how a transaction is split over partitions."""

from twisted.internet import task

from nodedb import errors
from nodedb.ids import IdLayout
from nodedb.wire.transaction import plan, to_wire
from nodedb.storage import Update
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.transactions.locks import LockTable, Prepared, encode_record

LAYOUT = IdLayout(partition_bits=4)


def eid(partition, sequence):
    return LAYOUT.make(partition, sequence)


class Records:
    """Prepare records as storage would list them, per partition."""

    def __init__(self):
        self.by_partition = {}
        self.loads = 0

    def load(self, partition):
        self.loads += 1
        return list(self.by_partition.get(partition, []))


def table(records=None):
    records = records or Records()
    return LockTable(records.load, task.Clock()), records


def prepared(tx, *keys):
    return Prepared(tx, eid(0, 100 + tx), [["update", t, i, b"", None] for t, i in keys], 0.0)


def test_a_lock_blocks_other_transactions_and_plain_writes_but_not_its_owner():
    locks, _ = table()
    locks.acquire(0, 1, prepared(7, ("doc", eid(0, 1))))
    ops = [Update("doc", eid(0, 1), b"x"), Update("doc", eid(0, 2), b"x")]
    assert locks.blocked({0: 1}, ops, LAYOUT.partition_of) == [("doc", eid(0, 1))]
    assert locks.blocked({0: 1}, ops, LAYOUT.partition_of, owner=8) == [("doc", eid(0, 1))]
    assert locks.blocked({0: 1}, ops, LAYOUT.partition_of, owner=7) == []
    assert locks.holder(0, 1, ("doc", eid(0, 1))) == 7
    assert locks.holder(0, 1, ("other", eid(0, 1))) is None


def test_a_waiter_wakes_when_the_lock_is_released_and_fails_unavailable_after_its_timeout():
    locks, _ = table()
    clock = locks._clock
    key = ("doc", eid(0, 1))
    locks.acquire(0, 1, prepared(7, key))
    woken = locks.wait([key], timeout=5.0)
    no_result(woken)
    locks.release(0, 7)
    assert success_result_of(woken) is None
    assert locks.holder(0, 1, key) is None

    locks.acquire(0, 1, prepared(8, key))
    stuck = locks.wait([key], timeout=5.0)
    clock.advance(5.0)
    failure_result_of(stuck, errors.Unavailable)
    assert not clock.getDelayedCalls()


def test_a_new_epoch_rebuilds_the_table_from_the_prepare_records_and_wakes_waiters():
    records = Records()
    locks, _ = table(records)
    key, other = ("doc", eid(0, 1)), ("doc", eid(0, 2))
    locks.acquire(0, 1, prepared(7, key))
    waiting = locks.wait([key], timeout=5.0)
    # A failover: the new epoch's primary holds what is stored, here a prepare of tx 9 on *other*.
    records.by_partition[0] = [(eid(0, 200), encode_record(9, [["delete", "doc", eid(0, 2), None, None]]))]
    assert locks.holder(0, 2, key) is None
    assert locks.holder(0, 2, other) == 9
    assert success_result_of(waiting) is None
    assert [p.tx for _, _, p in locks.due(float("inf"))] == [9]


def test_due_lists_prepares_older_than_the_limit_and_not_being_resolved():
    locks, _ = table()
    clock = locks._clock
    old = prepared(1, ("doc", eid(0, 1)))
    locks.acquire(0, 1, old)
    clock.advance(10)
    young = Prepared(2, eid(0, 102), [["update", "doc", eid(0, 2), b"", None]], clock.seconds())
    locks.acquire(0, 1, young)
    assert [p.tx for _, _, p in locks.due(clock.seconds() - 5)] == [1]
    old.resolving = True
    assert locks.due(clock.seconds() - 5) == []
    locks.drop(0)
    assert locks.due(float("inf")) == []


def test_plan_puts_a_transaction_at_its_first_named_partition_with_its_plain_inserts():
    a, b = eid(3, 1), eid(5, 1)
    operations = [
        {"op": "insert", "type": "t", "doc": {}},
        {"op": "update", "type": "t", "id": b, "doc": {}},
        {"op": "insert", "type": "t", "doc": {}, "near": a},
        {"op": "delete", "type": "t", "id": b + 1},
    ]
    home, groups = plan(operations, LAYOUT.partition_of)
    assert home == 5
    assert groups == {5: [0, 1, 3], 3: [2]}
    assert plan([{"op": "insert", "type": "t", "doc": {}}], LAYOUT.partition_of) == (None, {})
    assert to_wire(operations[1:2]) == [{"op": "update", "type": "t", "doc": {}, "key": b}]
