"""LocalQuery on a MemoryStorage: every request of a single node, synchronously."""

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nodedb.errors import Conflict, InvalidRequest, NotFound, Unavailable
from nodedb.ids import IdAllocator, IdLayout
from nodedb.interfaces import IQuery
from nodedb.query import local
from nodedb.query.cursor import decode_cursor
from nodedb.query.local import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, LocalQuery
from nodedb.storage import ChangeType
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb import codec

LAYOUT = IdLayout()


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def storage():
    storage = MemoryStorage()
    success_result_of(storage.open())
    return storage


@pytest.fixture
def query(storage, clock):
    ids = IdAllocator(LAYOUT, {0: 0, 1: 0, 2: 0}, inserts_per_turn=4)
    return LocalQuery(storage, ids, clock, status=lambda: {"host": {"id": "h"}, "hosts": []}, max_document_size=1024)


def insert(query, doc, record_type="user", near=None):
    return success_result_of(query.insert(record_type, doc, near))


def test_provides_the_interface(query):
    assert verifyObject(IQuery, query)


def test_insert_then_get(query):
    element = insert(query, {"name": "ada", "tags": ["x"], "raw": b"\x01"})
    assert element == LAYOUT.make(0, 1)
    assert query.get("user", element) == [{"name": "ada", "tags": ["x"], "raw": b"\x01"}, 1]


def test_inserts_get_increasing_ids_and_spread_over_partitions(query):
    elements = [insert(query, {"n": n}) for n in range(10)]
    assert len(set(elements)) == 10
    partitions = [LAYOUT.partition_of(e) for e in elements]
    assert partitions == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [LAYOUT.sequence_of(e) for e in elements[:4]] == [1, 2, 3, 4]


def test_insert_near_keeps_related_elements_together(query):
    parent = insert(query, {"n": 0})
    for _ in range(6):
        child = insert(query, {"parent": parent}, record_type="order", near=parent)
        assert LAYOUT.partition_of(child) == LAYOUT.partition_of(parent)


def test_insert_near_a_partition_not_held_is_unavailable(query):
    with pytest.raises(Unavailable):
        query.insert("user", {"a": 1}, near=LAYOUT.make(40, 1))


def test_commits_are_stamped_with_the_clock(query, storage, clock):
    element = insert(query, {"v": 1})
    clock.advance(2.5)
    success_result_of(query.update("user", element, {"v": 2}))
    entries = storage.read_log(0, 0, 10)
    assert [(e.timestamp, e.change_type) for e in entries] == [(1_700_000_000, ChangeType.CREATE), (1_700_000_002.5, ChangeType.UPDATE)]


def test_get_of_a_missing_element_is_not_found(query):
    with pytest.raises(NotFound, match="user 5 not found"):
        query.get("user", 5)
    element = insert(query, {"a": 1})
    with pytest.raises(NotFound):
        query.get("other_type", element)


def test_update_returns_the_new_version(query):
    element = insert(query, {"v": 1})
    assert success_result_of(query.update("user", element, {"v": 2})) == 2
    assert query.get("user", element) == [{"v": 2}, 2]
    assert success_result_of(query.update("user", element, {"v": 3}, if_version=2)) == 3
    failure_result_of(query.update("user", element, {"v": 4}, if_version=2), Conflict)
    assert query.get("user", element) == [{"v": 3}, 3]


def test_update_of_a_missing_element_is_not_found(query):
    failure_result_of(query.update("user", LAYOUT.make(0, 9), {"v": 1}), NotFound)


def test_delete_returns_the_version_of_the_delete(query):
    element = insert(query, {"v": 1})
    failure_result_of(query.delete("user", element, if_version=5), Conflict)
    assert success_result_of(query.delete("user", element, if_version=1)) == 2
    with pytest.raises(NotFound):
        query.get("user", element)
    failure_result_of(query.delete("user", element), NotFound)


