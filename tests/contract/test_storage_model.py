"""Random operation sequences: MemoryStorage and LMDBStorage against a model of the contract.

The model is written from the contract (docs/plugins.md, nodedb/interfaces.py), not from
nodedb.storage.apply, so a mistake shared by both backends still shows.
"""

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nodedb.errors import Conflict, NotFound
from nodedb.ids import IdLayout
from nodedb.storage import ChangeType, Delete, Insert, Update
from nodedb.storage.lmdb import LMDBStorage
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, success_result_of
from nodedb import codec

LAYOUT = IdLayout()
TYPES = ("a", "b")
PARTITIONS = (0, 1, 65535)
IDS = [LAYOUT.make(p, s) for p in PARTITIONS for s in (1, 2, 3, 7)]

element_ids = st.sampled_from(IDS)
record_types = st.sampled_from(TYPES)
versions = st.none() | st.integers(min_value=0, max_value=6)
data = st.integers(min_value=0, max_value=1000).map(lambda n: codec.encode({"n": n}))

operations = st.one_of(
    st.builds(Insert, record_types, element_ids, data),
    st.builds(Update, record_types, element_ids, data, versions),
    st.builds(Delete, record_types, element_ids, versions),
)


class Model:
    """The contract of IStorageBackend.commit, on plain dicts."""

    def __init__(self):
        self.elements = {}  # (type, id) -> (data, version)
        self.last_commit = {}  # partition -> commit id
        self.max_sequence = {}  # partition -> highest sequence ever inserted
        self.log = {}  # partition -> [(commit_id, timestamp, change, type, id, data)]

    def commit(self, ops, timestamp):
        elements = dict(self.elements)
        last_commit = dict(self.last_commit)
        max_sequence = dict(self.max_sequence)
        log = {p: list(entries) for p, entries in self.log.items()}
        results = []
        for op in ops:
            key = (op.record_type, op.element_id)
            partition = LAYOUT.partition_of(op.element_id)
            current = elements.get(key)
            if isinstance(op, Insert):
                if current is not None:
                    return Conflict
            else:
                if current is None:
                    return NotFound
                if op.if_version is not None and op.if_version != current[1]:
                    return Conflict
            commit_id = last_commit.get(partition, 0) + 1
            last_commit[partition] = commit_id
            if isinstance(op, Delete):
                del elements[key]
                change, stored = ChangeType.DELETE, b""
            else:
                elements[key] = (op.data, commit_id)
                change, stored = (ChangeType.CREATE if isinstance(op, Insert) else ChangeType.UPDATE), op.data
                if isinstance(op, Insert):
                    sequence = LAYOUT.sequence_of(op.element_id)
                    max_sequence[partition] = max(max_sequence.get(partition, 0), sequence)
            log.setdefault(partition, []).append((commit_id, timestamp, change, op.record_type, op.element_id, stored))
            results.append((op.element_id, commit_id))
        self.elements, self.last_commit, self.max_sequence, self.log = elements, last_commit, max_sequence, log
        return results


class StorageAgainstModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.model = Model()
        self.meta = {}
        self.clock = 1000.0
        self.directory = tempfile.mkdtemp(prefix="nodedb-model-")
        self.memory = MemoryStorage()
        self.lmdb = self._lmdb()
        success_result_of(self.memory.open())
        success_result_of(self.lmdb.open())

    def _lmdb(self):
        return LMDBStorage(self.directory, reactor=None, map_size=32 * 1024 * 1024, synchronous=True)

    def backends(self):
        return (self.memory, self.lmdb)

    @rule(ops=st.lists(operations, min_size=1, max_size=5))
    def commit(self, ops):
        self.clock += 0.5
        expected = self.model.commit(ops, self.clock)
        for backend in self.backends():
            d = backend.commit(ops, self.clock)
            if isinstance(expected, list):
                assert success_result_of(d) == expected, backend.name
            else:
                failure_result_of(d, expected)

    @rule(key=st.sampled_from(["x", "y"]), value=st.integers() | st.text(max_size=5))
    def set_meta(self, key, value):
        self.meta[key] = value
        for backend in self.backends():
            success_result_of(backend.set_meta({key: value}))

    @rule()
    def restart(self):
        for backend in self.backends():
            success_result_of(backend.close())
        self.memory = MemoryStorage(store=self.memory.store)
        self.lmdb = self._lmdb()
        for backend in self.backends():
            success_result_of(backend.open())

    @rule(record_type=record_types, after=st.sampled_from([-1, *IDS]), limit=st.integers(min_value=1, max_value=5))
    def scan_page(self, record_type, after, limit):
        expected = sorted(
            (element_id, data, version)
            for (t, element_id), (data, version) in self.model.elements.items()
            if t == record_type and element_id > after
        )[:limit]
        for backend in self.backends():
            assert [(i, bytes(d), v) for i, d, v in backend.scan(record_type, after, limit)] == expected

    @precondition(lambda self: any(self.model.log.values()))
    @rule(partition=st.sampled_from(PARTITIONS), after=st.integers(min_value=0, max_value=10), limit=st.integers(1, 4))
    def log_page(self, partition, after, limit):
        expected = [entry for entry in self.model.log.get(partition, []) if entry[0] > after][:limit]
        for backend in self.backends():
            entries = backend.read_log(partition, after, limit)
            got = [(e.commit_id, e.timestamp, e.change_type, e.record_type, e.element_id, bytes(e.data)) for e in entries]
            assert got == expected
            assert all(e.partition == partition for e in entries)

    @invariant()
    def backends_match_the_model(self):
        for backend in self.backends():
            for record_type in TYPES:
                got = [(i, bytes(d), v) for i, d, v in backend.scan(record_type, -1, 1000)]
                expected = sorted((i, d, v) for (t, i), (d, v) in self.model.elements.items() if t == record_type)
                assert got == expected, backend.name
                for element_id in IDS:
                    found = backend.get(record_type, element_id)
                    want = self.model.elements.get((record_type, element_id))
                    assert (None if found is None else (bytes(found[0]), found[1])) == want
            for partition in PARTITIONS:
                state = backend.partition_state(partition)
                assert state.last_commit_id == self.model.last_commit.get(partition, 0)
                assert state.max_sequence == self.model.max_sequence.get(partition, 0)
                assert len(backend.read_log(partition, 0, 1000)) == len(self.model.log.get(partition, []))
            for key, value in self.meta.items():
                assert backend.get_meta(key) == value

    def teardown(self):
        for backend in self.backends():
            success_result_of(backend.close())
        shutil.rmtree(self.directory, ignore_errors=True)


StorageAgainstModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStorageAgainstModel = StorageAgainstModel.TestCase
