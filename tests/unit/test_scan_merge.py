"""Distributed scans on their coordinator (nodedb.query.scans), under a Clock.

The partitions live in one MemoryStorage read by LocalQuery.scan_parts (the code a partition's
primary runs); a fake map says which made-up host leads each partition, and the fake fetch
checks that a batch goes to that host, so that a failover is a change of the map.
"""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from nodedb import errors
from nodedb.ids import IdAllocator, IdLayout
from nodedb.query.cursor import encode_cursor, read_cursor
from nodedb.query.local import MAX_EXAMINED_PER_PAGE, LocalQuery
from nodedb.query.scans import ScanMerge, ScanService, ScanSettings, batch_schema
from nodedb.storage import Insert
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb import codec

LAYOUT = IdLayout()
PARTITIONS = 6
HOSTS = ("a", "b", "c")
BATCH = batch_schema(LAYOUT, lambda: PARTITIONS)
#: Elements per partition: uneven, one empty.
COUNTS = (30, 0, 17, 45, 5, 22)


class FakeHosts:
    """The primaries of the partitions, each answering batches from the shared store."""

    def __init__(self, local):
        self.local = local
        self.primaries = {p: HOSTS[p % 3] for p in range(PARTITIONS)}
        self.calls = []  # (host, [partitions], limit)
        self.failing = {}  # host -> the error its batches fail with
        self.held = None  # while a list, answers wait here as (Deferred, answer)

    def primary_of(self, partition):
        return self.primaries.get(partition)

    def fetch(self, host, request):
        request = codec.decode(codec.encode(request))  # it travels as CBOR
        self.calls.append((host, [p for p, _after in request["parts"]], request["limit"]))
        if host in self.failing:
            return defer.fail(self.failing[host])
        if any(self.primaries.get(p) != host for p, _after in request["parts"]):
            return defer.fail(errors.Unavailable(f"host {host} does not lead these partitions"))
        arguments = BATCH.arguments(request, envelope={"op"})
        answer = codec.decode(codec.encode(self.local.scan_parts(**arguments)))
        if self.held is None:
            return answer
        d = defer.Deferred()
        self.held.append((d, answer))
        return d

    def hold(self):
        self.held = []

    def release(self, keep_holding=False):
        held, self.held = self.held, ([] if keep_holding else None)
        for d, answer in held:
            d.callback(answer)

    def hosts_called(self):
        return [host for host, _parts, _limit in self.calls]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store():
    storage = MemoryStorage()
    success_result_of(storage.open())
    operations = []
    for partition, count in enumerate(COUNTS):
        for sequence in range(1, count + 1):
            doc = {"n": sequence, "p": partition, "even": sequence % 2 == 0, "name": f"e{sequence:03}"}
            operations.append(Insert("item", LAYOUT.make(partition, sequence), codec.encode(doc)))
    success_result_of(storage.commit(operations, 1.0))
    return storage


@pytest.fixture
def hosts(store, clock):
    local = LocalQuery(store, IdAllocator(LAYOUT, {}), clock, status=dict)
    return FakeHosts(local)


def service(hosts, clock, host_id="a", run=b"run-1", **settings):
    return ScanService(host_id, LAYOUT, lambda: PARTITIONS, hosts.primary_of, hosts.fetch, clock, run=run, settings=ScanSettings(**settings))


@pytest.fixture
def scans(hosts, clock):
    return service(hosts, clock)


def expected(where=lambda doc: True):
    return [
        LAYOUT.make(p, n)
        for p, count in enumerate(COUNTS)
        for n in range(1, count + 1)
        if where({"n": n, "p": p, "even": n % 2 == 0, "name": f"e{n:03}"})
    ]


def page(scans, cursor=None, limit=10, where=None):
    return success_result_of(scans.page("item", where, limit, cursor))


def scan_all(scans, limit, where=None, cursor=None):
    """Every page to the end: ``(ids, pages)``."""
    ids, pages = [], 0
    while True:
        result = page(scans, cursor, limit, where)
        pages += 1
        assert len(result["items"]) <= limit
        ids.extend(item[0] for item in result["items"])
        cursor = result["cursor"]
        if cursor is None:
            return ids, pages
        assert pages < 1000


