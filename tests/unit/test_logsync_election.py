"""Failover elections (nodedb.logsync.election): whom to ask, and whom the answers choose."""

from nodedb.logsync.election import promise_requests, tally


def test_one_promise_call_per_host_in_host_order_without_the_skipped():
    requests = {0: (2, ("a", "b", "c")), 5: (7, ("c", "d"))}
    assert promise_requests(requests) == [
        ("a", [[0, 2]]),
        ("b", [[0, 2]]),
        ("c", [[0, 2], [5, 7]]),
        ("d", [[5, 7]]),
    ]
    assert [host for host, _parts in promise_requests(requests, skip={"b", "d"})] == ["a", "c"]


def replies(requests, answers, skip=()):
    """The calls of an election with *answers*: ``{host: reply}``; a host missing from it
    failed to answer."""
    return [(host, parts, answers.get(host)) for host, parts in promise_requests(requests, skip)]


def test_the_most_complete_of_a_majority_is_chosen():
    requests = {0: (2, ("a", "b", "c"))}
    answers = {"a": {"parts": [[True, 1, 5, False]]}, "b": {"parts": [[True, 1, 7, False]]}}
    assert tally(replies(requests, answers), requests, {}) == {0: "b"}


def test_too_few_promises_choose_nobody():
    requests = {0: (2, ("a", "b", "c"))}
    answers = {"a": {"parts": [[True, 1, 5, False]]}, "b": {"parts": [[False, 0, 0, False]]}}
    assert tally(replies(requests, answers), requests, {}) == {}


def test_malformed_replies_and_answers_count_for_nothing():
    requests = {0: (2, ("a", "b", "c"))}
    answers = {
        "a": {"parts": [[True, 1, 5, False]]},
        "b": {"parts": [[1, 1, 9, False]]},  # accepted must be True itself
        "c": {"parts": "all of them"},
    }
    assert tally(replies(requests, answers), requests, {}) == {}
    answers["c"] = ["not", "a", "map"]
    assert tally(replies(requests, answers), requests, {}) == {}
    answers["c"] = {"parts": [[True, 1, 2]]}  # too short
    assert tally(replies(requests, answers), requests, {}) == {}


def test_several_partitions_are_tallied_apart_and_prefer_breaks_ties():
    requests = {0: (2, ("a", "b", "c")), 1: (4, ("b", "c"))}
    answers = {
        "a": {"parts": [[True, 1, 5, False]]},
        "b": {"parts": [[True, 1, 5, False], [True, 3, 8, False]]},
        "c": {"parts": [[True, 1, 5, False], [True, 3, 9, True]]},
    }
    assert tally(replies(requests, answers), requests, {0: "c"}) == {0: "c", 1: "b"}


def test_a_majority_of_syncing_copies_chooses_nobody():
    requests = {0: (2, ("a", "b", "c"))}
    answers = {"a": {"parts": [[True, 1, 5, True]]}, "b": {"parts": [[True, 1, 7, True]]}}
    assert tally(replies(requests, answers), requests, {}) == {}
