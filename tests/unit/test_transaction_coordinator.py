"""The coordinator of two-phase commit as a pure machine: answers and time in, actions out, no
reactor. Each test plays the part of the participants, the home partition's log and the clock."""

import pytest

from nodedb import codec, errors
from nodedb.codec import DECISION_TYPE
from nodedb.ids import IdLayout
from nodedb.wire.transaction import plan
from nodedb.storage import Insert, Update
from nodedb.transactions.coordinator import (
    Call,
    Coordination,
    Fail,
    ForgetDecision,
    LookUpDecision,
    Succeed,
    TransactionSettings,
    WriteDecision,
    first_error,
)

LAYOUT = IdLayout(partition_bits=4)
HOME, P1, P2 = 3, 5, 7
TX = LAYOUT.make(HOME, 900)
SETTINGS = TransactionSettings(timeout=4.0, prepare_timeout=2.0)


def eid(partition, sequence):
    return LAYOUT.make(partition, sequence)


#: Home update, an insert without near (goes home), then one operation in each participant.
OPERATIONS = [
    {"op": "update", "type": "acct", "id": eid(HOME, 1), "doc": {"b": 1}},
    {"op": "insert", "type": "acct", "doc": {"new": 1}},
    {"op": "update", "type": "acct", "id": eid(P1, 1), "doc": {"b": 2}, "if_version": 4},
    {"op": "insert", "type": "acct", "doc": {"new": 2}, "near": eid(P2, 1)},
]
HOME_UNITS = [Update("acct", eid(HOME, 1), b"u"), Insert("acct", eid(HOME, 2), b"i")]


def coordination(operations=OPERATIONS, home_units=HOME_UNITS, now=0.0):
    home, groups = plan(operations, LAYOUT.partition_of)
    return Coordination(TX, operations, home, groups, home_units, SETTINGS, now)


def prepared(c, now=0.1):
    """Start *c* and prepare both participants; :return: the actions after the last prepare."""
    c.start(0.0)
    assert c.answered(P1, {"record": eid(P1, 50), "ids": [None]}, now) == []
    return c.answered(P2, {"record": eid(P2, 50), "ids": [eid(P2, 9)]}, now)


def test_a_transaction_prepares_decides_and_commits_then_forgets_its_decision():
    c = coordination()
    assert c.undecided
    assert c.start(0.0) == [
        Call(P1, "tx.prepare", {"tx": TX, "p": P1, "ops": [
            {"op": "update", "type": "acct", "doc": {"b": 2}, "if_version": 4, "key": eid(P1, 1)}
        ]}, 2.0),
        Call(P2, "tx.prepare", {"tx": TX, "p": P2, "ops": [
            {"op": "insert", "type": "acct", "doc": {"new": 2}, "near": eid(P2, 1)}
        ]}, 2.0),
    ]
    assert c.wake_at is None
    assert c.answered(P2, {"record": eid(P2, 50), "ids": [eid(P2, 9)]}, 0.1) == [], "waits for every prepare"
    [decision] = c.answered(P1, {"record": eid(P1, 50), "ids": [None]}, 0.2)
    record = Insert(DECISION_TYPE, TX, codec.encode({"commit": True, "parts": [P1, P2]}))
    assert decision == WriteDecision(HOME_UNITS + [record])
    assert c.undecided and c.wake_at == 4.0, "the decision's commit has until the deadline"

    commits = c.decision_written([(eid(HOME, 1), 11), (eid(HOME, 2), 1), (TX, 1)], 0.3)
    assert not c.undecided
    assert c.wake_at is None
    assert commits == [
        Call(P1, "tx.commit", {"tx": TX, "p": P1, "record": eid(P1, 50)}, 2.0),
        Call(P2, "tx.commit", {"tx": TX, "p": P2, "record": eid(P2, 50)}, 2.0),
    ]
    assert c.answered(P1, {"versions": [5]}, 0.4) == []
    assert c.answered(P2, {"versions": [eid(P2, 9)]}, 0.4) == [
        ForgetDecision(TX),
        Succeed([11, eid(HOME, 2), 5, eid(P2, 9)]),
    ]


def test_a_transaction_without_participants_goes_straight_to_its_decision():
    operations = OPERATIONS[:2]
    c = coordination(operations)
    [decision] = c.start(0.0)
    assert decision.units[-1] == Insert(DECISION_TYPE, TX, codec.encode({"commit": True, "parts": []}))
    assert c.decision_written([(eid(HOME, 1), 11), (eid(HOME, 2), 1), (TX, 1)], 0.1) == [
        ForgetDecision(TX),
        Succeed([11, eid(HOME, 2)]),
    ]


def test_a_failed_prepare_aborts_the_prepared_participants_and_reports_the_participants_error():
    c = coordination()
    c.start(0.0)
    assert c.failed(P1, errors.Conflict("acct is at version 5, not 4"), 0.1) == []
    aborts = c.answered(P2, {"record": eid(P2, 50), "ids": [eid(P2, 9)]}, 0.2)
    assert aborts == [Call(P2, "tx.abort", {"tx": TX, "p": P2, "record": eid(P2, 50)}, 2.0)], "only the prepared"
    assert c.undecided, "a resolve must not write a decision while the abort is under way"
    [fail] = c.answered(P2, {"versions": []}, 0.3)
    assert isinstance(fail, Fail) and isinstance(fail.error, errors.Conflict)
    assert not c.undecided


