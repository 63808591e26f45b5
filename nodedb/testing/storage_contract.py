"""The behaviour every :class:`nodedb.interfaces.IStorageBackend` must show, as pytest tests.

A backend's test module subclasses :class:`StorageBackendContract` (and
:class:`DurableStorageContract` if the backend keeps its data across a close) and says how to
build the backend::

    from nodedb.testing.storage_contract import DurableStorageContract, StorageBackendContract

    class TestMyBackend(StorageBackendContract, DurableStorageContract):
        def make_backend(self):
            return MyBackend(self.tmp_path / "data")

        def reopen_backend(self, closed):
            return MyBackend(closed.path)

Every test opens a fresh backend (``make_backend`` returns it unopened; ``self.tmp_path`` is a
new directory for its files) and closes it at the end. Tests are coroutines run by
pytest-twisted inside a running reactor, so a backend whose Deferreds fire later (a writer
thread, a network store) is tested exactly as one whose Deferreds fire at once. Ids follow :attr:`StorageBackendContract.layout`, the default
:class:`nodedb.ids.IdLayout`; override it if the backend is built with another.

The suite is made of themed parts, which :class:`StorageBackendContract` combines:
:class:`StorageWritesContract`, :class:`StorageReadsContract`,
:class:`StorageReplicationContract` and :class:`StorageMetaContract`.

See docs/plugins.md.
"""

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from nodedb.errors import Conflict, NotFound, Unavailable
from nodedb.ids import MAX_ID, IdLayout
from nodedb.interfaces import IStorageBackend
from nodedb.storage import (
    Append,
    ChangeType,
    Delete,
    Insert,
    Load,
    LogEntry,
    PartitionState,
    Promise,
    Reset,
    Truncate,
    Update,
)
from nodedb import codec
from nodedb.testing import failure_of

#: The timestamp the tests record with their commits (exactly representable as a double).
T0 = 1_700_000_000.25


def doc(**fields):
    """The stored (CBOR) form of a document with *fields*."""
    return codec.encode(fields)


def log_rows(entries):
    """*entries* (log entries) as comparable tuples, the epoch included."""
    return [
        (e.partition, e.commit_id, e.epoch, e.timestamp, ChangeType(e.change_type), e.record_type, e.element_id, bytes(e.data))
        for e in entries
    ]


class _BackendFixtures:
    layout = IdLayout()

    def make_backend(self):
        """:return: a new, unopened backend keeping its files (if any) under ``self.tmp_path``."""
        raise NotImplementedError("a storage contract test class must define make_backend()")

    @pytest.fixture
    def backend(self, tmp_path):
        """The backend under test, opened; closed again after the test."""
        self.tmp_path = tmp_path
        backend = self.make_backend()
        pytest_twisted.blockon(backend.open())
        self._opened = [backend]
        yield backend
        for opened in self._opened:
            pytest_twisted.blockon(opened.close())

    async def open_again(self, backend):
        """Open *backend* (another instance) and close it at the end of the test."""
        await backend.open()
        self._opened.append(backend)
        return backend

    def id(self, partition, sequence):
        return self.layout.make(partition, sequence)

    async def commit(self, backend, operations, timestamp=T0):
        return await backend.commit(operations, timestamp)

    def entry(self, partition, commit_id, epoch, change, record_type, sequence, data=b"", timestamp=T0):
        """A log entry as a primary would ship it: *sequence* is the element's sequence in
        *partition*; a delete carries no data."""
        element = self.id(partition, sequence)
        return LogEntry(partition, commit_id, timestamp, change, record_type, element, data, epoch)

    async def replicate(self, backend, units):
        """Apply *units* and return ``[(accepted, PartitionState), ...]``, checking that the
        state returned for each unit is a :class:`PartitionState` of its partition."""
        results = await backend.replicate(units)
        assert len(results) == len(units)
        for unit, (accepted, state) in zip(units, results):
            assert type(accepted) is bool
            assert isinstance(state, PartitionState) and state.partition == unit.partition
        return results

    def snapshot(self, backend, record_types, partitions):
        """Everything a reader can see of *record_types* and *partitions*, to compare before and
        after a failed commit."""
        return (
            {t: backend.scan(t, -1, 1_000_000) for t in record_types},
            {p: backend.read_log(p, 0, 1_000_000) for p in partitions},
            {p: backend.partition_state(p) for p in partitions},
        )


