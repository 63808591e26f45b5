"""Voting with real processes: five nodes on loopback elect, lose their leader to kill -9,
elect another, accept a newcomer, take the old leader back, and drop a host gone too long."""

import time

import pytest

from .harness import wait_for

pytestmark = pytest.mark.system

REMOVE_AFTER = 12


def voting(node):
    return node.admin_status()["voting"]


def agreed_leader(nodes):
    """The leader every node names, with the same term (None until they agree)."""
    views = [voting(n) for n in nodes]
    leaders = {(v["leader"], v["term"]) for v in views}
    if len(leaders) == 1:
        leader, _term = leaders.pop()
        return leader
    return None


def test_five_nodes_elect_fail_over_accept_and_remove(processes):
    args = ["--remove-after", str(REMOVE_AFTER)]
    first = processes.start_node("n0", args=args)
    nodes = [first] + [processes.start_node(f"n{i}", args=[*args, "--seed", first.address]) for i in range(1, 5)]
    by_id = {n.host_id: n for n in nodes}

    def settled(group, voters):
        views = [voting(n) for n in group]
        return (
            agreed_leader(group) is not None
            and all(len(v["voters"]) == voters and set(v["members"]) == {n.host_id for n in group} for v in views)
        )

    wait_for(lambda: settled(nodes, 5), timeout=60, what="five members, five voters, one leader")
    # Every partition has one primary, and the first host leads some of them (primaries are
    # spread over the hosts by then, or being spread).
    status = first.admin_status()
    holdings = status["voting"]["holdings"]
    assert sum(h["primary"] for h in holdings.values()) == 64
    assert status["host"]["status"] == "write" and len(status["host"]["ranges"]) == holdings[first.host_id]["primary"]

    leader = by_id[agreed_leader(nodes)]
    term = voting(leader)["term"]
    leader.kill()
    survivors = [n for n in nodes if n is not leader]
    started = time.monotonic()
    new_leader = wait_for(
        lambda: (agreed_leader(survivors) not in (None, leader.host_id)) and agreed_leader(survivors),
        timeout=30,
        what="a new leader after kill -9",
    )
    elected_in = time.monotonic() - started
    assert voting(by_id[new_leader])["term"] > term
    print(f"\nnew leader elected {elected_in:.2f} s after kill -9")

    newcomer = processes.start_node("n5", args=[*args, "--seed", survivors[0].address])
    wait_for(
        lambda: all(newcomer.host_id in voting(n)["members"] for n in survivors),
        timeout=30,
        what="the newcomer accepted while the old leader is down",
    )
    leader.start()  # the old leader comes back and catches up
    group = [*survivors, newcomer, leader]
    wait_for(
        lambda: agreed_leader(group) is not None and all(newcomer.host_id in voting(n)["members"] for n in group),
        timeout=30,
        what="the old leader to catch up",
    )

    gone = survivors[-1]
    if by_id.get(agreed_leader(group)) is gone:
        gone = survivors[-2]
    gone.kill()
    rest = [n for n in group if n is not gone]
    wait_for(
        lambda: all(gone.host_id not in voting(n)["members"] and gone.host_id not in voting(n)["holdings"] for n in rest),
        timeout=REMOVE_AFTER + 40,
        what="the host gone past --remove-after to lose its place and ranges",
    )
    holdings = voting(rest[0])["holdings"]
    assert sum(h["primary"] for h in holdings.values()) == 64
    for node in rest:
        assert not [line for line in node.problems() if "Traceback" in line], node.describe()