# -- the merge ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 50, 500])
def test_pages_return_every_partition_in_id_order(scans, limit):
    ids, pages = scan_all(scans, limit)
    assert ids == expected()
    # The last page says the scan is over, or (when it did not know yet) an empty one follows.
    assert pages in (-(-len(ids) // limit), -(-len(ids) // limit) + 1)


def test_items_carry_documents_and_versions(scans):
    items = page(scans, limit=3)["items"]
    assert items[0] == [LAYOUT.make(0, 1), {"n": 1, "p": 0, "even": False, "name": "e001"}, items[0][2]]
    assert all(type(item[2]) is int for item in items)


@pytest.mark.parametrize(
    "where, test",
    [
        ({"n": 5}, lambda d: d["n"] == 5),
        ({"n": {"<": 4}}, lambda d: d["n"] < 4),
        ({"n": {"<=": 4}}, lambda d: d["n"] <= 4),
        ({"n": {">": 20}}, lambda d: d["n"] > 20),
        ({"n": {">=": 17, "<": 30}}, lambda d: 17 <= d["n"] < 30),
        ({"name": {"in": ["e002", "e017", "e044", "zzz"]}}, lambda d: d["name"] in ("e002", "e017", "e044")),
        ({"even": True, "p": {"in": [0, 3]}}, lambda d: d["even"] and d["p"] in (0, 3)),
    ],
)
def test_filters_are_evaluated_where_the_data_is(scans, where, test):
    for limit in (3, 100):
        ids, _pages = scan_all(scans, limit, where)
        assert ids == expected(test)


def test_a_finished_scan_ends_with_no_cursor_and_an_empty_type_is_empty(scans):
    result = page(scans, limit=1000)
    assert len(result["items"]) == sum(COUNTS) and result["cursor"] is None
    assert page(scans, limit=5, where={"n": -1}) == {"items": [], "cursor": None}
    assert success_result_of(scans.page("nothing", None, 5, None)) == {"items": [], "cursor": None}


def test_the_first_round_asks_every_primary_host_at_once_for_a_bounded_batch(scans, hosts):
    hosts.hold()
    d = scans.page("item", None, 10, None)
    no_result(d)
    assert sorted(hosts.hosts_called()) == ["a", "b", "c"], "one batch per primary host, all at once"
    calls = {host: (parts, limit) for host, parts, limit in hosts.calls}
    assert calls["a"] == ([0, 3], 10) and calls["b"] == ([1, 4], 10) and calls["c"] == ([2, 5], 10)
    hosts.release()
    result = success_result_of(d)
    assert [item[0] for item in result["items"]] == expected()[:10]


def test_the_next_page_is_fetched_in_the_background(scans, hosts):
    hosts.hold()
    d = scans.page("item", None, 10, None)
    hosts.release(keep_holding=True)
    first = success_result_of(d)
    # Answering started the next page's batches.
    assert [host for host, _parts, _limit in hosts.calls[3:]] == ["a"], "partition 0 is asked for the next page"
    hosts.release(keep_holding=True)
    # Every batch answer is held from now on: the page was ready before it was asked for.
    second = success_result_of(scans.page("item", None, 10, first["cursor"]))
    assert [item[0] for item in second["items"]] == expected()[10:20]
    assert scans.status()["cursors"] == 1


def test_fetching_stays_bounded_by_the_page_limit(hosts, clock):
    scans = service(hosts, clock)
    result = page(scans, limit=5)
    kept = scans._idle[read_cursor(result["cursor"]).number][0]
    assert kept.merge.buffered() <= (len(HOSTS) + 1) * 5
    assert all(limit <= 5 for _host, _parts, limit in hosts.calls)


def test_a_sparse_filter_moves_the_merge_on_without_stalling(hosts, clock):
    scans = service(hosts, clock, batch_examine=4, page_examine=12)
    where = {"n": {"in": [29, 44]}}
    cursor, ids, pages, empty = None, [], 0, 0
    while True:
        result = page(scans, cursor, 10, where)
        pages += 1
        empty += not result["items"]
        ids.extend(item[0] for item in result["items"])
        if result["cursor"] is None:
            break
        assert read_cursor(result["cursor"]).after > (read_cursor(cursor).after if cursor else -1)
        cursor = result["cursor"]
    assert ids == [LAYOUT.make(0, 29), LAYOUT.make(3, 29), LAYOUT.make(3, 44)]
    assert empty > 0, "pages stopped after examining their share"


# -- failover -------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [errors.Unavailable("not the primary"), errors.Timeout("no answer")])
def test_a_failed_stream_is_replanned_to_the_new_primary(scans, hosts, clock, error):
    first = page(scans, limit=20)
    hosts.failing["a"] = error  # partition 3 is far from done
    d = scans.page("item", None, 1000, first["cursor"])
    no_result(d)
    clock.advance(1)
    no_result(d)  # still asked of a, which still fails
    assert hosts.hosts_called().count("a") >= 4
    for partition, host in hosts.primaries.items():
        if host == "a":
            hosts.primaries[partition] = "c"
    clock.advance(1)
    rest = success_result_of(d)
    ids = [item[0] for item in first["items"] + rest["items"]]
    assert ids == expected() and rest["cursor"] is None


def test_a_stream_failing_while_its_batch_is_in_flight_is_replanned(scans, hosts, clock):
    hosts.hold()
    d = scans.page("item", None, 60, None)
    held = hosts.held
    hosts.held = None
    hosts.primaries = {p: "a" for p in range(PARTITIONS)}
    for deferred, answer in held:
        if deferred is held[0][0]:
            deferred.callback(answer)  # a's answer lands
        else:
            deferred.errback(errors.Unavailable("connection lost"))
    clock.advance(1)
    result = success_result_of(d)
    ids, _pages = scan_all(scans, 25, cursor=result["cursor"])
    assert [item[0] for item in result["items"]] + ids == expected()


def test_a_page_fails_unavailable_while_a_partition_it_needs_has_no_primary(scans, hosts, clock):
    first = page(scans, limit=5)
    hosts.primaries[0] = None
    d = scans.page("item", None, 100, first["cursor"])
    clock.advance(7)
    no_result(d)
    clock.advance(1.5)
    failure = failure_result_of(d, errors.Unavailable)
    assert "partition 0" in str(failure.value) and "no primary" in str(failure.value)
    # The state is kept: the same cursor asks again once the partition has a primary.
    hosts.primaries[0] = "b"
    resumed = scans.counts["resumed"]
    again = scans.page("item", None, 100, first["cursor"])
    clock.advance(1)
    rest = success_result_of(again)
    assert scans.counts["resumed"] == resumed
    assert [item[0] for item in first["items"] + rest["items"]] == expected()[:105]


def test_an_error_that_is_not_worth_retrying_fails_the_page(scans, hosts, clock):
    hosts.failing["b"] = errors.InvalidRequest("refused")
    failure_result_of(scans.page("item", None, 100, None), errors.InvalidRequest)
    assert hosts.hosts_called().count("b") == 1


def test_a_malformed_batch_answer_fails_the_page(scans, hosts):
    hosts.hold()
    d = scans.page("item", None, 10, None)
    held, hosts.held = hosts.held, None
    held[0][0].callback({"parts": [[5, 0, [], []]], "examined": 0})
    failure = failure_result_of(d, errors.NodeDBError)
    assert "malformed scan batch reply" in str(failure.value)
    for deferred, answer in held[1:]:
        deferred.callback(answer)


# -- cursors --------------------------------------------------------------------------------


def test_a_cursor_expires_after_the_idle_time(scans, clock):
    first = page(scans, limit=5)
    clock.advance(59)
    second = page(scans, first["cursor"], limit=5)
    assert [item[0] for item in second["items"]] == expected()[5:10]
    assert scans.counts["resumed"] == 0, "the kept state served the page"
    clock.advance(60.5)
    failure = failure_result_of(scans.page("item", None, 5, second["cursor"]), errors.CursorExpired)
    message = str(failure.value)
    assert "60 s" in message and "start the scan again" in message
    assert isinstance(failure.value, errors.InvalidRequest)
    wire = errors.to_wire(failure.value)
    assert wire["type"] == "CursorExpired" and isinstance(errors.from_wire(wire), errors.CursorExpired)
    assert scans.status()["cursors"] == 0 and scans.counts["expired"] == 1


def test_the_idlest_cursor_is_evicted(hosts, clock):
    scans = service(hosts, clock, max_cursors=2)
    cursors = []
    for _ in range(3):
        cursors.append(page(scans, limit=5)["cursor"])
        clock.advance(1)
    failure_result_of(scans.page("item", None, 5, cursors[0]), errors.CursorExpired)
    for cursor in cursors[1:]:
        assert [item[0] for item in page(scans, cursor, 5)["items"]] == expected()[5:10]
    assert scans.counts["evicted"] == 1


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "x" * 300,
        encode_cursor(5, "a", b"run-1", 999),  # never issued by this host
        encode_cursor(-1),
        encode_cursor(5, "a", "not bytes", 1),
    ],
)
def test_a_malformed_cursor_is_invalid_not_expired(scans, cursor):
    page(scans, limit=5)
    failure = failure_result_of(scans.page("item", None, 5, cursor), errors.InvalidRequest)
    assert not failure.check(errors.CursorExpired) and "malformed cursor" in str(failure.value)


