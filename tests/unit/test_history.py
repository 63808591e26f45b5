"""The history checker, on hand-made histories that are and are not linearizable."""

import pytest

from nodedb.testing.history import ABSENT, NotLinearizable, Operation, check_linearizable, lost_writes


def w(value, start, end, ok=True, key="k"):
    return Operation(key, "write", value, start, end, ok)


def r(value, start, end, key="k"):
    return Operation(key, "read", value, start, end, True)


def d(start, end, ok=True, key="k"):
    return Operation(key, "delete", None, start, end, ok)


GOOD = {
    "sequential": [w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)],
    "concurrent write, read sees either": [w(1, 0, 10), r(1, 2, 3), r(1, 4, 5)],
    "read before a concurrent write finished sees the old value": [w(1, 0, 1), w(2, 2, 10), r(1, 3, 4), r(2, 5, 6)],
    "a read of nothing before any write": [r(ABSENT, 0, 1), w(1, 2, 3)],
    "delete then absent": [w(1, 0, 1), d(2, 3), r(ABSENT, 4, 5)],
    "an unknown write that took effect later": [w(1, 0, 1), w(2, 2, 3, ok=None), r(1, 4, 5), r(2, 6, 7)],
    "an unknown write that never took effect": [w(1, 0, 1), w(2, 2, 3, ok=None), r(1, 4, 5), r(1, 6, 7)],
    "an unknown write never read, then another write": [w(1, 0, 1), w(2, 2, 3, ok=None), w(3, 4, 5), r(3, 6, 7)],
    "an unknown delete that took effect later": [w(1, 0, 1), d(2, 3, ok=None), r(1, 4, 5), r(ABSENT, 6, 7)],
    "a failed write is ignored": [w(1, 0, 1), w(2, 2, 3, ok=False), r(1, 4, 5)],
    "overlapping writes in either order": [w(1, 0, 5), w(2, 1, 6), r(1, 7, 8)],
}

BAD = {
    "stale read after a completed write": [w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)],
    "a value nobody wrote": [w(1, 0, 1), r(3, 2, 3)],
    "reads go back in time": [w(1, 0, 1), w(2, 2, 10), r(2, 3, 4), r(1, 5, 6)],
    "read of a deleted element": [w(1, 0, 1), d(2, 3), r(1, 4, 5)],
    "a lost acknowledged write": [w(1, 0, 1), r(ABSENT, 2, 3)],
    "a failed write seen": [w(1, 0, 1), w(2, 2, 3, ok=False), r(2, 4, 5)],
    "an unknown write seen before it started": [w(1, 0, 1), r(2, 2, 3), w(2, 4, 5, ok=None)],
    "an unknown write seen, then an older value": [w(1, 0, 1), w(2, 2, 3, ok=None), r(2, 4, 5), r(1, 6, 7)],
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_linearizable_histories_pass(name):
    check_linearizable(GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_broken_histories_are_caught(name):
    with pytest.raises(NotLinearizable):
        check_linearizable(BAD[name])


def test_elements_are_checked_separately_and_the_bad_one_is_named():
    history = [w(1, 0, 1, key="a"), r(1, 2, 3, key="a"), w(1, 0, 1, key="b"), w(2, 2, 3, key="b"), r(1, 4, 5, key="b")]
    with pytest.raises(NotLinearizable) as error:
        check_linearizable(history)
    assert error.value.key == "b"


def test_lost_writes_are_the_acknowledged_ones_not_at_the_end():
    history = [
        w("a1", 0, 1, key="a"),
        w("b1", 0, 1, key="b"),
        w("b2", 2, 3, key="b"),
        w("c1", 0, 1, key="c"),
        w("c2", 2, 3, ok=None, key="c"),
        w("e1", 0, 1, key="e"),
        d(2, 3, key="e"),
    ]
    final = {"a": "a1", "b": "b1", "c": "c2"}  # b lost its later write; e was deleted
    lost = lost_writes(history, final)
    assert [(op.key, op.value) for op in lost] == [("b", "b2")]


def test_a_write_of_unknown_outcome_may_land_after_later_acknowledged_ones():
    # c2 timed out; it may still have been applied after c3 (a request held up on its way).
    history = [w("c0", 0, 1, key="c"), w("c1", 2, 3, key="c"), w("c2", 3.1, 8, ok=None, key="c"), w("c3", 8.3, 8.4, key="c")]
    assert lost_writes(history, {"c": "c2"}) == []
    assert [op.value for op in lost_writes(history, {"c": "c1"})] == ["c3"]


def test_a_long_history_is_checked_quickly():
    history = []
    for n in range(200):
        history.append(w(n, 2 * n, 2 * n + 3))  # each write overlaps the next
        history.append(r(n, 2 * n + 3.5, 2 * n + 3.6))
    check_linearizable(history)


def test_many_unknown_writes_to_one_element_are_checked_quickly():
    # A host that hangs leaves dozens of writes of unknown outcome on one element; those whose
    # value nobody read do not multiply the orders searched.
    history = [w(0, 0, 1)]
    for n in range(1, 60):
        history.append(w(n, 2 * n, 2 * n + 1, ok=None))
    history += [r(0, 200, 201), w("last", 202, 203), r("last", 204, 205)]
    check_linearizable(history)
    with pytest.raises(NotLinearizable):
        check_linearizable(history + [r(0, 206, 207)])
