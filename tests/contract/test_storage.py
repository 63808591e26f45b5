"""The storage contract run against the backends nodedb ships, and what only LMDB promises."""

import struct
import threading

import lmdb
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor

from nodedb.errors import Conflict, Unavailable
from nodedb.storage import SCHEMA_VERSION, ChangeType, Delete, Insert, PartitionState, Update
from nodedb.storage.lmdb import LMDBStorage
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb.testing import failure_of
from nodedb.testing.storage_contract import T0, DurableStorageContract, StorageBackendContract, doc, log_rows
from nodedb import codec

MAP_SIZE = 64 * 1024 * 1024


class TestMemoryStorage(StorageBackendContract, DurableStorageContract):
    def make_backend(self):
        return MemoryStorage()

    def reopen_backend(self, closed):
        return MemoryStorage(store=closed.store)


class TestLMDBSynchronous(StorageBackendContract, DurableStorageContract):
    def make_backend(self):
        return LMDBStorage(str(self.tmp_path / "lmdb"), reactor=None, map_size=MAP_SIZE, synchronous=True)

    def reopen_backend(self, closed):
        return LMDBStorage(closed.path, reactor=None, map_size=MAP_SIZE, synchronous=True)


class TestLMDBWriterThread(StorageBackendContract, DurableStorageContract):
    """The production mode: writes on the writer thread, results back through the reactor."""

    def make_backend(self):
        return LMDBStorage(str(self.tmp_path / "lmdb"), reactor=global_reactor, map_size=MAP_SIZE)

    def reopen_backend(self, closed):
        return LMDBStorage(closed.path, reactor=global_reactor, map_size=MAP_SIZE)

    @pytest_twisted.ensureDeferred
    async def test_commits_made_together_share_a_transaction(self, backend):
        batches = []
        backend.observe_batches(batches.append)
        calls = [
            backend.commit([Insert("t", self.id(0, n), doc(n=n))] if n % 2 else [Update("t", self.id(0, 99), doc(n=n))], T0)
            for n in range(1, 9)
        ]
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        # Good and failing units shared synced transactions, and only the failing ones failed.
        assert sum(batches) == 8 and len(batches) < 8
        assert max(batches) > 1
        assert [ok for ok, _result in outcomes] == [True, False] * 4
        assert [result for ok, result in outcomes if ok] == [[(self.id(0, n), k)] for k, n in enumerate((1, 3, 5, 7), 1)]
        assert [i[0] for i in backend.scan("t", -1, 10)] == [self.id(0, n) for n in (1, 3, 5, 7)]

    @pytest_twisted.ensureDeferred
    async def test_close_waits_for_writes_under_way(self, backend):
        calls = [backend.commit([Insert("t", self.id(1, n), doc(n=n))], T0) for n in range(1, 6)]
        closing = backend.close()
        # Writes that arrive once closing has begun are refused.
        await failure_of(backend.commit([Insert("t", self.id(1, 9), doc(n=9))], T0), Unavailable)
        results = await defer.gatherResults(calls)
        assert [r[0][1] for r in results] == [1, 2, 3, 4, 5]
        await closing
        reopened = await self.open_again(self.reopen_backend(backend))
        assert len(reopened.scan("t", -1, 10)) == 5