class StorageWritesContract(_BackendFixtures):
    """Inserts, updates and deletes, alone and in units of several operations."""

    # -- the interface ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_provides_the_interface(self, backend):
        assert verifyObject(IStorageBackend, backend)
        assert isinstance(backend.name, str) and backend.name
        assert backend.layout.partition_bits == self.layout.partition_bits

    # -- inserts, updates, deletes ------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_insert_then_get(self, backend):
        element = self.id(3, 1)
        assert backend.get("user", element) is None
        results = await self.commit(backend, [Insert("user", element, doc(name="ada"))])
        assert results == [(element, 1)]
        data, version = backend.get("user", element)
        assert (bytes(data), version) == (doc(name="ada"), 1)

    @pytest_twisted.ensureDeferred
    async def test_get_of_unknown_type_or_id_is_none(self, backend):
        await self.commit(backend, [Insert("user", self.id(0, 1), doc(a=1))])
        assert backend.get("user", self.id(0, 2)) is None
        assert backend.get("user", self.id(1, 1)) is None
        assert backend.get("never_written", self.id(0, 1)) is None

    @pytest_twisted.ensureDeferred
    async def test_versions_are_commit_ids_counted_per_partition(self, backend):
        a1, a2, b1 = self.id(0, 1), self.id(0, 2), self.id(1, 1)
        assert await self.commit(backend, [Insert("t", a1, doc(n=1))]) == [(a1, 1)]
        assert await self.commit(backend, [Insert("t", b1, doc(n=2))]) == [(b1, 1)]
        assert await self.commit(backend, [Insert("t", a2, doc(n=3))]) == [(a2, 2)]
        assert await self.commit(backend, [Update("t", b1, doc(n=4))]) == [(b1, 2)]
        assert await self.commit(backend, [Update("t", a1, doc(n=5))]) == [(a1, 3)]
        assert await self.commit(backend, [Delete("t", a2)]) == [(a2, 4)]
        assert backend.get("t", a1)[1] == 3
        assert backend.get("t", b1)[1] == 2
        # Record types share their partition's commit ids.
        a3 = self.id(0, 3)
        assert await self.commit(backend, [Insert("other", a3, doc(n=6))]) == [(a3, 5)]

    @pytest_twisted.ensureDeferred
    async def test_update_replaces_the_document(self, backend):
        element = self.id(2, 7)
        await self.commit(backend, [Insert("t", element, doc(v=1))])
        assert await self.commit(backend, [Update("t", element, doc(v=2, extra="x"))]) == [(element, 2)]
        data, version = backend.get("t", element)
        assert (bytes(data), version) == (doc(v=2, extra="x"), 2)

    @pytest_twisted.ensureDeferred
    async def test_delete_removes_the_element(self, backend):
        element, kept = self.id(2, 7), self.id(2, 8)
        await self.commit(backend, [Insert("t", element, doc(v=1)), Insert("t", kept, doc(v=2))])
        assert await self.commit(backend, [Delete("t", element)]) == [(element, 3)]
        assert backend.get("t", element) is None
        assert [item[0] for item in backend.scan("t", -1, 10)] == [kept]

    @pytest_twisted.ensureDeferred
    async def test_if_version_must_match_for_update_and_delete(self, backend):
        element = self.id(5, 1)
        await self.commit(backend, [Insert("t", element, doc(v=1))])
        before = self.snapshot(backend, ["t"], [5])
        error = await failure_of(backend.commit([Update("t", element, doc(v=2), if_version=7)], T0), Conflict)
        assert isinstance(error, Conflict)
        await failure_of(backend.commit([Delete("t", element, if_version=0)], T0), Conflict)
        assert self.snapshot(backend, ["t"], [5]) == before
        assert await self.commit(backend, [Update("t", element, doc(v=2), if_version=1)]) == [(element, 2)]
        await failure_of(backend.commit([Update("t", element, doc(v=3), if_version=1)], T0), Conflict)
        assert await self.commit(backend, [Delete("t", element, if_version=2)]) == [(element, 3)]
        assert backend.get("t", element) is None

    @pytest_twisted.ensureDeferred
    async def test_update_or_delete_of_a_missing_element_is_not_found(self, backend):
        element = self.id(1, 1)
        await failure_of(backend.commit([Update("t", element, doc(v=1))], T0), NotFound)
        await failure_of(backend.commit([Delete("t", element)], T0), NotFound)
        await self.commit(backend, [Insert("t", element, doc(v=1))])
        # The same id in another record type is another element.
        await failure_of(backend.commit([Update("u", element, doc(v=1))], T0), NotFound)
        await self.commit(backend, [Delete("t", element)])
        await failure_of(backend.commit([Update("t", element, doc(v=2))], T0), NotFound)
        await failure_of(backend.commit([Delete("t", element)], T0), NotFound)
        assert backend.partition_state(1).last_commit_id == 2
        assert [e.commit_id for e in backend.read_log(1, 0, 100)] == [1, 2]

    @pytest_twisted.ensureDeferred
    async def test_insert_of_an_existing_id_is_a_conflict(self, backend):
        element = self.id(4, 9)
        await self.commit(backend, [Insert("t", element, doc(v=1))])
        before = self.snapshot(backend, ["t"], [4])
        await failure_of(backend.commit([Insert("t", element, doc(v=2))], T0), Conflict)
        assert self.snapshot(backend, ["t"], [4]) == before
        assert bytes(backend.get("t", element)[0]) == doc(v=1)

    # -- units of several operations ----------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_a_unit_returns_one_result_per_operation_in_order(self, backend):
        a, b, c = self.id(0, 1), self.id(1, 1), self.id(0, 2)
        await self.commit(backend, [Insert("t", b, doc(v=0))])
        results = await self.commit(
            backend,
            [Insert("t", a, doc(v=1)), Update("t", b, doc(v=2), if_version=1), Insert("u", c, doc(v=3)), Delete("t", a)],
        )
        assert results == [(a, 1), (b, 2), (c, 2), (a, 3)]
        assert backend.get("t", a) is None
        assert backend.get("t", b)[1] == 2
        assert backend.get("u", c)[1] == 2

    @pytest_twisted.ensureDeferred
    async def test_operations_of_a_unit_see_the_earlier_ones(self, backend):
        element = self.id(6, 1)
        results = await self.commit(
            backend,
            [
                Insert("t", element, doc(v=1)),
                Update("t", element, doc(v=2), if_version=1),
                Delete("t", element, if_version=2),
                Insert("t", element, doc(v=4)),
            ],
        )
        assert results == [(element, 1), (element, 2), (element, 3), (element, 4)]
        assert bytes(backend.get("t", element)[0]) == doc(v=4)
        changes = [e.change_type for e in backend.read_log(6, 0, 10)]
        assert changes == [ChangeType.CREATE, ChangeType.UPDATE, ChangeType.DELETE, ChangeType.CREATE]

    @pytest_twisted.ensureDeferred
    async def test_the_entries_of_one_commit_are_marked_as_one(self, backend):
        """Every entry but a commit's last in each partition says more follow, so that
        replication ships a commit whole; the mark survives storage and the wire."""
        a, b = self.id(6, 1), self.id(7, 1)
        await self.commit(backend, [Insert("t", a, doc(v=1))])
        await self.commit(backend, [Insert("t", a + 1, doc(v=1)), Insert("t", b, doc(v=1)), Update("t", a, doc(v=2))])
        log_a, log_b = backend.read_log(6, 0, 10), backend.read_log(7, 0, 10)
        assert [e.more for e in log_a] == [False, True, False]
        assert [e.more for e in log_b] == [False]
        assert [e.change_type for e in log_a] == [ChangeType.CREATE, ChangeType.CREATE, ChangeType.UPDATE]
        assert [LogEntry.from_wire(6, e.to_wire()) for e in log_a] == log_a

    @pytest.mark.parametrize(
        "last, error",
        [
            (lambda self: Update("t", self.id(9, 99), doc(v=0)), NotFound),
            (lambda self: Delete("t", self.id(8, 1), if_version=1), Conflict),
            (lambda self: Insert("t", self.id(8, 1), doc(v=0)), Conflict),
            (lambda self: Insert("u", self.id(7, 1), doc(v=0)), Conflict),
        ],
        ids=["not-found", "if-version", "existing-id", "inserted-earlier-in-the-unit"],
    )
    @pytest_twisted.ensureDeferred
    async def test_a_failing_operation_applies_nothing_of_its_unit(self, backend, last, error):
        existing = self.id(8, 1)
        await self.commit(backend, [Insert("t", existing, doc(v=0)), Update("t", existing, doc(v=1))])
        before = self.snapshot(backend, ["t", "u"], [7, 8, 9])
        unit = [
            Insert("u", self.id(7, 1), doc(new=1)),
            Update("t", existing, doc(v=2), if_version=2),
            Insert("t", self.id(9, 5), doc(new=2)),
            Delete("u", self.id(7, 1)),
            Insert("u", self.id(7, 1), doc(new=3)),
            last(self),
        ]
        await failure_of(backend.commit(unit, T0), error)
        assert self.snapshot(backend, ["t", "u"], [7, 8, 9]) == before
        assert backend.get("u", self.id(7, 1)) is None
        assert backend.partition_state(7) == PartitionState(7)
        assert backend.partition_state(9) == PartitionState(9)
        # The store is still fine: the same unit without its bad last operation goes through.
        results = await self.commit(backend, unit[:-1])
        assert results == [(self.id(7, 1), 1), (existing, 3), (self.id(9, 5), 1), (self.id(7, 1), 2), (self.id(7, 1), 3)]

    @pytest_twisted.ensureDeferred
    async def test_concurrent_commits_are_independent(self, backend):
        """Commits made without waiting (which a backend may group into one transaction)
        succeed or fail each on its own, and are applied in the order they were made."""
        taken = self.id(0, 1)
        await self.commit(backend, [Insert("t", taken, doc(v=0))])
        calls = [
            backend.commit([Insert("t", self.id(0, 2), doc(v=1))], T0),
            backend.commit([Insert("t", self.id(0, 3), doc(v=2)), Insert("t", taken, doc(v=2))], T0),
            backend.commit([Update("t", self.id(0, 2), doc(v=3), if_version=2)], T0),
            backend.commit([Delete("t", self.id(0, 4))], T0),
            backend.commit([Insert("t", self.id(0, 4), doc(v=5)), Update("t", taken, doc(v=5), if_version=1)], T0),
            backend.commit([Update("t", self.id(0, 2), doc(v=6), if_version=2)], T0),
        ]
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        assert [ok for ok, _value in outcomes] == [True, False, True, False, True, False]
        assert [outcomes[i][1] for i in (0, 2, 4)] == [[(self.id(0, 2), 2)], [(self.id(0, 2), 3)], [(self.id(0, 4), 4), (taken, 5)]]
        assert outcomes[1][1].check(Conflict)
        assert outcomes[3][1].check(NotFound)
        assert outcomes[5][1].check(Conflict)
        assert [item[0] for item in backend.scan("t", -1, 10)] == [taken, self.id(0, 2), self.id(0, 4)]
        assert bytes(backend.get("t", self.id(0, 2))[0]) == doc(v=3)
        assert [e.commit_id for e in backend.read_log(0, 0, 100)] == [1, 2, 3, 4, 5]
        assert backend.partition_state(0).last_commit_id == 5


