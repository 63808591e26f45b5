"""TransactionService as the coordinator's I/O: it sends what the Coordination asks, reports
back what came of it, and keeps its clock, all under a Clock with no reactor and no network."""

import itertools

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from nodedb import codec, errors
from nodedb.codec import DECISION_TYPE
from nodedb.ids import IdLayout
from nodedb.interfaces import ITransactions
from nodedb.storage import Delete
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.transactions.locks import LockTable
from nodedb.transactions.service import TransactionService, TransactionSettings

LAYOUT = IdLayout(partition_bits=4)
HOME, OTHER = 3, 5
OPERATIONS = [
    {"op": "update", "type": "acct", "id": LAYOUT.make(HOME, 1), "doc": {"b": 1}},
    {"op": "update", "type": "acct", "id": LAYOUT.make(OTHER, 1), "doc": {"b": 2}},
]


class FakeStorage:
    layout = LAYOUT

    def __init__(self):
        self.items = {}

    def get(self, record_type, element_id):
        return self.items.get((record_type, element_id))


class FakeIds:
    def __init__(self):
        self._sequence = itertools.count(100)

    def allocate(self, partition):
        return LAYOUT.make(partition, next(self._sequence))


class FakeLocal:
    """What the coordinator uses of LocalQuery; every commit waits for the test to end it."""

    def __init__(self):
        self.storage = FakeStorage()
        self.ids = FakeIds()
        self.locks = LockTable(lambda partition: [], Clock())  # no prepare records
        self.commits = []  # (units, owner, Deferred)

    def encode_document(self, doc):
        if doc == "too large":
            raise errors.InvalidRequest("document too large")
        return codec.encode(doc)

    def commit(self, units, owner=None, check=None):
        d = defer.Deferred()
        self.commits.append((units, owner, d))
        return d


class Peers:
    """The primaries of the other partitions: every call waits for the test to answer it."""

    def __init__(self):
        self.calls = []  # (host, op, arguments, timeout, Deferred)

    def call(self, host, op, arguments, timeout):
        d = defer.Deferred()
        self.calls.append((host, op, arguments, timeout, d))
        return d


def service():
    clock, local, peers = Clock(), FakeLocal(), Peers()
    settings = TransactionSettings(timeout=4.0, prepare_timeout=2.0)
    transactions = TransactionService(local, "here", lambda p: f"host{p}", peers.call, clock, settings)
    return transactions, clock, local, peers


def test_the_service_provides_itransactions():
    transactions, *_ = service()
    assert verifyObject(ITransactions, transactions)


def test_the_service_carries_out_a_commit_asking_again_after_a_failed_confirmation():
    transactions, clock, local, peers = service()
    outcome = transactions.run(OPERATIONS)
    [(host, op, arguments, timeout, prepare)] = peers.calls
    assert (host, op, timeout) == (f"host{OTHER}", "tx.prepare", 2.0)
    tx = arguments["tx"]
    assert LAYOUT.partition_of(tx) == HOME
    prepare.callback({"record": LAYOUT.make(OTHER, 50), "ids": [None]})
    [(units, owner, decision)] = local.commits
    assert owner == tx and units[-1].record_type == DECISION_TYPE
    clock.advance(1.0)
    decision.callback([(LAYOUT.make(HOME, 1), 7), (tx, 1)])
    peers.calls[1][4].errback(errors.Unavailable("failing over"))
    assert len(peers.calls) == 2
    no_result(outcome)
    clock.advance(0.1)
    host, op, arguments, timeout, commit = peers.calls[2]
    assert (host, op, arguments) == (f"host{OTHER}", "tx.commit", {"tx": tx, "p": OTHER, "record": LAYOUT.make(OTHER, 50)})
    commit.callback({"versions": [4]})
    assert success_result_of(outcome) == [7, 4]
    assert local.commits[-1][0] == [Delete(DECISION_TYPE, tx)], "the decision record is forgotten"
    assert not clock.getDelayedCalls()


def test_a_decision_still_unwritten_at_the_deadline_fails_with_timeout_and_nothing_follows_it():
    transactions, clock, local, peers = service()
    outcome = transactions.run(OPERATIONS)
    tx = peers.calls[0][2]["tx"]
    failure_result_of(defer.ensureDeferred(transactions.resolve(tx)), errors.Unavailable)
    peers.calls[0][4].callback({"record": LAYOUT.make(OTHER, 50), "ids": [None]})
    clock.advance(3.9)
    no_result(outcome)
    clock.advance(0.1)
    assert "may or may not be committed" in str(failure_result_of(outcome, errors.Timeout).value)
    assert not clock.getDelayedCalls()
    local.commits[0][2].callback([(LAYOUT.make(HOME, 1), 7), (tx, 1)])
    assert len(peers.calls) == 1, "the participants resolve the transaction themselves"


def test_a_bad_document_of_the_home_fails_before_anything_is_prepared():
    transactions, clock, local, peers = service()
    operations = [dict(OPERATIONS[0], doc="too large"), OPERATIONS[1]]
    failure_result_of(transactions.run(operations), errors.InvalidRequest)
    assert peers.calls == [] and local.commits == []
