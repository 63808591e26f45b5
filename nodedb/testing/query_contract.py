"""The behaviour every :class:`~nodedb.interfaces.IQuery` must show, on a host that holds
every partition (routing between hosts is for the cluster tests).

Subclass :class:`QueryContract` in a pytest module and define ``make_query(storage, clock,
status)``: a provider that keeps its elements in *storage* (an open
:class:`~nodedb.storage.memory.MemoryStorage` on :data:`nodedb.testing.peers.LAYOUT`), may
insert into every partition of it, reads time from *clock* and answers :meth:`status` with
``status()``. Results may be Deferreds or values, as the interface allows.
"""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nodedb.errors import Conflict, NodeDBError, NotFound
from nodedb.ids import IdAllocator
from nodedb.interfaces import IQuery, IQueryRouter
from nodedb.query.local import LocalQuery
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb.testing.peers import LAYOUT, PeerNetwork
from nodedb.voting.state import ClusterState

STATUS = {"host": {"id": "a"}, "hosts": []}


def outcome(result):
    """The value of an operation's *result*, a Deferred that has fired or a plain value."""
    return success_result_of(result) if isinstance(result, defer.Deferred) else result


def refusal(operation, *types):
    """:return: the error ``operation()`` refused with, raised or in a failed Deferred."""
    try:
        result = operation()
    except NodeDBError as e:
        assert isinstance(e, types), f"refused with {e!r}, not one of {types}"
        return e
    assert isinstance(result, defer.Deferred), f"answered {result!r}; expected a refusal"
    return failure_result_of(result, *types).value


class QueryContract:
    def make_query(self, storage, clock, status):
        raise NotImplementedError

    @pytest.fixture
    def query(self):
        clock = Clock()
        clock.advance(1_700_000_000)
        storage = MemoryStorage(layout=LAYOUT)
        success_result_of(storage.open())
        return self.make_query(storage, clock, lambda: STATUS)

    def insert(self, query, doc, record_type="user", near=None):
        return outcome(query.insert(record_type, doc, near))

    def page(self, query, **arguments):
        return outcome(query.scan("user", **arguments))

    def test_provides_the_interface(self, query):
        assert verifyObject(IQuery, query)

    def test_insert_then_get(self, query):
        element = self.insert(query, {"name": "ada", "raw": b"\x01"})
        doc, version = outcome(query.get("user", element))
        assert doc == {"name": "ada", "raw": b"\x01"} and type(version) is int and version >= 1
        assert outcome(query.get("user", element, consistency="replica")) == [doc, version]

    def test_inserts_get_distinct_ids_and_near_keeps_the_partition(self, query):
        parent = self.insert(query, {"n": 0})
        children = [self.insert(query, {"parent": parent}, "order", near=parent) for _ in range(5)]
        assert len({parent, *children}) == 6
        assert {LAYOUT.partition_of(child) for child in children} == {LAYOUT.partition_of(parent)}

    def test_get_of_a_missing_element_is_not_found(self, query):
        refusal(lambda: query.get("user", LAYOUT.make(1, 99)), NotFound)

    def test_update_gives_a_new_version_and_checks_if_version(self, query):
        element = self.insert(query, {"v": 1})
        _doc, first = outcome(query.get("user", element))
        second = outcome(query.update("user", element, {"v": 2}, if_version=first))
        assert second > first
        assert outcome(query.get("user", element)) == [{"v": 2}, second]
        refusal(lambda: query.update("user", element, {"v": 3}, if_version=first), Conflict)
        refusal(lambda: query.update("user", LAYOUT.make(1, 99), {"v": 1}), NotFound)
        assert outcome(query.get("user", element)) == [{"v": 2}, second]

    def test_delete_removes_the_element_and_checks_if_version(self, query):
        element = self.insert(query, {"v": 1})
        _doc, version = outcome(query.get("user", element))
        refusal(lambda: query.delete("user", element, if_version=version + 1), Conflict)
        deleted = outcome(query.delete("user", element, if_version=version))
        assert deleted > version
        refusal(lambda: query.get("user", element), NotFound)
        refusal(lambda: query.delete("user", element), NotFound)

    def test_scan_pages_through_every_element_in_id_order(self, query):
        # Spread over three partitions: a page merges them.
        elements = sorted(self.insert(query, {"n": n}, near=LAYOUT.make(n % 3, 1)) for n in range(7))
        seen, cursor = [], None
        for _ in range(10):
            page = self.page(query, limit=3, cursor=cursor)
            assert len(page["items"]) <= 3
            seen += page["items"]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert [item[0] for item in seen] == elements
        assert all(type(doc) is dict and type(version) is int for _id, doc, version in seen)

    def test_scan_filters_with_where(self, query):
        for n in range(6):
            self.insert(query, {"n": n})
        page = self.page(query, where={"n": {">=": 4}})
        assert sorted(doc["n"] for _id, doc, _version in page["items"]) == [4, 5]
        assert page["cursor"] is None

    def test_a_transaction_applies_all_of_its_operations(self, query):
        element = self.insert(query, {"v": 1})
        _doc, version = outcome(query.get("user", element))
        operations = [
            {"op": "insert", "type": "user", "doc": {"v": "new"}, "near": element},
            {"op": "update", "type": "user", "id": element, "doc": {"v": 2}, "if_version": version},
        ]
        new, updated = outcome(query.transaction(operations))
        assert outcome(query.get("user", new))[0] == {"v": "new"}
        assert outcome(query.get("user", element)) == [{"v": 2}, updated]

    def test_a_transaction_with_a_failing_operation_applies_none(self, query):
        element = self.insert(query, {"v": 1})
        operations = [
            {"op": "update", "type": "user", "id": element, "doc": {"v": 2}},
            {"op": "delete", "type": "user", "id": LAYOUT.make(LAYOUT.partition_of(element), 99)},
        ]
        refusal(lambda: query.transaction(operations), NotFound)
        assert outcome(query.get("user", element))[0] == {"v": 1}

    def test_status_is_the_status_document(self, query):
        assert query.status() == STATUS