def test_documents_over_the_size_limit_are_refused_and_change_nothing(query, storage):
    fits = {"b": b"x" * (1024 - len(codec.encode({"b": b""})) - 2)}
    assert len(codec.encode(fits)) == 1024
    element = insert(query, fits)
    too_big = {"b": fits["b"] + b"x"}
    with pytest.raises(InvalidRequest, match="1025 bytes encoded; the limit is 1024"):
        query.insert("user", too_big)
    with pytest.raises(InvalidRequest, match="limit is 1024"):
        query.update("user", element, too_big)
    with pytest.raises(InvalidRequest, match="limit is 1024"):
        query.transaction([{"op": "insert", "type": "user", "doc": {"a": 1}}, {"op": "insert", "type": "user", "doc": too_big}])
    assert [item[0] for item in storage.scan("user", -1, 10)] == [element]
    assert query.get("user", element)[1] == 1


# -- scans ----------------------------------------------------------------------------------


def scan_all(query, record_type="user", where=None, limit=None):
    """Every page of a scan: the items and the number of pages."""
    items, cursor, pages = [], None, 0
    while True:
        page = query.scan(record_type, where, limit, cursor)
        pages += 1
        items.extend(page["items"])
        cursor = page["cursor"]
        if cursor is None:
            return items, pages
        assert pages < 10_000


def test_scan_pages_through_everything_in_id_order(query):
    elements = [insert(query, {"n": n, "even": n % 2 == 0}) for n in range(1300)]
    insert(query, {"other": True}, record_type="other")
    items, pages = scan_all(query, limit=100)
    assert [item[0] for item in items] == sorted(elements)
    assert pages == 14, "13 full pages, then an empty one that says the scan is over"
    assert all([item[1], item[2]] == query.get("user", item[0]) for item in items)


def test_a_page_that_ends_exactly_at_the_last_element_has_a_cursor(query):
    elements = [insert(query, {"n": n}) for n in range(4)]
    page = query.scan("user", limit=4)
    assert [item[0] for item in page["items"]] == elements
    assert decode_cursor(page["cursor"]) == elements[-1]
    assert query.scan("user", limit=4, cursor=page["cursor"]) == {"items": [], "cursor": None}


def test_scan_default_page_size(query):
    for n in range(DEFAULT_PAGE_SIZE + 5):
        insert(query, {"n": n})
    page = query.scan("user")
    assert len(page["items"]) == DEFAULT_PAGE_SIZE
    rest = query.scan("user", cursor=page["cursor"])
    assert len(rest["items"]) == 5 and rest["cursor"] is None


def test_scan_with_a_filter_pages_over_matches(query):
    numbers = {insert(query, {"n": n, "even": n % 2 == 0}): n for n in range(700)}
    items, _pages = scan_all(query, where={"even": True, "n": {">=": 100}}, limit=64)
    expected = [element for element in sorted(numbers) if numbers[element] % 2 == 0 and numbers[element] >= 100]
    assert [item[0] for item in items] == expected
    assert len(expected) == 300


def test_scan_of_an_unknown_type_is_empty(query):
    insert(query, {"a": 1})
    assert query.scan("nobody") == {"items": [], "cursor": None}


def test_scan_skips_deleted_elements(query):
    elements = [insert(query, {"n": n}) for n in range(5)]
    success_result_of(query.delete("user", elements[2]))
    assert [item[0] for item in query.scan("user")["items"]] == elements[:2] + elements[3:]


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
def test_scan_limit_is_bounded(query, limit):
    with pytest.raises(InvalidRequest, match=f"between 1 and {MAX_PAGE_SIZE}"):
        query.scan("user", limit=limit)


def test_scan_accepts_the_largest_limit(query):
    insert(query, {"a": 1})
    assert len(query.scan("user", limit=MAX_PAGE_SIZE)["items"]) == 1


@pytest.mark.parametrize("where, cursor", [({"a": {"~": 1}}, None), (None, "garbage!")])
def test_scan_refuses_malformed_filters_and_cursors(query, where, cursor):
    with pytest.raises(InvalidRequest):
        query.scan("user", where=where, cursor=cursor)