class StorageReadsContract(_BackendFixtures):
    """Scans, the commit log and partition states, as commits leave them."""

    # -- reads ------------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_scan_returns_one_type_in_id_order(self, backend):
        ids = [self.id(p, s) for p, s in [(3, 2), (0, 9), (7, 1), (0, 1), (3, 1), (65535, 5), (1, 2**40)]]
        for index, element in enumerate(ids):
            await self.commit(backend, [Insert("t", element, doc(i=index))])
        await self.commit(backend, [Insert("u", self.id(2, 1), doc(other=True))])
        items = backend.scan("t", -1, 100)
        assert [item[0] for item in items] == sorted(ids)
        for element_id, data, version in items:
            index = ids.index(element_id)
            assert bytes(data) == doc(i=index)
            assert version == backend.get("t", element_id)[1]
        assert [item[0] for item in backend.scan("u", -1, 100)] == [self.id(2, 1)]
        assert backend.scan("nothing_here", -1, 100) == []

    @pytest_twisted.ensureDeferred
    async def test_scan_after_id_and_limit(self, backend):
        ids = [self.id(p, s) for p in (0, 1, 2) for s in (1, 2, 3)]
        await self.commit(backend, [Insert("t", element, doc(n=n)) for n, element in enumerate(ids)])
        assert [i[0] for i in backend.scan("t", -1, 2)] == ids[:2]
        assert [i[0] for i in backend.scan("t", ids[1], 3)] == ids[2:5]
        # after_id need not exist: the scan starts at the next id that does.
        assert [i[0] for i in backend.scan("t", self.id(1, 0), 2)] == ids[3:5]
        assert [i[0] for i in backend.scan("t", self.id(1, 2**30), 100)] == ids[6:]
        assert [i[0] for i in backend.scan("t", ids[-2], 5)] == ids[-1:]
        assert backend.scan("t", ids[-1], 5) == []
        assert backend.scan("t", MAX_ID, 5) == []
        # Paging with after_id = the last id seen visits every element once.
        seen, after = [], -1
        while True:
            page = backend.scan("t", after, 4)
            seen.extend(i[0] for i in page)
            if len(page) < 4:
                break
            after = page[-1][0]
        assert seen == ids

    @pytest_twisted.ensureDeferred
    async def test_scan_skips_deleted_elements_and_shows_updates(self, backend):
        a, b, c = self.id(0, 1), self.id(0, 2), self.id(0, 3)
        await self.commit(backend, [Insert("t", e, doc(v=0)) for e in (a, b, c)])
        await self.commit(backend, [Delete("t", b), Update("t", c, doc(v=9))])
        assert [(i[0], bytes(i[1]), i[2]) for i in backend.scan("t", -1, 10)] == [(a, doc(v=0), 1), (c, doc(v=9), 5)]

    @pytest_twisted.ensureDeferred
    async def test_scan_of_an_element_at_the_top_of_the_id_space(self, backend):
        await self.commit(backend, [Insert("t", MAX_ID, doc(top=True)), Insert("t", 0, doc(bottom=True))])
        assert [i[0] for i in backend.scan("t", -1, 10)] == [0, MAX_ID]
        assert [i[0] for i in backend.scan("t", 0, 10)] == [MAX_ID]
        assert backend.scan("t", MAX_ID, 10) == []

    # -- the commit log ---------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_change_type_codes(self, backend):
        assert (ChangeType.CREATE, ChangeType.DELETE, ChangeType.UPDATE) == (0, 1, 2)

    @pytest_twisted.ensureDeferred
    async def test_read_log_returns_every_change_of_a_partition(self, backend):
        a, b, other = self.id(4, 1), self.id(4, 2), self.id(5, 1)
        await self.commit(backend, [Insert("user", a, doc(v=1))], timestamp=T0)
        await self.commit(backend, [Insert("user", other, doc(v=1))], timestamp=T0 + 1)
        await self.commit(backend, [Insert("item", b, doc(v=2)), Update("user", a, doc(v=3))], timestamp=T0 + 2)
        await self.commit(backend, [Delete("item", b)], timestamp=T0 + 3.5)
        entries = backend.read_log(4, 0, 100)
        assert [(e.partition, e.commit_id, e.timestamp, e.change_type, e.record_type, e.element_id, bytes(e.data)) for e in entries] == [
            (4, 1, T0, ChangeType.CREATE, "user", a, doc(v=1)),
            (4, 2, T0 + 2, ChangeType.CREATE, "item", b, doc(v=2)),
            (4, 3, T0 + 2, ChangeType.UPDATE, "user", a, doc(v=3)),
            (4, 4, T0 + 3.5, ChangeType.DELETE, "item", b, b""),
        ]
        assert all(isinstance(e, LogEntry) for e in entries)
        assert [int(e.change_type) for e in entries] == [0, 0, 2, 1]
        assert [(e.commit_id, e.element_id) for e in backend.read_log(5, 0, 100)] == [(1, other)]
        assert backend.read_log(6, 0, 100) == []

    @pytest_twisted.ensureDeferred
    async def test_read_log_from_a_commit_id_with_a_limit(self, backend):
        elements = [self.id(2, s) for s in range(1, 8)]
        for element in elements:
            await self.commit(backend, [Insert("t", element, doc(s=element))])
        await self.commit(backend, [Insert("t", self.id(3, 1), doc(s=0))])
        assert [e.commit_id for e in backend.read_log(2, 0, 3)] == [1, 2, 3]
        assert [e.commit_id for e in backend.read_log(2, 3, 3)] == [4, 5, 6]
        assert [e.commit_id for e in backend.read_log(2, 6, 3)] == [7]
        assert backend.read_log(2, 7, 3) == []
        assert [e.element_id for e in backend.read_log(2, 4, 100)] == elements[4:]

    # -- partition state --------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_partition_state_of_an_unwritten_partition_is_zero(self, backend):
        state = backend.partition_state(12)
        assert state == PartitionState(12)
        assert (state.partition, state.mtime, state.last_commit_id, state.epoch, state.max_sequence) == (12, 0.0, 0, 0, 0)

    @pytest_twisted.ensureDeferred
    async def test_partition_state_tracks_commits_and_the_highest_sequence(self, backend):
        await self.commit(backend, [Insert("t", self.id(3, 5), doc(v=1))])
        await self.commit(backend, [Insert("t", self.id(3, 2), doc(v=2))])
        state = backend.partition_state(3)
        assert (state.last_commit_id, state.max_sequence) == (2, 5)
        await self.commit(backend, [Delete("t", self.id(3, 5))])
        state = backend.partition_state(3)
        assert (state.last_commit_id, state.max_sequence) == (3, 5), "max_sequence never goes down"
        await self.commit(backend, [Update("t", self.id(3, 2), doc(v=3))])
        assert (backend.partition_state(3).last_commit_id, backend.partition_state(3).max_sequence) == (4, 5)
        await self.commit(backend, [Insert("u", self.id(3, 40), doc(v=4))])
        assert backend.partition_state(3).max_sequence == 40
        assert backend.partition_state(4) == PartitionState(4)

    @pytest_twisted.ensureDeferred
    async def test_partition_state_is_a_copy(self, backend):
        await self.commit(backend, [Insert("t", self.id(3, 5), doc(v=1))])
        state = backend.partition_state(3)
        state.last_commit_id = 1000
        assert backend.partition_state(3).last_commit_id == 1


