"""query.forward: a request another host forwarded is checked by the same schemas as a client's
and runs on this host's LocalQuery with the typed arguments, never forwarded again."""

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from nodedb import errors
from nodedb.ids import IdLayout
from nodedb.query import router as router_module
from nodedb.query.api import RequestAPI
from nodedb.query.router import Router

LAYOUT = IdLayout()
PARTITIONS = 4


def _recorded(name):
    def run(self, **arguments):
        self.calls.append((name, arguments))
        return name

    return run


class RecordingLocal:
    """Stands in for LocalQuery: records each call and its keyword arguments."""

    def __init__(self):
        self.storage = SimpleNamespace(layout=LAYOUT)
        self.clock = Clock()
        self.calls = []

    insert = _recorded("insert")
    get = _recorded("get")
    update = _recorded("update")
    delete = _recorded("delete")
    scan = _recorded("scan")
    scan_parts = _recorded("scan_parts")

    def transaction(self, operations):
        # The router calls it itself (a transaction within one partition), by position.
        self.calls.append(("transaction", {"operations": operations}))
        return "transaction"


@pytest.fixture
def local():
    return RecordingLocal()


@pytest.fixture
def forward(local):
    """``forward(request)``: dispatch a ``query.forward`` carrying *request* from a peer."""
    router = Router(local, "a", SimpleNamespace(partitions=lambda: PARTITIONS), calls=None)
    api = RequestAPI(router, dict, Clock())
    router.install(api)
    peer = SimpleNamespace(greeted=True, role="peer")

    def dispatch(request, **envelope):
        return api.dispatch({"id": 1, "op": "query.forward", "request": request, **envelope}, peer)

    return dispatch


@pytest.mark.parametrize(
    "request_, call",
    [
        ({"op": "insert", "type": "t", "doc": {"a": 1}}, ("insert", {"record_type": "t", "doc": {"a": 1}, "near": None})),
        (
            {"op": "get", "type": "t", "key": 5, "consistency": "replica"},
            ("get", {"record_type": "t", "element_id": 5, "consistency": "replica"}),
        ),
        (
            {"op": "get", "type": "t", "key": 5, "consistency": "linearizable"},
            ("get", {"record_type": "t", "element_id": 5, "consistency": None}),
        ),
        (
            {"op": "update", "type": "t", "key": 5, "doc": {}, "if_version": 2},
            ("update", {"record_type": "t", "element_id": 5, "doc": {}, "if_version": 2}),
        ),
        ({"op": "delete", "type": "t", "key": 5}, ("delete", {"record_type": "t", "element_id": 5, "if_version": None})),
        (
            {"op": "transaction", "ops": [{"op": "delete", "type": "t", "key": 5}]},
            ("transaction", {"operations": [{"op": "delete", "type": "t", "id": 5}]}),
        ),
        (
            {"op": "scan", "type": "t", "parts": [[1, LAYOUT.first_id(1) - 1]], "limit": 10, "examine": 100},
            ("scan_parts", {"record_type": "t", "where": None, "parts": [(1, LAYOUT.first_id(1) - 1)], "limit": 10, "examine": 100}),
        ),
        (
            {"op": "scan", "type": "t", "limit": 10, "until": 99},
            ("scan", {"record_type": "t", "where": None, "limit": 10, "cursor": None, "until": 99}),
        ),
    ],
)
def test_a_forwarded_request_runs_here_with_its_checked_arguments(forward, local, request_, call):
    assert forward(request_) == call[0]
    assert local.calls == [call]


@pytest.mark.parametrize(
    "request_, match",
    [
        ({"op": "get", "type": "t"}, "get: missing field 'key'"),
        ({"op": "get", "type": "t", "key": -1}, "unsigned 64-bit"),
        ({"op": "insert", "type": "t", "doc": {}, "id": 1}, "insert: unknown field 'id'"),
        ({"op": "transaction", "ops": []}, "transaction: ops must be a non-empty list"),
        ({"op": "transaction", "ops": [{"op": "delete", "type": "t", "key": 5}], "x": 1}, "transaction: unknown field 'x'"),
        ({"op": "scan", "type": "t"}, "query.forward: a scan needs until"),
        ({"op": "scan", "type": "t", "parts": [[PARTITIONS, 0]], "limit": 10, "examine": 100}, "increasing order"),
        ({"op": "scan", "type": "t", "parts": [[0, 0]], "limit": 0, "examine": 100}, "limit is between"),
        ({"op": "status"}, "query.forward: cannot forward 'status'"),
        ({"op": ["get"]}, "query.forward: cannot forward"),
        ({}, "query.forward: cannot forward None"),
        ([1], "query.forward: request is a map"),
        (None, "query.forward: request is a map"),
    ],
)
def test_a_malformed_forwarded_request_is_refused_running_nothing(forward, local, request_, match):
    with pytest.raises(errors.InvalidRequest, match=match):
        forward(request_)
    assert local.calls == []


def test_a_forward_without_a_request_is_refused(local):
    router = Router(local, "a", SimpleNamespace(partitions=lambda: PARTITIONS), calls=None)
    api = RequestAPI(router, dict, Clock())
    router.install(api)
    with pytest.raises(errors.InvalidRequest, match="request is a map"):
        api.dispatch({"id": 1, "op": "query.forward"}, SimpleNamespace(greeted=True, role="peer"))


@pytest.mark.parametrize(
    "op, arguments",
    [
        ("insert", {"record_type": "t", "doc": {"a": 1}, "near": 7}),
        ("get", {"record_type": "t", "element_id": 5, "consistency": "replica"}),
        ("update", {"record_type": "t", "element_id": 5, "doc": {}, "if_version": None}),
        ("delete", {"record_type": "t", "element_id": 5, "if_version": 3}),
    ],
)
def test_what_a_host_forwards_is_what_the_receiver_reads_back(forward, local, op, arguments):
    sent = router_module._request(op, **arguments)
    assert "id" not in sent and None not in sent.values()
    forward(sent)
    assert local.calls == [(op, arguments)]