class TestLMDBOnly:
    """What the LMDB backend promises beyond the contract (synchronous mode: no reactor)."""

    def make(self, path, **options):
        options.setdefault("map_size", MAP_SIZE)
        backend = LMDBStorage(str(path), reactor=None, synchronous=True, **options)
        return backend

    def test_a_store_of_a_newer_schema_version_is_refused(self, tmp_path):
        backend = self.make(tmp_path / "db")
        success_result_of(backend.open())
        assert backend.get_meta("schema_version") == SCHEMA_VERSION
        success_result_of(backend.set_meta({"schema_version": SCHEMA_VERSION + 1}))
        success_result_of(backend.close())

        newer = self.make(tmp_path / "db")
        error = failure_result_of(newer.open(), Unavailable).value
        assert f"schema version {SCHEMA_VERSION + 1}" in str(error)
        assert newer.env is None
        failure_result_of(newer.commit([Insert("t", 1, doc(v=1))], T0), Unavailable)

    def test_a_schema_version_1_store_is_upgraded(self, tmp_path):
        """Version 1 log entries had no epoch (head ``>dBQB``) and partition states four
        fields; opening such a store rewrites the log at epoch 0 and moves it to version 2."""
        backend = self.make(tmp_path / "db")
        success_result_of(backend.open())
        layout = backend.layout
        a, b, c = layout.make(1, 1), layout.make(1, 2), layout.make(2, 7)
        success_result_of(backend.commit([Insert("user", a, doc(name="ada")), Insert("order", b, doc(n=1))], T0))
        success_result_of(backend.commit([Insert("user", c, doc(name="bob")), Update("user", a, doc(name="ada", v=2))], T0 + 1))
        success_result_of(backend.commit([Delete("order", b)], T0 + 2.5))
        expected = {p: log_rows(backend.read_log(p, 0, 100)) for p in (1, 2)}
        states = {p: backend.partition_state(p) for p in (1, 2)}
        assert [row[2] for p in (1, 2) for row in expected[p]] == [0] * 5
        success_result_of(backend.close())

        # Write the store back as version 1 had it.
        v2_head, v1_head, v1_state = struct.Struct(">dHBQB"), struct.Struct(">dBQB"), struct.Struct(">dQQQ")
        env = lmdb.open(str(tmp_path / "db"), map_size=MAP_SIZE, max_dbs=8, subdir=True)
        try:
            meta, log = env.open_db(b"meta"), env.open_db(b"log")
            with env.begin(write=True) as txn:
                rewritten = 0
                for key, value in list(txn.cursor(db=log)):
                    timestamp, epoch, change_type, element_id, name_length = v2_head.unpack_from(value)
                    assert epoch == 0
                    old = v1_head.pack(timestamp, change_type, element_id, name_length) + value[v2_head.size :]
                    assert len(old) == len(value) - 2
                    txn.put(key, old, db=log)
                    rewritten += 1
                assert rewritten == 5
                for p, state in states.items():
                    old_state = v1_state.pack(state.mtime, state.last_commit_id, state.epoch, state.max_sequence)
                    txn.put(b"p:" + struct.pack(">I", p), old_state, db=meta)
                txn.put(b"m:schema_version", codec.encode(1), db=meta)
        finally:
            env.close()

        for _round in range(2):  # the second open finds version 2 and leaves the log alone
            reopened = self.make(tmp_path / "db")
            success_result_of(reopened.open())
            assert reopened.get_meta("schema_version") == SCHEMA_VERSION == 2
            assert {p: log_rows(reopened.read_log(p, 0, 100)) for p in (1, 2)} == expected
            assert [e.change_type for e in reopened.read_log(1, 0, 100)] == [
                ChangeType.CREATE,
                ChangeType.CREATE,
                ChangeType.UPDATE,
                ChangeType.DELETE,
            ]
            assert reopened.partition_state(1) == PartitionState(1, last_commit_id=4, max_sequence=2)
            assert reopened.partition_state(2) == PartitionState(2, last_commit_id=1, max_sequence=7)
            assert reopened.get("user", a) == (doc(name="ada", v=2), 3)
            success_result_of(reopened.close())

        # The upgraded store takes new commits, which go on from the old commit ids.
        reopened = self.make(tmp_path / "db")
        success_result_of(reopened.open())
        assert success_result_of(reopened.commit([Update("user", c, doc(name="bob", v=2))], T0 + 3)) == [(c, 2)]
        assert [(e.commit_id, e.epoch) for e in reopened.read_log(2, 0, 100)] == [(1, 0), (2, 0)]
        success_result_of(reopened.close())

    def test_a_store_open_in_another_backend_is_refused_until_closed(self, tmp_path):
        first = self.make(tmp_path / "db")
        success_result_of(first.open())
        second = self.make(tmp_path / "db")
        error = failure_result_of(second.open(), Unavailable).value
        assert "in use by another nodedb process" in str(error)
        assert second.env is None
        success_result_of(first.close())
        success_result_of(second.open())
        success_result_of(second.close())

    def test_a_store_that_cannot_be_opened_is_unavailable(self, tmp_path):
        (tmp_path / "file").write_bytes(b"not a directory")
        backend = self.make(tmp_path / "file")
        failure_result_of(backend.open(), Unavailable)
        assert backend.env is None

    def test_the_record_type_limit_refuses_new_types_only(self, tmp_path):
        backend = self.make(tmp_path / "db", max_types=2)
        success_result_of(backend.open())
        assert success_result_of(backend.commit([Insert("a", 1, doc(v=1))], T0)) == [(1, 1)]
        assert success_result_of(backend.commit([Insert("b", 2, doc(v=1))], T0)) == [(2, 2)]
        error = failure_result_of(backend.commit([Insert("c", 3, doc(v=1))], T0), Unavailable).value
        assert "too many record types" in str(error)
        # A unit that needs the new type applies none of its operations.
        failure_result_of(backend.commit([Update("a", 1, doc(v=2)), Insert("c", 4, doc(v=1))], T0), Unavailable)
        assert backend.get("a", 1) == (doc(v=1), 1)
        assert backend.partition_state(0).last_commit_id == 2
        # Writes to existing types go on.
        assert success_result_of(backend.commit([Update("a", 1, doc(v=3)), Insert("b", 5, doc(v=1))], T0)) == [(1, 3), (5, 4)]
        success_result_of(backend.close())

        # The limit counts the types already in the store after a restart.
        reopened = self.make(tmp_path / "db", max_types=2)
        success_result_of(reopened.open())
        failure_result_of(reopened.commit([Insert("c", 6, doc(v=1))], T0), Unavailable)
        assert success_result_of(reopened.commit([Insert("b", 7, doc(v=1))], T0)) == [(7, 5)]
        success_result_of(reopened.close())

    def test_record_types_persist_across_reopen(self, tmp_path):
        backend = self.make(tmp_path / "db")
        success_result_of(backend.open())
        names = ["user", "order_line", "x" * 64, "t0"]
        success_result_of(backend.commit([Insert(name, n, doc(n=n)) for n, name in enumerate(names, 1)], T0))
        success_result_of(backend.close())

        reopened = self.make(tmp_path / "db")
        success_result_of(reopened.open())
        assert sorted(reopened._types) == sorted(names)
        for n, name in enumerate(names, 1):
            assert [(i[0], i[2]) for i in reopened.scan(name, -1, 10)] == [(n, n)]
        success_result_of(reopened.close())

    def test_a_full_map_is_unavailable_and_applies_nothing(self, tmp_path):
        backend = self.make(tmp_path / "db", map_size=1024 * 1024)
        success_result_of(backend.open())
        success_result_of(backend.commit([Insert("t", 1, doc(v=1))], T0))
        big = doc(blob=b"x" * 400_000)
        failure_result_of(backend.commit([Insert("t", n, big) for n in range(2, 6)], T0), Unavailable)
        assert [i[0] for i in backend.scan("t", -1, 10)] == [1]
        assert backend.partition_state(0).last_commit_id == 1
        # Small writes still fit.
        assert success_result_of(backend.commit([Insert("t", 9, doc(v=1))], T0)) == [(9, 2)]
        success_result_of(backend.close())

    def test_a_conflict_does_not_spoil_the_store(self, tmp_path):
        backend = self.make(tmp_path / "db")
        success_result_of(backend.open())
        success_result_of(backend.commit([Insert("t", 1, doc(v=1))], T0))
        failure_result_of(backend.commit([Insert("t", 1, doc(v=2))], T0), Conflict)
        assert success_result_of(backend.commit([Insert("t", 2, doc(v=2))], T0)) == [(2, 2)]
        success_result_of(backend.close())


@pytest.fixture(autouse=True)
def _no_writer_thread_left():
    """close() stops the writer thread of every LMDB backend."""
    yield
    left = [t.name for t in threading.enumerate() if "nodedb-lmdb-writer" in t.name]
    assert not left