def test_a_version_1_cursor_resumes_from_its_position(scans):
    import base64

    old = base64.urlsafe_b64encode(codec.encode({"v": 1, "after": expected()[9]})).rstrip(b"=").decode()
    assert [item[0] for item in page(scans, old, 5)["items"]] == expected()[10:15]


@pytest.mark.parametrize("other", [("b", b"run-1"), ("a", b"run-2")], ids=["another host", "after a restart"])
def test_a_cursor_resumes_on_another_host_or_after_a_restart(hosts, clock, other):
    issuer = service(hosts, clock)
    first = page(issuer, limit=25)
    follower = service(hosts, clock, host_id=other[0], run=other[1])
    ids, _pages = scan_all(follower, 10, cursor=first["cursor"])
    assert [item[0] for item in first["items"]] + ids == expected()
    assert follower.counts["resumed"] == 1


def test_a_cursor_asked_again_resumes_from_its_own_position(scans):
    first = page(scans, limit=5)
    second = page(scans, first["cursor"], 5)
    again = page(scans, first["cursor"], 5)  # the answer to the second was lost
    assert again["items"] == second["items"]
    third = page(scans, second["cursor"], 5)
    assert [item[0] for item in third["items"]] == expected()[10:15]


def test_a_cursor_with_another_filter_resumes_from_its_position(scans):
    first = page(scans, limit=5)
    other = page(scans, first["cursor"], 5, where={"even": True})
    assert [item[0] for item in other["items"]] == [i for i in expected(lambda d: d["even"]) if i > expected()[4]][:5]


