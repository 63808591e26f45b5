"""Replication with real processes: a steady load of inserts, updates and linearizable gets
while a host that leads partitions is killed (kill -9), frozen (SIGSTOP) or cut off from the
network; writes to its partitions resume on new primaries within seconds, nothing
acknowledged is lost, every element's history is linearizable, and replication heals by
itself once the host is back (DESIGN sections 3, 4.4 and 5).

The load and the checks of its history are :mod:`.load_history`; the cut-off is
:mod:`.netcut` (policy routing in a private network namespace).
"""

import signal
import time

import pytest

from .harness import TIMEOUT, wait_for
from .load_history import LoadRun, read_back_and_check
from .netcut import VICTIM_UID, VictimNode, private_network_or_reason
from .replicated import assert_stepped_down, failed_over, led_by, primaries_of, start_cluster, status, wait_replicated

pytestmark = pytest.mark.system

#: Acknowledged writes wanted before the fault, and after each step that follows it.
WRITES_BEFORE = 600
WRITES_AFTER = 300
#: Longest acceptable time from the fault to the first acknowledged write, started after it, to
#: a partition the victim led: failure detection (about 3 s), failover_after (1 s), a Voting
#: election if the victim led Voting too, the fencing round, and room for a loaded machine.
RESUME_WITHIN = 20.0
#: A freeze or a cut lasts at least this long (writes started this long after it began must be
#: acknowledged before it ends): well past failure detection and failover.
HOLD = 8.0


def verify(load, nodes, reader):
    """Stop *load*, wait until replication is complete and caught up, and check its history
    through *reader*. :return: the summary and the time replication took to catch up."""
    records = load.stop()
    catch_up = wait_replicated(nodes, caught_up=True, what="every replica to catch up after the load")
    found = read_back_and_check(load, records, reader)
    assert not found.problems(), found.problems()
    summary = found.summary
    assert summary["acknowledged updates"] > 0 and summary["reads"] > 0, summary
    for node in nodes:
        tracebacks = [line for line in node.problems() if "Traceback" in line]
        assert not tracebacks, node.describe()
    return summary, catch_up


