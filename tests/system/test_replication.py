"""Replication with real processes: a steady load of inserts, updates and linearizable gets
while a host that leads partitions is killed (kill -9), frozen (SIGSTOP) or cut off from the
network; writes to its partitions resume on new primaries within seconds, nothing
acknowledged is lost, every element's history is linearizable, and replication heals by
itself once the host is back (DESIGN sections 3, 4.4 and 5).

The load is ``replication_load.py`` in its own process. It records every operation with its
start, end and outcome; :mod:`nodedb.testing.history` then checks the history together with
a final read of every element it inserted.
"""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodedb.ids import IdLayout
from nodedb.testing.history import ABSENT, Operation, check_linearizable, lost_writes

from .harness import TIMEOUT, NodeProcess, WireClient, WireError, child_env, wait_for
from .replicated import assert_stepped_down, failed_over, led_by, primaries_of, start_cluster, status, wait_replicated

pytestmark = pytest.mark.system

LOAD = Path(__file__).with_name("replication_load.py")
RECORD_TYPE = "item"
#: Operations per second of the load, and at most this many at once. Moderate on purpose: two
#: cores run every node and the load, and a starved node misses heartbeats.
RATE = 300
IN_FLIGHT = 48
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
LAYOUT = IdLayout()


# -- the cluster --------------------------------------------------------------------------------


# -- the load and its history -------------------------------------------------------------------