def test_stop_drops_every_cursor(scans):
    cursor = page(scans, limit=5)["cursor"]
    scans.stop()
    failure_result_of(scans.page("item", None, 5, cursor), errors.CursorExpired)


# -- the pure merge state -------------------------------------------------------------------


def test_the_merge_plans_per_host_only_what_the_page_needs():
    merge = ScanMerge(LAYOUT, 4, -1)
    primaries = {0: "a", 1: "b", 2: "a", 3: "b"}.get
    batches = merge.plan(10, primaries, 0.0)
    assert [(b.host, b.parts, b.limit) for b in batches] == [
        ("a", [(0, -1), (2, LAYOUT.last_id(1))], 10),
        ("b", [(1, LAYOUT.last_id(0)), (3, LAYOUT.last_id(2))], 10),
    ]
    assert merge.plan(10, primaries, 0.0) == [], "in flight"
    a, b = batches
    items = [[LAYOUT.make(0, n), {}, 1] for n in range(1, 11)]
    merge.apply(a, {"parts": [[0, LAYOUT.make(0, 10), items, [1] * 10]], "examined": 10})
    # Partition 0 holds a page already: nothing after it is asked for now.
    assert merge.plan(10, primaries, 0.0) == []
    assert merge.ready(10) == (10, 10, False)
    taken, after, finished = merge.take(4)
    assert [i[0] for i in taken] == [LAYOUT.make(0, n) for n in range(1, 5)] and after == LAYOUT.make(0, 4) and not finished
    # Six left in partition 0, which is not finished: it is asked for four more, and so is
    # partition 2 (b's batch is still in flight).
    assert [(x.host, x.parts, x.limit) for x in merge.plan(10, primaries, 0.0)] == [
        ("a", [(0, LAYOUT.make(0, 10)), (2, LAYOUT.last_id(1))], 4)
    ]
    merge.failed(b, 0.0, "host b is gone")
    assert merge.next_retry(0.0) is None or merge.next_retry(0.0) > 0


