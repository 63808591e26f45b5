"""The participant's decisions and the recovery's, as pure functions: no reactor, no store."""

import itertools

import pytest

from nodedb import codec, errors
from nodedb.codec import DECISION_TYPE, PREPARED_TYPE
from nodedb.ids import IdLayout
from nodedb.storage import Delete, Insert, Update
from nodedb.transactions.locks import Prepared
from nodedb.transactions.participant import (
    abort_decision,
    applied_versions,
    changes_of,
    check_changes,
    check_scope,
    check_unlocked,
    completion_units,
    decision_of,
    in_doubt,
    prepared_reply,
    unit_of,
)

LAYOUT = IdLayout(partition_bits=4)
A, B, NEW = LAYOUT.make(2, 1), LAYOUT.make(2, 2), LAYOUT.make(2, 100)
OPERATIONS = [
    {"op": "insert", "type": "t", "doc": {"n": 1}, "near": A},
    {"op": "update", "type": "t", "id": A, "doc": {"n": 2}, "if_version": 3},
    {"op": "delete", "type": "t", "id": B},
]


def changes():
    return changes_of(OPERATIONS, itertools.count(NEW).__next__, codec.encode)


def test_changes_give_inserts_their_ids_and_encode_documents_and_become_storage_units():
    assert changes() == [
        ["insert", "t", NEW, codec.encode({"n": 1}), None],
        ["update", "t", A, codec.encode({"n": 2}), 3],
        ["delete", "t", B, None, None],
    ]
    assert [unit_of(c) for c in changes()] == [
        Insert("t", NEW, codec.encode({"n": 1})),
        Update("t", A, codec.encode({"n": 2}), 3),
        Delete("t", B, None),
    ]


def test_a_prepare_takes_only_elements_of_its_own_partition():
    check_scope(OPERATIONS, 2, LAYOUT.partition_of)
    with pytest.raises(errors.InvalidRequest, match="not in partition 3"):
        check_scope(OPERATIONS, 3, LAYOUT.partition_of)


def test_an_element_locked_by_another_transaction_is_a_conflict_at_once():
    check_unlocked(changes(), {}.get)
    with pytest.raises(errors.Conflict, match=f"t {B} is in another transaction"):
        check_unlocked(changes(), {("t", B): 77}.get)


@pytest.mark.parametrize(
    "store, error",
    [
        ({("t", A): (b"", 3), ("t", B): (b"", 1)}, None),
        ({("t", NEW): (b"", 1), ("t", A): (b"", 3), ("t", B): (b"", 1)}, errors.Conflict),
        ({("t", A): (b"", 4), ("t", B): (b"", 1)}, errors.Conflict),
        ({("t", A): (b"", 3)}, errors.NotFound),
    ],
    ids=["apply", "insert exists", "stale version", "missing"],
)
def test_the_changes_are_checked_against_the_store(store, error):
    def get(record_type, element_id):
        return store.get((record_type, element_id))

    if error is None:
        check_changes(changes(), get)
    else:
        with pytest.raises(error):
            check_changes(changes(), get)


def test_the_prepare_reply_names_the_record_and_the_inserts_ids():
    prepared = Prepared(9, LAYOUT.make(2, 200), changes(), 0.0)
    assert prepared_reply(prepared) == {"record": LAYOUT.make(2, 200), "ids": [NEW, None, None]}


def test_a_completion_applies_the_changes_with_the_deletion_of_the_record_or_only_deletes_it():
    record = LAYOUT.make(2, 200)
    assert completion_units(record, changes(), commit=True) == [unit_of(c) for c in changes()] + [
        Delete(PREPARED_TYPE, record)
    ]
    assert completion_units(record, changes(), commit=False) == [Delete(PREPARED_TYPE, record)]
    results = [(NEW, 1), (A, 4), (B, 2), (record, 5)]
    assert applied_versions(changes(), results) == [NEW, 4, 2]


def test_in_doubt_asks_about_prepares_of_partitions_still_led_at_their_epoch():
    p1, p2, p3 = (Prepared(tx, LAYOUT.make(tx, 1), [], 0.0) for tx in (1, 2, 3))
    due = [(1, 7, p1), (2, 4, p2), (3, 1, p3), (3, 1, p3)]
    epochs = {1: 7, 2: 5}  # partition 2 failed over since; this host no longer leads 3
    assert in_doubt(due, epochs.get) == ([(1, p1)], [3])


def test_a_resolve_reply_is_a_decision_or_a_protocol_error():
    assert decision_of({"commit": True}) is True
    assert decision_of({"commit": False}) is False
    for reply in ({"commit": 1}, {}, [True], None):
        with pytest.raises(errors.ProtocolError):
            decision_of(reply)
    assert abort_decision(42) == Insert(DECISION_TYPE, 42, codec.encode({"commit": False}))