def test_a_malformed_prepare_reply_aborts_with_unavailable_and_no_participant_is_left_prepared():
    c = coordination()
    c.start(0.0)
    assert c.answered(P1, {"record": eid(P1, 50), "ids": [None, None]}, 0.1) == [], "one id per operation"
    [fail] = c.failed(P2, errors.Unavailable("not the primary"), 0.1)
    assert isinstance(fail.error, errors.Unavailable)
    assert "malformed tx.prepare reply" in str(fail.error) and "not the primary" in str(fail.error)


@pytest.mark.parametrize(
    "failures, expected",
    [
        ([errors.NotFound("a"), errors.Conflict("b"), errors.InvalidRequest("c")], "c"),
        ([errors.NotFound("a"), errors.Conflict("b")], "b"),
        ([errors.Unavailable("x"), errors.NotFound("a")], "a"),
    ],
)
def test_the_client_sees_its_own_mistake_first_then_a_conflict_then_a_missing_element(failures, expected):
    assert str(first_error(failures)) == expected


def test_anything_else_means_nothing_was_applied():
    error = first_error([errors.Unavailable("down"), errors.Timeout("slow")])
    assert isinstance(error, errors.Unavailable)
    assert str(error) == "the transaction was aborted, nothing applied: down; slow"


def written(c, now):
    return c.decision_written([(eid(HOME, 1), 11), (eid(HOME, 2), 1), (TX, 1)], now)


def test_outcomes_are_sent_again_to_those_that_did_not_confirm_until_the_deadline():
    c = coordination()
    prepared(c)
    written(c, 1.0)
    assert c.failed(P1, errors.Unavailable("failing over"), 1.5) == []
    assert c.answered(P2, {"versions": [eid(P2, 9)]}, 1.5) == []
    assert c.wake_at == pytest.approx(1.6), "asked again once everyone answered"
    assert c.wake(1.6) == [Call(P1, "tx.commit", {"tx": TX, "p": P1, "record": eid(P1, 50)}, 2.0)]
    assert c.wake_at is None
    assert c.answered(P1, {"bad": "reply"}, 3.0) == [], "a malformed confirmation is no confirmation"
    [again] = c.wake(3.1)
    assert again.partition == P1 and again.timeout == pytest.approx(0.9), "no longer than the time left"
    [fail] = c.failed(P1, errors.Unavailable("still"), 3.95)
    assert isinstance(fail.error, errors.Timeout), "the next try would start after the deadline"
    assert str(fail.error) == (
        f"the transaction is committed, but partitions [{P1}] have not confirmed applying it yet; they will"
    )
    assert c.wake_at is None


def test_a_decision_written_at_the_last_moment_still_gives_participants_a_little_time():
    c = coordination()
    prepared(c)
    calls = written(c, 3.99)
    assert [call.timeout for call in calls] == [0.05, 0.05]


def test_a_wake_with_no_round_to_repeat_asks_nobody():
    c = coordination()
    prepared(c)
    written(c, 1.0)
    assert c.wake(1.2) == [], "every participant is still being asked"


def test_a_refused_decision_aborts_and_reports_the_refusal():
    c = coordination()
    prepared(c)
    aborts = c.decision_failed(errors.NotFound("acct 3 not found"), 0.5)
    assert [(a.partition, a.op) for a in aborts] == [(P1, "tx.abort"), (P2, "tx.abort")]
    assert c.wake_at is None and c.undecided
    c.answered(P1, {"versions": []}, 0.6)
    assert c.answered(P2, {"versions": []}, 0.6) == [LookUpDecision()]
    [fail] = c.decision_looked_up(False)
    assert isinstance(fail.error, errors.NotFound) and not c.undecided


def test_a_decision_refused_because_a_resolve_wrote_an_abort_first_is_unavailable():
    c = coordination()
    prepared(c)
    c.decision_failed(errors.Conflict("element exists"), 0.5)
    c.answered(P1, {"versions": []}, 0.6)
    c.answered(P2, {"versions": []}, 0.6)
    [fail] = c.decision_looked_up(True)
    assert isinstance(fail.error, errors.Unavailable)
    assert str(fail.error) == "the transaction took too long and was aborted; nothing applied"


@pytest.mark.parametrize("error", [errors.Unavailable("no longer primary"), errors.Timeout("no majority")])
def test_a_decision_whose_outcome_is_unknown_is_left_to_the_participants(error):
    c = coordination()
    prepared(c)
    [fail] = c.decision_failed(error, 0.5)
    assert isinstance(fail.error, errors.Timeout)
    assert "may or may not be committed" in str(fail.error)
    assert not c.undecided and c.wake_at is None


def test_an_unexpected_error_of_the_decision_reaches_the_client_as_it_is():
    c = coordination()
    prepared(c)
    bug = KeyError("bug")
    assert c.decision_failed(bug, 0.5) == [Fail(bug)]


def test_a_decision_not_written_by_the_deadline_is_a_timeout_and_its_late_outcome_changes_nothing():
    c = coordination()
    prepared(c)
    [fail] = c.wake(4.0)
    assert isinstance(fail.error, errors.Timeout) and "may or may not be committed" in str(fail.error)
    assert not c.undecided
    assert written(c, 4.5) == [], "no participant is told: they resolve it themselves"
    assert c.decision_failed(errors.Unavailable("late"), 4.5) == []
    assert c.wake(5.0) == []