def test_a_page_stops_after_examining_its_share(query, monkeypatch):
    monkeypatch.setattr(local, "MAX_EXAMINED_PER_PAGE", 50)
    monkeypatch.setattr(local, "_SCAN_BATCH", 16)
    elements = sorted(insert(query, {"n": n}) for n in range(120))
    numbers = [query.get("user", element)[0]["n"] for element in elements]
    # Only the last element matches: each page examines 50, finds nothing, and says where it stopped.
    where = {"n": numbers[119]}
    page = query.scan("user", where=where, limit=10)
    assert page["items"] == [] and decode_cursor(page["cursor"]) == elements[49]
    page = query.scan("user", where=where, limit=10, cursor=page["cursor"])
    assert page["items"] == [] and decode_cursor(page["cursor"]) == elements[99]
    page = query.scan("user", where=where, limit=10, cursor=page["cursor"])
    assert [item[0] for item in page["items"]] == [elements[119]] and page["cursor"] is None
    items, pages = scan_all(query, where={"n": {"in": [numbers[0], numbers[60], numbers[119]]}}, limit=10)
    assert [item[0] for item in items] == [elements[0], elements[60], elements[119]] and pages == 3


def test_a_page_of_large_documents_stops_at_the_byte_limit(query, monkeypatch):
    monkeypatch.setattr(local, "MAX_PAGE_BYTES", 2500)
    elements = sorted(insert(query, {"blob": "x" * 1000}) for _ in range(7))
    page = query.scan("user", limit=100)
    assert [item[0] for item in page["items"]] == elements[:3]  # 3 x ~1 KB reaches 2.5 KB
    items, pages = scan_all(query, limit=100)
    assert [item[0] for item in items] == elements and pages == 3


def test_one_document_larger_than_the_byte_limit_still_makes_a_page(query, monkeypatch):
    monkeypatch.setattr(local, "MAX_PAGE_BYTES", 10)
    elements = sorted(insert(query, {"blob": "x" * 100}) for _ in range(2))
    page = query.scan("user", limit=100)
    assert [item[0] for item in page["items"]] == elements[:1] and page["cursor"] is not None


# -- transactions ---------------------------------------------------------------------------


def test_a_transaction_returns_results_in_order(query):
    existing = insert(query, {"v": 1})
    doomed = insert(query, {"v": 1})
    results = success_result_of(
        query.transaction(
            [
                {"op": "insert", "type": "order", "doc": {"user": existing}, "near": existing},
                {"op": "update", "type": "user", "id": existing, "doc": {"v": 2}, "if_version": 1},
                {"op": "delete", "type": "user", "id": doomed},
                {"op": "insert", "type": "order", "doc": {"n": 2}},
            ]
        )
    )
    order = results[0]
    assert LAYOUT.partition_of(order) == LAYOUT.partition_of(existing)
    assert results[1:3] == [4, 5], "versions are commit ids of partition 0"
    assert query.get("order", order) == [{"user": existing}, 3]
    assert query.get("user", existing) == [{"v": 2}, 4]
    with pytest.raises(NotFound):
        query.get("user", doomed)
    assert query.get("order", results[3])[0] == {"n": 2}


@pytest.mark.parametrize(
    "last, error",
    [
        ({"op": "update", "type": "user", "id": LAYOUT.make(0, 99), "doc": {}}, NotFound),
        ({"op": "delete", "type": "user", "id": LAYOUT.make(0, 1), "if_version": 7}, Conflict),
    ],
)
def test_a_transaction_applies_all_or_nothing(query, storage, last, error):
    existing = insert(query, {"v": 1})
    before = (storage.scan("user", -1, 100), storage.read_log(0, 0, 100), storage.partition_state(0))
    d = query.transaction(
        [
            {"op": "insert", "type": "user", "doc": {"new": 1}},
            {"op": "update", "type": "user", "id": existing, "doc": {"v": 2}},
            {"op": "insert", "type": "order", "doc": {"new": 2}},
            last,
        ]
    )
    failure_result_of(d, error)
    assert (storage.scan("user", -1, 100), storage.read_log(0, 0, 100), storage.partition_state(0)) == before
    assert storage.scan("order", -1, 100) == []


def test_status_comes_from_the_node(query):
    assert query.status() == {"host": {"id": "h"}, "hosts": []}