class StorageReplicationContract(_BackendFixtures):
    """What replication relies on: commits at an epoch, promises, appends, truncation and
    full resyncs (the rules of :func:`nodedb.storage.apply.apply_replication`)."""

    # -- commits at a replication epoch -------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_commit_with_epochs_writes_at_the_partition_epoch(self, backend):
        a, b, other = self.id(3, 1), self.id(3, 2), self.id(5, 1)
        assert await backend.commit([Insert("t", a, doc(v=1))], T0, epochs={3: 0}) == [(a, 1)]
        assert [(e.commit_id, e.epoch) for e in backend.read_log(3, 0, 10)] == [(1, 0)]
        state = backend.partition_state(3)
        assert (state.last_commit_id, state.last_epoch) == (1, 0)
        before = self.snapshot(backend, ["t"], [3, 5])
        # A partition followed at another epoch, or not named at all, writes nothing.
        for epochs in ({3: 1}, {5: 0}, {}, {3: 0}):
            unit = [Insert("t", b, doc(v=2)), Insert("t", other, doc(v=2))]
            error = await failure_of(backend.commit(unit, T0, epochs=epochs), Unavailable)
            assert isinstance(error, Unavailable)
            assert self.snapshot(backend, ["t"], [3, 5]) == before
        assert backend.get("t", b) is None and backend.get("t", other) is None

        [(accepted, state)] = await self.replicate(backend, [Promise(3, 3)])
        assert accepted and state.epoch == 3
        # The old primary of epoch 0 is fenced off.
        fenced = self.snapshot(backend, ["t"], [3, 5])
        await failure_of(backend.commit([Update("t", a, doc(v=3))], T0, epochs={3: 0}), Unavailable)
        assert self.snapshot(backend, ["t"], [3, 5]) == fenced
        assert backend.get("t", a)[1] == 1
        results = await backend.commit([Insert("t", b, doc(v=4)), Update("t", a, doc(v=5))], T0 + 1, epochs={3: 3})
        assert results == [(b, 2), (a, 3)]
        assert log_rows(backend.read_log(3, 0, 10)) == [
            (3, 1, 0, T0, ChangeType.CREATE, "t", a, doc(v=1)),
            (3, 2, 3, T0 + 1, ChangeType.CREATE, "t", b, doc(v=4)),
            (3, 3, 3, T0 + 1, ChangeType.UPDATE, "t", a, doc(v=5)),
        ]
        state = backend.partition_state(3)
        assert (state.epoch, state.last_commit_id, state.last_epoch, state.max_sequence) == (3, 3, 3, 2)
        # A commit without epochs (no replication) writes at the epoch the partition follows.
        assert await self.commit(backend, [Delete("t", b)]) == [(b, 4)]
        assert [(e.commit_id, e.epoch) for e in backend.read_log(3, 3, 10)] == [(4, 3)]
        assert backend.partition_state(5) == PartitionState(5)

    # -- replication: promises --------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_a_promise_raises_the_epoch_and_an_older_one_is_refused(self, backend):
        element = self.id(2, 4)
        await self.commit(backend, [Insert("t", element, doc(v=1))])
        [(accepted, state)] = await self.replicate(backend, [Promise(2, 5)])
        assert accepted
        assert state == PartitionState(2, last_commit_id=1, epoch=5, max_sequence=4)
        assert backend.partition_state(2) == state
        [(accepted, state)] = await self.replicate(backend, [Promise(2, 3)])
        assert not accepted
        assert state.epoch == 5 and backend.partition_state(2).epoch == 5
        # The same epoch again is fine; units of one call are applied in order, each on its own.
        results = await self.replicate(backend, [Promise(2, 5), Promise(2, 7), Promise(2, 6), Promise(9, 1)])
        assert [(ok, s.epoch) for ok, s in results] == [(True, 5), (True, 7), (False, 7), (True, 1)]
        assert backend.partition_state(2) == PartitionState(2, last_commit_id=1, epoch=7, max_sequence=4)
        assert backend.partition_state(9) == PartitionState(9, epoch=1)
        # A promise to lead also records the epoch as the one this copy follows.
        [(accepted, state)] = await self.replicate(backend, [Promise(2, 8, lead=True)])
        assert accepted and (state.epoch, state.followed) == (8, 8)
        [(accepted, state)] = await self.replicate(backend, [Promise(2, 7, lead=True)])
        assert not accepted and (state.epoch, state.followed) == (8, 8)
        assert [(e.commit_id, e.epoch) for e in backend.read_log(2, 0, 10)] == [(1, 0)]
        assert bytes(backend.get("t", element)[0]) == doc(v=1)

    # -- replication: appends ---------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_append_applies_entries_from_the_start(self, backend):
        a, b, c = self.id(4, 1), self.id(4, 2), self.id(4, 9)
        entries = [
            self.entry(4, 1, 1, ChangeType.CREATE, "user", 1, doc(name="ada")),
            self.entry(4, 2, 1, ChangeType.CREATE, "item", 2, doc(n=1), timestamp=T0 + 1),
            self.entry(4, 3, 1, ChangeType.UPDATE, "user", 1, doc(name="ada", v=2)),
            self.entry(4, 4, 2, ChangeType.CREATE, "user", 9, doc(name="bob"), timestamp=T0 + 2),
            self.entry(4, 5, 2, ChangeType.DELETE, "item", 2, timestamp=T0 + 3),
        ]
        [(accepted, state)] = await self.replicate(backend, [Append(4, 2, (0, 0), entries)])
        assert accepted
        assert (state.epoch, state.last_commit_id, state.last_epoch, state.max_sequence) == (2, 5, 2, 9)
        assert (state.truncated, state.truncated_epoch, state.syncing, state.followed) == (0, 0, False, 2)
        assert backend.partition_state(4) == state
        assert state.position() == (2, 5)
        assert [(bytes(d), v) for d, v in [backend.get("user", a), backend.get("user", c)]] == [
            (doc(name="ada", v=2), 3),
            (doc(name="bob"), 4),
        ]
        assert backend.get("item", b) is None
        assert [i[0] for i in backend.scan("user", -1, 10)] == [a, c]
        assert backend.scan("item", -1, 10) == []
        assert log_rows(backend.read_log(4, 0, 100)) == log_rows(entries)
        assert [e.epoch for e in backend.read_log(4, 0, 100)] == [1, 1, 1, 2, 2]

        # Sent again (a retry), it is accepted and changes nothing.
        before = self.snapshot(backend, ["user", "item"], [4])
        [(accepted, again)] = await self.replicate(backend, [Append(4, 2, (0, 0), entries)])
        assert accepted and again == state
        assert self.snapshot(backend, ["user", "item"], [4]) == before
        # So is a resend that overlaps the held entries and goes on past them.
        more = [
            *entries[2:],
            self.entry(4, 6, 2, ChangeType.UPDATE, "user", 9, doc(name="bob", v=2)),
            self.entry(4, 7, 2, ChangeType.CREATE, "item", 3, doc(n=3)),
        ]
        [(accepted, state)] = await self.replicate(backend, [Append(4, 2, (2, 1), more)])
        assert accepted and (state.last_commit_id, state.last_epoch) == (7, 2)
        assert log_rows(backend.read_log(4, 0, 100)) == log_rows(entries + more[3:])
        assert backend.get("user", c)[1] == 6 and backend.get("item", self.id(4, 3))[1] == 7
        # An append with no entries that continues the log (a heartbeat) is accepted.
        [(accepted, state)] = await self.replicate(backend, [Append(4, 2, (7, 2), [])])
        assert accepted and (state.last_commit_id, state.last_epoch) == (7, 2)
        # Commits from here on (this copy made primary at epoch 3) go on from commit id 8.
        await self.replicate(backend, [Promise(4, 3)])
        assert await backend.commit([Delete("user", a)], T0, epochs={4: 3}) == [(a, 8)]
        assert [(e.commit_id, e.epoch) for e in backend.read_log(4, 7, 10)] == [(8, 3)]

    @pytest_twisted.ensureDeferred
    async def test_a_copy_follows_an_epoch_only_once_it_holds_the_primarys_start(self, backend):
        """A copy that caught up only part of the way to where the new primary began must
        not outrank, in a failover, a copy of the older epoch that holds more."""
        first = [self.entry(6, c, 1, ChangeType.CREATE, "t", c, doc(v=c)) for c in (1, 2)]
        [(accepted, state)] = await self.replicate(backend, [Append(6, 1, (0, 0), first)])
        assert accepted and state.followed == 1
        more = [self.entry(6, c, 1, ChangeType.CREATE, "t", c, doc(v=c)) for c in (3, 4)]
        [(accepted, state)] = await self.replicate(backend, [Append(6, 2, (2, 1), more, start=6)])
        assert accepted and (state.last_commit_id, state.epoch, state.followed) == (4, 2, 1)
        rest = [self.entry(6, c, 1, ChangeType.CREATE, "t", c, doc(v=c)) for c in (5, 6)]
        [(accepted, state)] = await self.replicate(backend, [Append(6, 2, (4, 1), rest, start=6)])
        assert accepted and (state.last_commit_id, state.followed) == (6, 2)
        assert state.position() == (2, 6)

    async def test_an_append_that_does_not_continue_the_log_is_refused(self, backend):
        held = [
            self.entry(5, 1, 1, ChangeType.CREATE, "t", 1, doc(v=1)),
            self.entry(5, 2, 1, ChangeType.CREATE, "t", 2, doc(v=2)),
            self.entry(5, 3, 2, ChangeType.UPDATE, "t", 1, doc(v=3)),
        ]
        [(accepted, _state)] = await self.replicate(backend, [Append(5, 2, (0, 0), held)])
        assert accepted
        before = self.snapshot(backend, ["t"], [5])
        assert (before[2][5].last_commit_id, before[2][5].last_epoch, before[2][5].epoch) == (3, 2, 2)
        nxt = self.entry(5, 4, 2, ChangeType.CREATE, "t", 4, doc(v=4))
        relabelled = self.entry(5, 2, 2, ChangeType.CREATE, "t", 2, doc(v=2))  # held at epoch 1
        refused = {
            # prev beyond the last entry held: a gap
            "gap": Append(5, 2, (4, 2), [self.entry(5, 5, 2, ChangeType.CREATE, "t", 5, doc(v=5))]),
            "gap-far": Append(5, 2, (10, 2), [self.entry(5, 11, 2, ChangeType.CREATE, "t", 5, doc(v=5))]),
            # prev held, but at another epoch (at the last entry, and inside the log)
            "prev-epoch-at-last": Append(5, 2, (3, 1), [nxt]),
            "prev-epoch-inside": Append(5, 2, (2, 2), [self.entry(5, 3, 2, ChangeType.UPDATE, "t", 1, doc(v=3)), nxt]),
            "prev-epoch-at-zero": Append(5, 2, (0, 1), held + [nxt]),
            # entries held at the same commit id with another epoch
            "overlap-other-epoch": Append(5, 2, (1, 1), [relabelled, held[2], nxt]),
            # a batch that stops short of the log held here (this primary does not vouch for
            # the entries past it), even though it matches as far as it goes
            "short": Append(5, 2, (1, 1), [held[1]]),
            "short-empty": Append(5, 2, (2, 1), []),
            # from a primary of an older epoch than this copy follows
            "older-epoch": Append(5, 1, (3, 2), [nxt]),
        }
        for name, unit in refused.items():
            [(accepted, state)] = await self.replicate(backend, [unit])
            assert not accepted, name
            assert state == before[2][5], name
            assert self.snapshot(backend, ["t"], [5]) == before, name
        assert backend.get("t", self.id(5, 4)) is None
        assert backend.get("t", self.id(5, 5)) is None
        # The right continuation is still accepted.
        [(accepted, state)] = await self.replicate(backend, [Append(5, 2, (3, 2), [nxt])])
        assert accepted and (state.last_commit_id, state.last_epoch) == (4, 2)
        assert log_rows(backend.read_log(5, 0, 10)) == log_rows(held + [nxt])

    @pytest_twisted.ensureDeferred
    async def test_append_truncates_the_log_it_no_longer_needs(self, backend):
        entries = [
            self.entry(6, 1, 1, ChangeType.CREATE, "t", 1, doc(v=1)),
            self.entry(6, 2, 1, ChangeType.CREATE, "t", 2, doc(v=2)),
            self.entry(6, 3, 2, ChangeType.UPDATE, "t", 1, doc(v=3)),
            self.entry(6, 4, 2, ChangeType.DELETE, "t", 2),
            self.entry(6, 5, 2, ChangeType.CREATE, "t", 3, doc(v=5)),
        ]
        await self.commit(backend, [Insert("t", self.id(7, 1), doc(other=1))])
        [(accepted, state)] = await self.replicate(backend, [Append(6, 2, (0, 0), entries, truncate=2)])
        assert accepted
        assert (state.last_commit_id, state.last_epoch, state.truncated, state.truncated_epoch) == (5, 2, 2, 1)
        assert backend.partition_state(6) == state
        assert [e.commit_id for e in backend.read_log(6, 0, 100)] == [3, 4, 5]
        assert log_rows(backend.read_log(6, 0, 100)) == log_rows(entries[2:])
        # Only the log is dropped: the elements stay.
        assert [(i[0], bytes(i[1]), i[2]) for i in backend.scan("t", self.id(6, 0), 10)] == [
            (self.id(6, 1), doc(v=3), 3),
            (self.id(6, 3), doc(v=5), 5),
            (self.id(7, 1), doc(other=1), 1),
        ]
        assert [e.commit_id for e in backend.read_log(7, 0, 10)] == [1]
        # An append whose prev is the truncation point (its entry is gone) still continues
        # the log; a smaller truncate changes nothing.
        six = self.entry(6, 6, 2, ChangeType.UPDATE, "t", 3, doc(v=6))
        [(accepted, state)] = await self.replicate(backend, [Append(6, 2, (2, 1), entries[2:] + [six], truncate=1)])
        assert accepted
        assert (state.last_commit_id, state.last_epoch, state.truncated, state.truncated_epoch) == (6, 2, 2, 1)
        assert [e.commit_id for e in backend.read_log(6, 0, 100)] == [3, 4, 5, 6]
        # ... but not with another epoch at that point.
        before = self.snapshot(backend, ["t"], [6])
        [(accepted, _state)] = await self.replicate(backend, [Append(6, 2, (2, 2), entries[2:] + [six])])
        assert not accepted
        assert self.snapshot(backend, ["t"], [6]) == before
        # truncate is bounded by the last entry held.
        seven = self.entry(6, 7, 3, ChangeType.CREATE, "t", 8, doc(v=7))
        [(accepted, state)] = await self.replicate(backend, [Append(6, 3, (6, 2), [seven], truncate=100)])
        assert accepted
        assert (state.last_commit_id, state.last_epoch, state.truncated, state.truncated_epoch) == (7, 3, 7, 3)
        assert backend.read_log(6, 0, 100) == []
        eight = self.entry(6, 8, 3, ChangeType.UPDATE, "t", 8, doc(v=8))
        [(accepted, state)] = await self.replicate(backend, [Append(6, 3, (7, 3), [eight])])
        assert accepted and (state.last_commit_id, state.last_epoch, state.truncated) == (8, 3, 7)
        assert log_rows(backend.read_log(6, 0, 100)) == log_rows([eight])
        assert backend.get("t", self.id(6, 8))[1] == 8

    @pytest_twisted.ensureDeferred
    async def test_a_truncate_unit_drops_the_log_up_to_a_commit_id(self, backend):
        a, b = self.id(8, 1), self.id(8, 2)
        await self.commit(backend, [Insert("t", a, doc(v=1)), Insert("t", b, doc(v=2))])
        await self.commit(backend, [Insert("t", self.id(9, 1), doc(v=0))])
        await self.replicate(backend, [Promise(8, 3)])
        await backend.commit([Update("t", a, doc(v=3)), Update("t", b, doc(v=4))], T0, epochs={8: 3})
        [(accepted, state)] = await self.replicate(backend, [Truncate(8, 2)])
        assert accepted
        assert (state.last_commit_id, state.last_epoch, state.truncated, state.truncated_epoch) == (4, 3, 2, 0)
        assert [(e.commit_id, e.epoch) for e in backend.read_log(8, 0, 10)] == [(3, 3), (4, 3)]
        [(accepted, state)] = await self.replicate(backend, [Truncate(8, 3)])
        assert accepted and (state.truncated, state.truncated_epoch) == (3, 3)
        assert [e.commit_id for e in backend.read_log(8, 0, 10)] == [4]
        # Truncating less than already truncated changes nothing.
        [(accepted, state)] = await self.replicate(backend, [Truncate(8, 1)])
        assert accepted and (state.truncated, state.truncated_epoch) == (3, 3)
        assert [e.commit_id for e in backend.read_log(8, 0, 10)] == [4]
        # upto is bounded by the last entry.
        [(accepted, state)] = await self.replicate(backend, [Truncate(8, 1000)])
        assert accepted
        assert (state.last_commit_id, state.last_epoch, state.truncated, state.truncated_epoch) == (4, 3, 4, 3)
        assert backend.partition_state(8) == state
        assert backend.read_log(8, 0, 10) == []
        # The elements and the other partitions stay; commit ids go on.
        assert [(i[0], i[2]) for i in backend.scan("t", -1, 10)] == [(a, 3), (b, 4), (self.id(9, 1), 1)]
        assert [e.commit_id for e in backend.read_log(9, 0, 10)] == [1]
        assert await backend.commit([Delete("t", a)], T0, epochs={8: 3}) == [(a, 5)]
        assert [(e.commit_id, e.epoch) for e in backend.read_log(8, 0, 10)] == [(5, 3)]

    # -- replication: full resync -----------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_reset_and_load_replace_a_partition(self, backend):
        mine = [self.id(6, 1), self.id(6, 2), self.id(6, 9)]
        theirs = [self.id(5, 3), self.id(7, 1)]
        await self.commit(backend, [Insert("user", mine[0], doc(v=1)), Insert("item", mine[1], doc(v=1))])
        await self.commit(backend, [Insert("user", theirs[0], doc(v=1)), Insert("item", theirs[1], doc(v=1))])
        await self.commit(backend, [Insert("item", mine[2], doc(v=2)), Update("user", mine[0], doc(v=2))])
        def others():
            """What a reader sees of partitions 5 and 7 (which a reset of 6 must not touch)."""
            elements = {(t, e): backend.get(t, e) for t in ("user", "item") for e in theirs}
            return elements, self.snapshot(backend, [], [5, 7])

        untouched = others()
        assert backend.partition_state(6).max_sequence == 9

        [(accepted, state)] = await self.replicate(backend, [Reset(6, 3, T0 + 10)])
        assert accepted
        # The copy starts again at nothing (max_sequence is kept: ids are never reused).
        assert state == PartitionState(6, mtime=T0 + 10, epoch=3, max_sequence=9, syncing=True)
        assert backend.partition_state(6) == state
        for element in mine:
            assert backend.get("user", element) is None and backend.get("item", element) is None
        assert backend.read_log(6, 0, 100) == []
        assert others() == untouched
        assert [i[0] for i in backend.scan("user", -1, 10)] == [theirs[0]]
        assert [i[0] for i in backend.scan("item", -1, 10)] == [theirs[1]]

        # While syncing, appends are refused and the copy takes no commits.
        syncing = self.snapshot(backend, ["user", "item"], [6])
        first = self.entry(6, 1, 3, ChangeType.CREATE, "user", 20, doc(v=0))
        [(accepted, _state)] = await self.replicate(backend, [Append(6, 3, (0, 0), [first])])
        assert not accepted
        await failure_of(backend.commit([Insert("user", self.id(6, 21), doc(v=0))], T0, epochs={6: 3}), Unavailable)
        assert self.snapshot(backend, ["user", "item"], [6]) == syncing

        [(accepted, state)] = await self.replicate(
            backend, [Load(6, 3, [("user", self.id(6, 1), doc(v=10), 4), ("item", self.id(6, 5), doc(v=11), 7)])]
        )
        assert accepted and state.syncing and state.last_commit_id == 0
        assert backend.get("user", self.id(6, 1)) == (doc(v=10), 4)
        assert backend.get("item", self.id(6, 5)) == (doc(v=11), 7)
        results = await self.replicate(
            backend,
            [
                Load(6, 2, [("user", self.id(6, 30), doc(v=0), 1)]),  # an older epoch
                Load(6, 3, [("user", self.id(6, 12), doc(v=12), 8)], done=(8, 2)),
            ],
        )
        assert [ok for ok, _state in results] == [False, True]
        assert backend.get("user", self.id(6, 30)) is None
        state = results[1][1]
        assert state == PartitionState(
            6,
            mtime=T0 + 10,
            last_commit_id=8,
            epoch=3,
            max_sequence=12,
            last_epoch=2,
            truncated=8,
            truncated_epoch=2,
            followed=3,
        )
        assert backend.partition_state(6) == state
        assert [(i[0], bytes(i[1]), i[2]) for i in backend.scan("user", -1, 10)] == [
            (theirs[0], doc(v=1), 1),
            (self.id(6, 1), doc(v=10), 4),
            (self.id(6, 12), doc(v=12), 8),
        ]
        assert [(i[0], bytes(i[1]), i[2]) for i in backend.scan("item", -1, 10)] == [
            (self.id(6, 5), doc(v=11), 7),
            (theirs[1], doc(v=1), 1),
        ]
        assert backend.read_log(6, 0, 100) == []

        # Done: a Load is refused now, and the log goes on from the point the copy was made at.
        loaded = self.snapshot(backend, ["user", "item"], [6])
        [(accepted, _state)] = await self.replicate(backend, [Load(6, 3, [("user", self.id(6, 40), doc(v=0), 9)])])
        assert not accepted
        assert self.snapshot(backend, ["user", "item"], [6]) == loaded
        nine = self.entry(6, 9, 3, ChangeType.UPDATE, "user", 1, doc(v=13))
        [(accepted, _state)] = await self.replicate(backend, [Append(6, 3, (8, 3), [nine])])
        assert not accepted, "prev must match the epoch given in done"
        [(accepted, state)] = await self.replicate(backend, [Append(6, 3, (8, 2), [nine])])
        assert accepted and (state.last_commit_id, state.last_epoch, state.followed) == (9, 3, 3)
        assert backend.get("user", self.id(6, 1)) == (doc(v=13), 9)
        assert log_rows(backend.read_log(6, 0, 100)) == log_rows([nine])
        assert await backend.commit([Delete("item", self.id(6, 5))], T0, epochs={6: 3}) == [(self.id(6, 5), 10)]
        # A reset from an older epoch is refused.
        before = self.snapshot(backend, ["user", "item"], [6])
        [(accepted, _state)] = await self.replicate(backend, [Reset(6, 2, T0 + 20)])
        assert not accepted
        assert self.snapshot(backend, ["user", "item"], [6]) == before
        assert others() == untouched


