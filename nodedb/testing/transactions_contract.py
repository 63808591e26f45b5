"""The behaviour every :class:`~nodedb.interfaces.ITransactions` must show.

Subclass :class:`TransactionsContract` in a pytest module and define
``make_transactions(host, local, primary_of, call)``: an unstarted provider for *host* (a
:class:`~nodedb.testing.peers.PeerHost`) that commits through *local* (the host's
:class:`~nodedb.query.local.LocalQuery`, replicated by a log sync on ``host.storage``), finds
partitions' primaries with ``primary_of(partition)`` and calls hosts with ``call(host, op,
arguments, timeout)``. *local* holds the host's lock table of prepared transactions
(:class:`~nodedb.transactions.locks.LockTable` on ``host.storage``).

The suite runs hosts ``a`` and ``b``, each the only replica of half the partitions (so every
write is acknowledged once durable), with the production log sync under both.
"""

from dataclasses import dataclass

import pytest
from zope.interface.verify import verifyObject

from nodedb import codec, errors
from nodedb.ids import IdAllocator
from nodedb.interfaces import ITransactions
from nodedb.logsync.service import LogSyncService
from nodedb.query.local import LocalQuery
from nodedb.testing import failure_result_of, success_result_of
from nodedb.testing.peers import LAYOUT, OnPeerNetwork
from nodedb.transactions.locks import LockTable, stored_prepares
from nodedb.voting.state import ClusterState

HALF = LAYOUT.max_partitions // 2


@dataclass
class Party:
    host: object
    local: object
    transactions: object

    def insert(self, doc, partition):
        """:return: the id of *doc*, inserted here into *partition*."""
        return success_result_of(self.local.insert("user", doc, near=LAYOUT.make(partition, 1)))

    def doc(self, element):
        """:return: the document stored here under *element*, or None."""
        found = self.host.storage.get("user", element)
        return None if found is None else codec.decode(found[0])


class TransactionsContract(OnPeerNetwork):
    def make_transactions(self, host, local, primary_of, call):
        raise NotImplementedError

    @pytest.fixture
    def parties(self, peers):
        """``(a, b)``: a :class:`Party` on each host, a primary of partitions below
        :data:`HALF`, b of the others."""
        hosts = [peers.add_host("a"), peers.add_host("b")]
        state = ClusterState()
        placed = {str(p): [["a" if p < HALF else "b"], 1] for p in range(LAYOUT.max_partitions)}
        state.apply(
            {
                "op": "bootstrap",
                "cluster": "c1",
                "partitions": LAYOUT.max_partitions,
                "replicas": 1,
                "host": "a",
                "address": hosts[0].address,
                "members": {"b": hosts[1].address},
                "map": placed,
                "at": 0.0,
            }
        )

        def primary_of(partition):
            assignment = state.assignments.get(partition)
            if assignment is None or assignment.primary is None:
                raise errors.Unavailable(f"partition {partition} has no primary")
            return assignment.primary

        parties = []
        for host in hosts:
            logsync = peers.start(
                LogSyncService(host.clock, host.host_id, host.storage, host.transport, host.address_of), host
            )
            logsync.update(state)
            led = {p: 0 for p in state.primary_partitions(host.host_id)}
            locks = LockTable(stored_prepares(host.storage), host.clock)
            ids = IdAllocator(LAYOUT, led)
            local = LocalQuery(host.storage, ids, host.clock, dict, replication=logsync, locks=locks)

            def call(target, op, arguments, timeout, host=host):
                return host.transport.call(host.address_of(target), op, arguments, timeout)

            transactions = peers.start(self.make_transactions(host, local, primary_of, call), host)
            parties.append(Party(host, local, transactions))
        a, b = parties
        peers.run_until(lambda: a.local.replication.is_primary(0) and b.local.replication.is_primary(HALF), timeout=10)
        return tuple(parties)

    @staticmethod
    def run(peers, party, operations):
        """:return: the Deferred of *party* running *operations*, once it fired."""
        d = party.transactions.run(operations)
        peers.run_until(lambda: d.called, timeout=30)
        return d

    def test_provides_the_interface(self, parties):
        for party in parties:
            assert verifyObject(ITransactions, party.transactions)

    def test_a_transaction_across_hosts_applies_everywhere(self, parties, peers):
        a, b = parties
        here, there = a.insert({"v": 1}, 0), b.insert({"v": 1}, HALF)
        operations = [
            {"op": "update", "type": "user", "id": here, "doc": {"v": 2}},
            {"op": "update", "type": "user", "id": there, "doc": {"v": 2}},
            {"op": "insert", "type": "user", "doc": {"v": "new"}, "near": there},
            {"op": "delete", "type": "user", "id": a.insert({"v": "gone"}, 1)},
        ]
        results = success_result_of(self.run(peers, a, operations))
        assert len(results) == 4
        assert a.doc(here) == {"v": 2} and b.doc(there) == {"v": 2}
        assert LAYOUT.partition_of(results[2]) == HALF and b.doc(results[2]) == {"v": "new"}
        assert a.doc(operations[3]["id"]) is None
        assert results[0] == a.host.storage.get("user", here)[1]

    def test_a_failing_participant_aborts_the_whole_transaction(self, parties, peers):
        a, b = parties
        here, there = a.insert({"v": 1}, 0), b.insert({"v": 1}, HALF)
        operations = [
            {"op": "update", "type": "user", "id": here, "doc": {"v": 2}},
            {"op": "update", "type": "user", "id": there, "doc": {"v": 2}},
            {"op": "delete", "type": "user", "id": LAYOUT.make(HALF + 1, 99)},  # no such element
        ]
        failure_result_of(self.run(peers, a, operations), errors.NotFound)
        assert a.doc(here) == {"v": 1} and b.doc(there) == {"v": 1}
        # The elements are free again: a plain write goes through.
        assert success_result_of(b.local.update("user", there, {"v": 3})) > 1