class RouterContract:
    """What every :class:`~nodedb.interfaces.IQueryRouter` adds to :class:`QueryContract`:
    each operation runs at the partition's primary, wherever it arrives.

    Define ``make_router(host, local, cluster)``: an unstarted provider for *host* (a
    :class:`~nodedb.testing.peers.PeerHost`) that runs what this host leads with *local* (an
    :class:`~nodedb.interfaces.IQuery` on ``host.storage``), finds primaries in ``cluster()``
    (an :class:`~nodedb.interfaces.IClusterView`) and calls them through ``host.transport``
    at ``host.address_of(host_id)``. The suite runs hosts ``a`` and ``b``, each primary of
    half the partitions.
    """

    def make_router(self, host, local, cluster):
        raise NotImplementedError

    @pytest.fixture
    def routers(self):
        """``{host id: (host, router)}``."""
        peers = PeerNetwork(seed=1)
        hosts = {host_id: peers.add_host(host_id) for host_id in ("a", "b")}
        state = ClusterState()
        half = LAYOUT.max_partitions // 2
        placed = {str(p): [["a" if p < half else "b"], 1] for p in range(LAYOUT.max_partitions)}
        state.apply(
            {
                "op": "bootstrap",
                "cluster": "c1",
                "partitions": LAYOUT.max_partitions,
                "replicas": 1,
                "host": "a",
                "address": hosts["a"].address,
                "members": {"b": hosts["b"].address},
                "map": placed,
                "at": 0.0,
            }
        )
        routers = {}
        for host_id, host in hosts.items():
            led = {p: 0 for p in state.primary_partitions(host_id)}
            local = LocalQuery(host.storage, IdAllocator(LAYOUT, led), host.clock, lambda: STATUS)
            router = self.make_router(host, local, lambda: state)
            router.install(host.api)
            routers[host_id] = (host, router)
        routers["peers"] = peers
        yield routers
        for _host, router in (routers["a"], routers["b"]):
            router.scans.stop()
        peers.stop()

    @staticmethod
    def wait(peers, result):
        """The outcome of *result* once the network delivered it (a value or a Failure)."""
        if not isinstance(result, defer.Deferred):
            return result
        peers.run_until(lambda: result.called, timeout=10)
        return outcome(result)

    def test_provides_the_interface(self, routers):
        assert verifyObject(IQueryRouter, routers["a"][1])

    def test_operations_run_at_the_partitions_primary(self, routers):
        peers, (a_host, a), (b_host, b) = routers["peers"], routers["a"], routers["b"]
        near_b = LAYOUT.make(LAYOUT.max_partitions - 2, 1)
        element = self.wait(peers, a.insert("user", {"v": 1}, near=near_b))
        assert b_host.storage.get("user", element) is not None and a_host.storage.get("user", element) is None
        version = self.wait(peers, a.update("user", element, {"v": 2}))
        assert self.wait(peers, a.get("user", element)) == [{"v": 2}, version]
        own = self.wait(peers, b.insert("user", {"v": 0}, near=LAYOUT.make(0, 1)))
        page = self.wait(peers, a.scan("user"))
        assert [item[0] for item in page["items"]] == sorted([own, element])

    def test_scans_report_their_status(self, routers):
        peers, a = routers["peers"], routers["a"][1]
        self.wait(peers, a.scan("user", limit=1))
        assert type(a.scans.status()) is dict