class StorageMetaContract(_BackendFixtures):
    """Record types, metadata, statistics, and closing."""

    # -- record types -----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_record_types_lists_the_types_written(self, backend):
        assert backend.record_types() == []
        await self.commit(backend, [Insert("user", self.id(0, 1), doc(v=1)), Insert("order", self.id(1, 1), doc(v=1))])
        assert backend.record_types() == ["order", "user"]
        await self.commit(backend, [Insert("user", self.id(0, 2), doc(v=2))])
        assert backend.record_types() == ["order", "user"]
        entry = self.entry(2, 1, 1, ChangeType.CREATE, "item", 1, doc(v=1))
        await self.replicate(backend, [Append(2, 1, (0, 0), [entry])])
        assert backend.record_types() == ["item", "order", "user"]
        await self.replicate(backend, [Reset(3, 1, T0), Load(3, 1, [("basket", self.id(3, 1), doc(v=1), 1)], done=(1, 1))])
        assert backend.record_types() == ["basket", "item", "order", "user"]

    # -- metadata and statistics ------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_meta_values_round_trip(self, backend):
        assert backend.get_meta("host_id") is None
        await backend.set_meta({"host_id": "a1b2", "partitions": 64, "created": 1.5, "nested": {"x": [1, "y", None]}})
        assert backend.get_meta("host_id") == "a1b2"
        assert backend.get_meta("partitions") == 64
        assert backend.get_meta("created") == 1.5
        assert backend.get_meta("nested") == {"x": [1, "y", None]}
        await backend.set_meta({"host_id": "c3", "héllo": True})
        assert backend.get_meta("host_id") == "c3"
        assert backend.get_meta("partitions") == 64
        assert backend.get_meta("héllo") is True

    @pytest_twisted.ensureDeferred
    async def test_a_meta_value_of_none_deletes_the_key(self, backend):
        await backend.set_meta({"a": 1, "b": 2})
        await backend.set_meta({"a": None, "c": 3, "never-there": None})
        assert (backend.get_meta("a"), backend.get_meta("b"), backend.get_meta("c")) == (None, 2, 3)

    @pytest_twisted.ensureDeferred
    async def test_stats_report_size_and_free_space(self, backend):
        stats = backend.stats()
        assert {"size_bytes", "free_bytes"} <= set(stats)
        assert all(type(stats[key]) is int and stats[key] >= 0 for key in ("size_bytes", "free_bytes"))
        big = doc(blob=b"x" * 300_000)
        await self.commit(backend, [Insert("t", self.id(0, s), big) for s in range(1, 4)])
        after = backend.stats()
        assert after["size_bytes"] >= stats["size_bytes"] + 900_000
        assert after["free_bytes"] > 0

    # -- closing ----------------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_commit_after_close_is_unavailable(self, backend):
        await self.commit(backend, [Insert("t", self.id(0, 1), doc(v=1))])
        await backend.close()
        await failure_of(backend.commit([Insert("t", self.id(0, 2), doc(v=1))], T0), Unavailable)
        await failure_of(backend.set_meta({"k": 1}), Unavailable)