def report(title, figures):
    print(f"\n{title}: " + ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


def wait_failed_over(load, victim, led, survivors, since, what):
    """Wait for a write to *victim*'s partitions, then for a new primary of each, counting
    from *since*; :return: ``(time of that write, seconds until every one failed over)``."""
    resumed = load.wait_writes(1, since=since, partitions=led, timeout=RESUME_WITHIN, what=f"a write to {what}")
    wait_for(lambda: failed_over(survivors, victim), what="a new primary for every partition", interval=0.2)
    return resumed, time.monotonic() - since


def busiest_primary(nodes):
    """``(the node leading the most partitions, the partitions it leads, the others)``."""
    counts = primaries_of(nodes)
    victim = max(nodes, key=lambda n: counts.get(n.host_id, 0))
    assert counts[victim.host_id] > 0, counts
    return victim, led_by(victim), [n for n in nodes if n is not victim]


# -- the tests ----------------------------------------------------------------------------------


def test_kill_9_the_primary_under_load_then_restart_it(processes, tmp_path):
    nodes = start_cluster(processes, 3)
    wait_replicated(nodes, caught_up=True, timeout=60, what="three replicas of every partition")
    load = LoadRun(processes, tmp_path, nodes, "kill")
    load.wait_writes(WRITES_BEFORE, what="the load to get going")

    victim, led_before, survivors = busiest_primary(nodes)
    killed_at = time.monotonic()
    victim.kill()
    resumed, failover = wait_failed_over(
        load, victim, led_before, survivors, killed_at, "the victim's partitions after kill -9"
    )
    load.wait_writes(WRITES_AFTER, since=killed_at, what="writes to go on without the victim")

    restarted_at = time.monotonic()
    victim.start()
    load.wait_writes(WRITES_AFTER, since=restarted_at, what="writes while the victim catches up")
    rejoined = wait_replicated(nodes, what="the restarted host to catch up under load")
    summary, catch_up = verify(load, nodes, reader=victim)
    report(
        "kill -9",
        {"first write to its partitions after the kill": resumed - killed_at, "all partitions failed over": failover,
         "restarted host in sync under load": rejoined, "caught up after the load": catch_up, **summary},
    )


def test_sigstop_a_primary_longer_than_the_failure_threshold(processes, tmp_path):
    nodes = start_cluster(processes, 5)
    wait_replicated(nodes, caught_up=True, timeout=90, what="five members, five voters, three replicas a partition")
    load = LoadRun(processes, tmp_path, nodes, "stop")
    load.wait_writes(WRITES_BEFORE, what="the load to get going")

    victim, led_before, survivors = busiest_primary(nodes)
    stopped_at = time.monotonic()
    victim.signal(signal.SIGSTOP)
    try:
        # Frozen past detection and failover: every partition it led has a new primary.
        resumed, failover = wait_failed_over(load, victim, led_before, survivors, stopped_at, "the frozen host's partitions")
        load.wait_writes(WRITES_AFTER, since=stopped_at, what="writes to go on while the primary is frozen")
        load.wait_writes(100, since=stopped_at + HOLD, timeout=HOLD + TIMEOUT, what=f"writes {HOLD:.0f} s into the freeze")
    finally:
        victim.signal(signal.SIGCONT)
    frozen = time.monotonic() - stopped_at

    continued_at = time.monotonic()
    load.wait_writes(WRITES_AFTER, since=continued_at, what="writes after SIGCONT")
    rejoined = wait_replicated(nodes, what="the woken host to step down and catch up under load")
    summary, catch_up = verify(load, nodes, reader=victim)
    report(
        "SIGSTOP",
        {"frozen for": frozen, "first write to its partitions after SIGSTOP": resumed - stopped_at, "all partitions failed over": failover,
         "woken host in sync under load": rejoined, "caught up after the load": catch_up, **summary},
    )
    # The frozen primary woke up believing it led: it stepped down (it may lead again since,
    # in a newer epoch, if partitions were moved back to it for balance).
    assert_stepped_down(victim, led_before)



def test_cut_off_the_primary_under_load_then_heal(processes, tmp_path):
    network, reason = private_network_or_reason()
    try:
        if network is not None:
            victim = VictimNode(processes, processes.directory / "n0", "n0", uid=VICTIM_UID)
            processes.nodes.append(victim)
        else:
            victim = processes.node("n0")
        nodes = start_cluster(processes, 3, first=victim)
        wait_replicated(nodes, caught_up=True, timeout=60, what="three replicas of every partition")
        load = LoadRun(processes, tmp_path, nodes, "cut")
        load.wait_writes(WRITES_BEFORE, what="the load to get going")

        counts = primaries_of(nodes)
        assert counts[victim.host_id] > 0, counts
        led_before = led_by(victim)
        survivors = [n for n in nodes if n is not victim]
        cut_at = time.monotonic()
        if network is not None:
            network.cut(victim.host, VICTIM_UID)
        else:
            victim.signal(signal.SIGSTOP)
        try:
            resumed, failover = wait_failed_over(
                load, victim, led_before, survivors, cut_at, "the cut-off host's partitions"
            )
            load.wait_writes(WRITES_AFTER, since=cut_at, what="writes to go on while the primary is cut off")
            load.wait_writes(100, since=cut_at + HOLD, timeout=HOLD + TIMEOUT, what=f"writes {HOLD:.0f} s into the cut")
            if network is not None:
                assert victim.running, "the cut-off victim exited\n" + victim.describe()
                with pytest.raises(OSError):
                    status(victim, timeout=1.0)
        finally:
            if network is not None:
                network.heal()
            else:
                victim.signal(signal.SIGCONT)
        cut_for = time.monotonic() - cut_at

        healed_at = time.monotonic()
        load.wait_writes(WRITES_AFTER, since=healed_at, what="writes after healing")
        rejoined = wait_replicated(nodes, what="the cut-off host to step down and catch up under load")
        summary, catch_up = verify(load, nodes, reader=victim)
        report(
            "cut off" if network is not None else f"cut off (SIGSTOP stand-in: {reason})",
            {"cut for": cut_for, "first write to its partitions after the cut": resumed - cut_at, "all partitions failed over": failover,
             "healed host in sync under load": rejoined, "caught up after the load": catch_up, **summary},
        )
        # The old primary kept running alone: it stepped down rather than going on leading.
        assert victim.running
        assert_stepped_down(victim, led_before)
    finally:
        if network is not None:
            # The thread goes back; the namespace lives on with its processes until the
            # fixture kills them (after the failure report has read their logs).
            network.__exit__(None, None, None)