class LoadRun:
    """One ``replication_load.py`` process against *nodes*."""

    def __init__(self, processes, directory, nodes, tag):
        self.history_path = Path(directory) / f"history-{tag}.jsonl"
        self.stop_path = Path(directory) / f"stop-{tag}"
        self.output_path = Path(directory) / f"load-{tag}.out"
        self.tag = tag
        self._offset = 0
        self._records = []
        self.process = processes.spawn(
            [
                sys.executable,
                LOAD,
                "--connect",
                ",".join(node.address for node in nodes),
                "--out",
                self.history_path,
                "--tag",
                tag,
                "--type",
                RECORD_TYPE,
                "--rate",
                RATE,
                "--in-flight",
                IN_FLIGHT,
                "--stop-file",
                self.stop_path,
                "--duration",
                240,
            ],
            self.output_path,
        )

    def records(self):
        """The operations finished so far (whole lines only), read incrementally."""
        try:
            with open(self.history_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._records
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            self._records.append(json.loads(line))
        self._offset += end
        return self._records

    def describe(self):
        try:
            return self.output_path.read_text()[-3000:]
        except FileNotFoundError:
            return ""

    def acknowledged_writes(self, since=0.0, partitions=None):
        """Acknowledged inserts and updates that started after *since* (monotonic time), of
        elements in *partitions* (None: any)."""
        if self.process.poll() is not None:
            raise AssertionError(f"the load stopped early (status {self.process.returncode}):\n{self.describe()}")
        return [
            r
            for r in self.records()
            if r.get("op") in ("insert", "update")
            and r["ok"] is True
            and r["start"] > since
            and (partitions is None or LAYOUT.partition_of(r["id"]) in partitions)
        ]

    def wait_writes(self, count, since=0.0, partitions=None, timeout=TIMEOUT, what=None):
        """Wait for *count* acknowledged writes started after *since* (in *partitions*);
        :return: the earliest end time among them."""

        def enough():
            acknowledged = self.acknowledged_writes(since, partitions)
            return acknowledged if len(acknowledged) >= count else None

        found = wait_for(enough, timeout=timeout, what=what or f"{count} acknowledged writes", interval=0.05)
        return min(r["end"] for r in found)

    def stop(self):
        """Stop issuing, wait for what is in flight; :return: every record."""
        self.stop_path.touch()
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the load did not stop:\n{self.describe()}") from None
        assert code == 0, f"the load exited with {code}:\n{self.describe()}"
        records = list(self.records())
        assert records and records[-1].get("done"), "the history has no final line"
        assert not [r for r in records if r.get("op") == "crash"], [r for r in records if r.get("op") == "crash"][:1]
        return records[:-1]


def read_everything(node, ids):
    """``{id: (doc, version, start, end)}``: a linearizable get of each of *ids* through *node*
    (doc ABSENT for NotFound), pipelined in slices; start and end bracket each slice. A get
    answered Unavailable (a partition changing primary: nothing was read) is asked again, as
    the client library would."""
    found = {}
    left = sorted(ids)
    with WireClient(node.address) as client:

        def read_round():
            unavailable = []
            for first in range(0, len(left), 500):
                chunk = left[first : first + 500]
                start = time.monotonic()
                request_ids = {client.request("get", type=RECORD_TYPE, key=i): i for i in chunk}
                replies = {}
                while len(replies) < len(chunk):
                    reply = client.receive()
                    replies[request_ids[reply["id"]]] = reply
                end = time.monotonic()
                for element_id, reply in replies.items():
                    if "ok" in reply:
                        doc, version = reply["ok"]
                        found[element_id] = (doc, version, start, end)
                    elif reply["error"]["type"] == "NotFound":
                        found[element_id] = (ABSENT, None, start, end)
                    else:
                        assert reply["error"]["type"] == "Unavailable", (element_id, reply)
                        unavailable.append(element_id)
            left[:] = unavailable
            return not left

        wait_for(read_round, what="a final read of every element", interval=0.1)
    return found


def scan_everything(node):
    """``{id: doc}`` of every element of the record type, by a scan through *node* (started
    again if a partition is changing primary)."""

    def scan():
        with WireClient(node.address) as client:
            try:
                return {element_id: doc for element_id, doc, _version in client.scan_all(RECORD_TYPE)}
            except WireError as e:
                if e.type == "Unavailable":
                    return None
                raise

    return wait_for(scan, what="a full scan", interval=0.1)


def _open_ended(op):
    return Operation(op.key, op.kind, op.value, op.start, float("inf"), op.ok) if op.ok is None else op


def late_unknown_writes(records, final):
    """Elements whose final value is that of a write of unknown outcome that started before an
    acknowledged write of the same element had ended: it took effect late (it is allowed)."""
    late = 0
    acknowledged_ends = {}
    for r in records:
        if r["op"] == "update" and r["ok"] is True:
            acknowledged_ends.setdefault(r["id"], []).append((r["doc"]["c"], r["end"]))
    unknown = {(r["id"], r["doc"]["c"]): r["start"] for r in records if r["op"] == "update" and r["ok"] is None}
    for element_id, (doc, _version, _start, _end) in final.items():
        started = unknown.get((element_id, doc["c"])) if doc is not ABSENT else None
        if started is not None and any(c > doc["c"] for c, _ in acknowledged_ends.get(element_id, [])):
            late += 1
    return late


def check_history(records, final, scanned):
    """Every acknowledged write is there, each element's history (with the final reads) is
    linearizable, versions agree with acknowledgements, and nothing was applied twice.

    :param records: the load's history.
    :param final: ``{id: (doc, version, start, end)}`` read after the run.
    :param scanned: ``{id: doc}`` of every element of the record type, by a full scan.
    :return: a summary for the test output.
    """
    history = []
    acked_version = {}  # (id, c) -> the version its update was acknowledged with
    newest_acked = {}  # id -> highest acknowledged version
    reads = []  # (id, doc, version) of every successful read
    inserted = set()
    unknown_inserts = 0
    outcomes = {}
    for r in records:
        outcomes[(r["op"], r["ok"])] = outcomes.get((r["op"], r["ok"]), 0) + 1
        if r["op"] == "insert":
            if r["ok"] is True:
                inserted.add(r["id"])
                history.append(Operation(r["id"], "write", r["doc"], r["start"], r["end"], True))
            elif r["ok"] is None:
                unknown_inserts += 1
        elif r["op"] == "update":
            history.append(Operation(r["id"], "write", r["doc"], r["start"], r["end"], r["ok"]))
            if r["ok"] is True:
                acked_version[(r["id"], r["doc"]["c"])] = r["version"]
                newest_acked[r["id"]] = max(newest_acked.get(r["id"], 0), r["version"])
        elif r["op"] == "get" and r["ok"] is True:
            doc = ABSENT if r["error"] == "NotFound" else r["doc"]
            history.append(Operation(r["id"], "read", doc, r["start"], r["end"], True))
            reads.append((r["id"], doc, r["version"]))
    assert len(inserted) == outcomes.get(("insert", True), 0), "an id was acknowledged for two inserts"

    missing = sorted(set(inserted) - set(final))
    assert not missing, f"{len(missing)} acknowledged inserts were not read back, e.g. {missing[:5]}"
    final_values = {i: doc for i, (doc, _version, _start, _end) in final.items()}
    # A write whose outcome is unknown may take effect at any moment after it started, not
    # only before the client gave up on it (check_linearizable counts it so; lost_writes looks
    # at its end): a request held up in the network can reach a host seconds later. So its end
    # is pushed to infinity for lost_writes.
    lost = lost_writes([_open_ended(op) for op in history], final_values)
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}; now {[final_values.get(o.key) for o in lost[:3]]}"
    for element_id, (doc, version, start, end) in final.items():
        history.append(Operation(element_id, "read", doc, start, end, True))
        reads.append((element_id, doc, version))
        assert doc is not ABSENT, f"element {element_id} is gone"
        assert version >= newest_acked.get(element_id, 0), (element_id, version, newest_acked.get(element_id))
    check_linearizable(history)
    for element_id, doc, version in reads:
        if doc is ABSENT:
            continue
        expected = acked_version.get((element_id, doc["c"]))
        assert expected is None or version == expected, (
            f"element {element_id} read at c={doc['c']} with version {version}, acknowledged as {expected}"
        )

    # Every element of the record type is one of the load's inserts (acknowledged or of unknown
    # outcome), applied once: each insert's n appears at most once.
    assert inserted <= set(scanned), sorted(inserted - set(scanned))[:5]
    numbers = [doc["n"] for doc in scanned.values()]
    assert len(numbers) == len(set(numbers)), "an insert was applied twice"
    assert len(scanned) <= len(inserted) + unknown_inserts, (len(scanned), len(inserted), unknown_inserts)
    for element_id, doc in scanned.items():
        assert doc["tag"] and isinstance(doc["c"], int), (element_id, doc)
        if element_id in final:
            assert doc == final[element_id][0], (element_id, doc, final[element_id][0])
    return {
        "operations": len(records),
        "acknowledged inserts": len(inserted),
        "acknowledged updates": outcomes.get(("update", True), 0),
        "reads": outcomes.get(("get", True), 0),
        "unknown outcomes": sum(n for (op, ok), n in outcomes.items() if ok is None),
        "refused": sum(n for (op, ok), n in outcomes.items() if ok is False),
        "unknown writes applied after later acknowledged ones": late_unknown_writes(records, final),
    }