class StorageBackendContract(
    StorageWritesContract, StorageReadsContract, StorageReplicationContract, StorageMetaContract
):
    """Tests every storage backend must pass; subclass it and define :meth:`make_backend`."""


class DurableStorageContract(_BackendFixtures):
    """Tests for a backend whose data outlives the backend object.

    Define :meth:`reopen_backend` as well as :meth:`make_backend`.
    """

    def reopen_backend(self, closed):
        """:return: a new, unopened backend over the data of the closed backend *closed*."""
        raise NotImplementedError("a durable storage contract test class must define reopen_backend()")

    @pytest_twisted.ensureDeferred
    async def test_everything_survives_close_and_reopen(self, backend):
        a, b, c = self.id(1, 1), self.id(1, 2), self.id(2, 1)
        await self.commit(backend, [Insert("user", a, doc(name="ada")), Insert("order", b, doc(n=1))])
        await self.commit(backend, [Insert("user", c, doc(name="bob")), Update("user", a, doc(name="ada", v=2))])
        await self.commit(backend, [Delete("order", b)], timestamp=T0 + 1)
        await backend.set_meta({"host_id": "abc", "partitions": 4})
        before = self.snapshot(backend, ["user", "order"], [1, 2])
        await backend.close()

        reopened = await self.open_again(self.reopen_backend(backend))
        assert self.snapshot(reopened, ["user", "order"], [1, 2]) == before
        assert reopened.get("user", a)[1] == 3
        assert reopened.get("order", b) is None
        assert reopened.get_meta("host_id") == "abc"
        assert reopened.get_meta("partitions") == 4
        assert reopened.partition_state(1).max_sequence == 2
        # Commit ids go on from where they were.
        assert await self.commit(reopened, [Insert("order", self.id(1, 3), doc(n=2))]) == [(self.id(1, 3), 5)]
        # Record types created before the restart are written to and read as before.
        assert await self.commit(reopened, [Update("user", c, doc(name="bob", v=2))]) == [(c, 2)]
        assert [i[0] for i in reopened.scan("user", -1, 10)] == [a, c]
