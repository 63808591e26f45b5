"""Pages of a full resync (nodedb.logsync.resync), cut from a store faked by a dict."""

import pytest

from nodedb.logsync.resync import Resync, ResyncPage

FIRST, LAST = 100, 199  # the partition's element ids


class Store:
    """``{record_type: {element_id: data}}``, scanned as the storage backends do: ids above
    *after*, in order, past the partition's end."""

    def __init__(self, types):
        self.types = types
        self.scans = []

    def scan(self, record_type, after, limit):
        self.scans.append((record_type, after, limit))
        ids = sorted(i for i in self.types.get(record_type, {}) if i > after)[:limit]
        return [(i, self.types[record_type][i], i) for i in ids]


def page(resync, store, now=5.0, elements=3, max_bytes=1000):
    cut = ResyncPage(resync, FIRST, LAST, elements, max_bytes)
    while (scan := cut.scan()) is not None:
        cut.took(store.scan(*scan))
    return cut.part(0, 2, now)


def ids(part):
    return [element[1] for element in part["load"]]


def test_pages_go_type_by_type_and_the_last_says_done():
    store = Store({"doc": {101: b"a", 102: b"b", 150: b"c", 160: b"d"}, "user": {120: b"e"}, "zz": {}})
    resync = Resync(base=9, base_epoch=1, types=("doc", "user", "zz"))
    first, size = page(resync, store)
    assert first["reset"] == 5.0 and ids(first) == [101, 102, 150] and "done" not in first
    assert first["load"][0] == ["doc", 101, b"a", 101]
    assert size == 3 * 33 + 64
    assert store.scans == [("doc", FIRST - 1, 3)]
    second, _size = page(resync, store, now=6.0)
    assert "reset" not in second  # only the first page resets
    assert ids(second) == [160, 120] and second["done"] == [9, 1]
    assert [element[0] for element in second["load"]] == ["doc", "user"]
    assert resync.done_sent and resync.copied == 5


def test_elements_past_the_partition_end_end_the_type():
    store = Store({"doc": {150: b"a", 250: b"other partition", 251: b"x"}, "user": {101: b"u"}})
    resync = Resync(9, 1, ("doc", "user"))
    part, _size = page(resync, store, elements=10)
    assert ids(part) == [150, 101] and part["done"] == [9, 1]


def test_a_page_stops_scanning_once_it_has_its_bytes():
    store = Store({"doc": {101: b"x" * 400}, "user": {101: b"y" * 400}, "zz": {101: b"z"}})
    resync = Resync(9, 1, ("doc", "user", "zz"))
    part, _size = page(resync, store, elements=10, max_bytes=800)
    assert ids(part) == [101, 101] and "done" not in part  # 2 x 432 bytes: enough
    part, _size = page(resync, store, elements=10, max_bytes=800)
    assert [e[0] for e in part["load"]] == ["zz"] and part["done"] == [9, 1]


def test_an_empty_partition_is_one_page_that_resets_and_is_done():
    resync = Resync(0, 0, ("doc",))
    part, _size = page(resync, Store({}))
    assert part == {"p": 0, "e": 2, "reset": 5.0, "load": [], "done": [0, 0]}


@pytest.mark.parametrize("lost_after", [1, 2])
def test_a_lost_page_is_cut_again_the_same_after_a_rewind(lost_after):
    store = Store({"doc": {i: b"d" for i in range(101, 108)}})
    resync = Resync(9, 1, ("doc",))
    sent = []
    for _ in range(lost_after):
        resync.checkpoint()
        sent.append(page(resync, store)[0])
    resync.rewind()
    again, _size = page(resync, store)
    assert again == sent[-1]