def verify(load, nodes, reader):
    """Stop *load*, wait until replication is complete and caught up, and check its history
    through *reader*. :return: the summary and the time replication took to catch up."""
    records = load.stop()
    catch_up = wait_replicated(nodes, caught_up=True, what="every replica to catch up after the load")
    inserted = {r["id"] for r in records if r["op"] == "insert" and r["ok"] is True}
    final = read_everything(reader, inserted)
    with open(load.history_path.with_suffix(".final.json"), "w") as f:  # for a post-mortem
        json.dump({str(i): [doc, version] for i, (doc, version, _s, _e) in final.items()}, f)
    scanned = scan_everything(reader)
    summary = check_history(records, final, scanned)
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


# -- cutting a host off -------------------------------------------------------------------------
#
# Nodes connect to their peers without choosing a source address, so on loopback every
# outgoing connection leaves from 127.0.0.1: a rule on the victim's address alone (iptables
# -s/-d 127.0.0.X) would stop the connections others open to it but not those it opens
# itself. So the cut is made with policy routing in a private network namespace:
#
# - the test thread (and so every process it starts) moves to a new network namespace,
#   where nothing else runs, and brings its loopback up;
# - Linux looks up the ``local`` table first (rule 0), before any rule one could add, so it
#   is moved behind (pref 100);
# - the victim runs under its own uid (setpriv, keeping only the file-access capabilities it
#   needs as a non-root process), and the cut is two rules: ``uidrange UID blackhole`` (every
#   packet the victim sends: replies on accepted connections and its own connections) and
#   ``to 127.0.0.X blackhole`` (every packet sent to it). Sockets keep working once the
#   rules go.
#
# It needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` and ``setpriv``. Without them the
# test uses SIGSTOP as a stand-in for the cut (and says so in its output): the victim is then
# unreachable the same way, but frozen rather than running on alone.

CLONE_NEWNET = 0x40000000
VICTIM_UID = 47_011
_CAPABILITIES = "+dac_override,+dac_read_search"


class PrivateNetwork:
    """The calling thread, and every process it starts, in a new network namespace."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = None
        self.cuts = []

    def __enter__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        if self.libc.unshare(CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            os.close(self.home)
            raise OSError(error, f"unshare(CLONE_NEWNET): {os.strerror(error)}")
        try:
            self.ip("link", "set", "lo", "up")
            self.ip("rule", "add", "pref", "100", "lookup", "local")
            self.ip("rule", "del", "pref", "0", "lookup", "local")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.libc.setns(self.home, CLONE_NEWNET) != 0:  # pragma: no cover
            raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
        os.close(self.home)

    @staticmethod
    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)

    def cut(self, address, uid):
        self.cuts = [("to", address), ("uidrange", f"{uid}-{uid}")]
        for selector, value in self.cuts:
            self.ip("rule", "add", "pref", "10", selector, value, "blackhole")

    def heal(self):
        for selector, value in self.cuts:
            self.ip("rule", "del", "pref", "10", selector, value, "blackhole")
        self.cuts = []


class VictimNode(NodeProcess):
    """A node that runs as *uid* (with the capabilities that let it read and write as root
    did), so that routing rules can pick out its packets."""

    def __init__(self, *args, uid, **kwargs):
        super().__init__(*args, **kwargs)
        self.uid = uid

    @staticmethod
    def wrap(command, uid):
        return [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            f"--inh-caps={_CAPABILITIES}",
            f"--ambient-caps={_CAPABILITIES}",
            *command,
        ]

    def command(self, *extra):
        return self.wrap(super().command(*extra), self.uid)


def private_network_or_reason():
    """A :class:`PrivateNetwork` entered, in which a uid's packets can be dropped and a
    process can run as that uid; or None and the reason none can be made here."""
    if os.geteuid() != 0:
        return None, "not root"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return None, f"no {tool}"
    try:
        network = PrivateNetwork()
        network.__enter__()
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"no private network namespace: {e}"
    try:
        network.cut("127.0.0.255", VICTIM_UID)  # rules of both kinds can be made
        network.heal()
        probe = VictimNode.wrap([sys.executable, "-c", "import nodedb"], VICTIM_UID)
        subprocess.run(probe, check=True, capture_output=True, timeout=60, env=child_env())
    except (OSError, subprocess.SubprocessError) as e:
        network.__exit__(None, None, None)
        return None, f"cannot cut one process off: {e}"
    return network, None


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