def test_the_merge_backs_off_a_partition_without_primary():
    merge = ScanMerge(LAYOUT, 2, -1)
    assert [b.host for b in merge.plan(5, {1: "b"}.get, 0.0)] == ["b"]
    assert merge.blocker() == (0, "partition 0 has no primary now")
    assert merge.next_retry(0.0) == pytest.approx(0.05)
    assert merge.plan(5, {0: "a"}.get, 0.01) == [], "waiting to retry"
    assert [b.host for b in merge.plan(5, {0: "a"}.get, 0.06)] == ["a"]


def test_the_merge_answers_the_frontier_when_nothing_matched():
    merge = ScanMerge(LAYOUT, 2, -1)
    batch = merge.plan(5, {0: "a", 1: "a"}.get, 0.0)[0]
    merge.apply(batch, {"parts": [[0, LAYOUT.make(0, 77), [], []]], "examined": 77})
    assert merge.frontier() == LAYOUT.make(0, 77) and merge.examined == 77
    assert merge.take(5) == ([], LAYOUT.make(0, 77), False)
    assert merge.examined == 0


@pytest.mark.parametrize(
    "reply",
    [
        None,
        {"parts": [], "examined": "many"},
        {"parts": [[1, 5, [], []]], "examined": 0},  # not the partition asked
        {"parts": [[0, LAYOUT.make(1, 1), [], []]], "examined": 0},  # past the partition's end
        {"parts": [[0, 9, [[10, {}, 1]], [1]]], "examined": 1},  # an item past the position
        {"parts": [[0, 9, [[3, {}, 1], [2, {}, 1]], [1, 1]]], "examined": 2},  # out of order
        {"parts": [[0, 9, [[3, {}, 1]], []]], "examined": 1},
    ],
)
def test_the_merge_refuses_malformed_answers(reply):
    merge = ScanMerge(LAYOUT, 2, -1)
    batch = merge.plan(5, {0: "a", 1: "b"}.get, 0.0)[0]
    with pytest.raises(errors.NodeDBError, match="malformed"):
        merge.apply(batch, reply)
    assert merge.plan(5, {0: "a", 1: "b"}.get, 0.0)[0].parts == batch.parts, "released, where it was"


def test_a_merge_after_the_last_id_is_finished():
    assert ScanMerge(LAYOUT, 4, LAYOUT.last_id(3)).finished
    assert ScanMerge(LAYOUT, 4, 2**64 - 1).finished


# -- the batch request, where the data is ---------------------------------------------------


def test_scan_parts_shares_its_budgets_across_partitions(hosts):
    local = hosts.local
    parts = [(0, -1), (2, LAYOUT.last_id(1)), (3, LAYOUT.last_id(2))]
    answer = local.scan_parts("item", None, parts, 40, 1000)
    assert [(p, len(items)) for p, _position, items, _sizes in answer["parts"]] == [(0, 30), (2, 10)]
    assert answer["parts"][0][1] == LAYOUT.last_id(0), "a finished partition reports its last id"
    assert answer["parts"][1][1] == LAYOUT.make(2, 10)
    answer = local.scan_parts("item", {"n": 45}, parts, 40, 50)
    assert [(p, position, items) for p, position, items, _sizes in answer["parts"]] == [
        (0, LAYOUT.last_id(0), []),
        (2, LAYOUT.last_id(2), []),
        (3, LAYOUT.make(3, 3), []),
    ]
    assert answer["examined"] == 50


@pytest.mark.parametrize(
    "change, match",
    [
        ({"parts": []}, "non-empty"),
        ({"parts": [[2, -1]]}, "outside partition 2"),
        ({"parts": [[0, -1], [0, 5]]}, "increasing"),
        ({"parts": [[PARTITIONS, LAYOUT.last_id(PARTITIONS - 1)]]}, "increasing"),
        ({"limit": 0}, "limit"),
        ({"examine": MAX_EXAMINED_PER_PAGE + 1}, "examines"),
        ({"where": {"n": {"~": 1}}}, "unknown filter operator"),
        ({"order": "desc"}, "unknown field 'order'"),
        ({"type": "Bad Name"}, None),
    ],
)
def test_a_malformed_batch_request_is_refused(change, match):
    request = {"op": "scan", "type": "item", "parts": [[0, -1]], "limit": 10, "examine": 100, **change}
    with pytest.raises(errors.InvalidRequest, match=match):
        BATCH.arguments(request, envelope={"op"})

