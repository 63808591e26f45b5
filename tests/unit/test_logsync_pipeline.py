"""The window of append messages to one follower host (nodedb.logsync.pipeline.Link)."""

from nodedb.logsync.pipeline import Link

WINDOW, BATCH = 4, 64


def never():
    raise AssertionError("the backlog needs not be counted")


def test_a_new_link_probes_every_partition_at_once():
    link = Link("b")
    assert link.due(WINDOW, BATCH, never)
    assert link.partitions() is None  # all of them


def test_nothing_is_due_once_idle_until_something_is_wanted_or_a_heartbeat():
    link = Link("b")
    link.idle()
    assert not link.due(WINDOW, BATCH, never)
    link.want(3)
    assert link.due(WINDOW, BATCH, never)  # nothing on its way: at once
    assert link.partitions() == [3]
    link.idle()
    link.heartbeat()
    assert link.due(WINDOW, BATCH, never) and link.partitions() is None


def test_sending_numbers_messages_and_keeps_what_it_did_not_carry():
    link = Link("b")
    link.want(1, urgent=True)
    link.want(2, urgent=True)
    link.want(5)
    assert link.sending([1, 5]) == 1
    assert (link.force, link.wanted, link.urgent, link.in_flight) == (False, {2}, {2}, 1)
    assert link.sending([2]) == 2
    assert (link.wanted, link.urgent, link.in_flight, link.sequence) == (set(), set(), 2, 2)
    link.answered()
    assert link.in_flight == 1


def test_while_a_message_is_on_its_way_new_entries_wait_for_a_full_batch():
    link = Link("b")
    link.want(0)
    link.sending([0])
    link.want(0)
    assert not link.due(WINDOW, BATCH, lambda: BATCH - 1)
    assert link.due(WINDOW, BATCH, lambda: BATCH)


def test_urgent_partitions_and_heartbeats_do_not_wait_for_a_batch():
    link = Link("b")
    link.sending([])
    link.want(0, urgent=True)
    assert link.due(WINDOW, BATCH, never)
    link.sending([0])
    link.heartbeat()
    assert link.due(WINDOW, BATCH, never)


def test_a_full_window_sends_nothing_until_an_answer():
    link = Link("b")
    for _ in range(WINDOW):
        link.sending([])
    link.want(0, urgent=True)
    link.heartbeat()
    assert not link.due(WINDOW, BATCH, never)
    link.answered()
    assert link.due(WINDOW, BATCH, never)
