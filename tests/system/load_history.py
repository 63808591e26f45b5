"""A load of real clients against real nodes, its history, and the checks of that history.

The load is ``replication_load.py`` in its own process (the Twisted client of
:mod:`nodedb.client`, one client per node). It records every operation with its start, end and
outcome; :func:`check_history` then checks the history together with a final read of every
element it inserted (:func:`read_everything`) and a full scan (:func:`scan_everything`), with
:mod:`nodedb.testing.history`.
"""

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nodedb.ids import IdLayout
from nodedb.testing.history import ABSENT, NotLinearizable, Operation, check_linearizable, lost_writes

from .harness import TIMEOUT, WireClient, WireError, wait_for

LOAD = Path(__file__).with_name("replication_load.py")
RECORD_TYPE = "item"
#: Operations per second of the load, and at most this many at once. Moderate on purpose: two
#: cores run every node and the load, and a starved node misses heartbeats.
RATE = 300
IN_FLIGHT = 48
LAYOUT = IdLayout()


class LoadRun:
    """One ``replication_load.py`` process against *nodes*."""

    def __init__(self, processes, directory, nodes, tag, rate=RATE, in_flight=IN_FLIGHT, seed=1):
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
                rate,
                "--in-flight",
                in_flight,
                "--seed",
                seed,
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


@dataclass
class HistoryCheck:
    """What :func:`check_history` found.

    :ivar lost: acknowledged writes (:class:`Operation`) whose value is not there at the end,
        nor that of any write that may have come after them.
    :ivar violations: everything else that cannot be: an element whose history is not
        linearizable, a version that disagrees with an acknowledgement, an insert applied twice.
    :ivar summary: counts for the output.
    """

    lost: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def problems(self):
        """One text for an assertion message; empty when nothing was found."""
        lost = [f"{len(self.lost)} acknowledged writes lost, e.g. {self.lost[:3]}"] if self.lost else []
        return "; ".join(lost + self.violations[:10])


def check_history(records, final, scanned):
    """Every acknowledged write is there, each element's history (with the final reads) is
    linearizable, versions agree with acknowledgements, and nothing was applied twice.

    :param records: the load's history.
    :param final: ``{id: (doc, version, start, end)}`` read after the run.
    :param scanned: ``{id: doc}`` of every element of the record type, by a full scan.
    :return: a :class:`HistoryCheck`.
    """
    found = HistoryCheck()
    violation = found.violations.append
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
    if len(inserted) != outcomes.get(("insert", True), 0):
        violation("an id was acknowledged for two inserts")

    final_values = {i: doc for i, (doc, _version, _start, _end) in final.items()}
    # A write whose outcome is unknown may take effect at any moment after it started, not
    # only before the client gave up on it (check_linearizable counts it so; lost_writes looks
    # at its end): a request held up in the network can reach a host seconds later. So its end
    # is pushed to infinity for lost_writes. An acknowledged insert not read back is lost too.
    found.lost = lost_writes([_open_ended(op) for op in history], final_values)
    for element_id, (doc, version, start, end) in final.items():
        history.append(Operation(element_id, "read", doc, start, end, True))
        reads.append((element_id, doc, version))
        if doc is not ABSENT and version < newest_acked.get(element_id, 0):
            violation(f"element {element_id} read at version {version}, below its acknowledged {newest_acked[element_id]}")
    by_element = {}
    for op in history:
        by_element.setdefault(op.key, []).append(op)
    for operations in by_element.values():
        try:
            check_linearizable(operations)
        except NotLinearizable as e:
            violation(str(e))
    for element_id, doc, version in reads:
        expected = None if doc is ABSENT else acked_version.get((element_id, doc["c"]))
        if expected is not None and version != expected:
            violation(f"element {element_id} read at c={doc['c']} with version {version}, acknowledged as {expected}")

    # Every element of the record type is one of the load's inserts (acknowledged or of unknown
    # outcome), applied once: each insert's n appears at most once.
    unscanned = sorted(inserted - set(scanned))
    if unscanned:
        violation(f"{len(unscanned)} acknowledged inserts missing from the scan, e.g. {unscanned[:5]}")
    numbers = [doc.get("n") for doc in scanned.values()]
    if len(numbers) != len(set(numbers)):
        violation("an insert was applied twice")
    if len(scanned) > len(inserted) + unknown_inserts:
        violation(f"{len(scanned)} elements scanned, {len(inserted)} acknowledged inserts and {unknown_inserts} unknown")
    for element_id, doc in scanned.items():
        if not doc.get("tag") or not isinstance(doc.get("c"), int):
            violation(f"element {element_id} holds {doc!r}, no write of the load")
        elif element_id in final and doc != final[element_id][0]:
            violation(f"element {element_id} scanned as {doc!r}, read as {final[element_id][0]!r}")
    found.summary = {
        "operations": len(records),
        "acknowledged inserts": len(inserted),
        "acknowledged updates": outcomes.get(("update", True), 0),
        "reads": outcomes.get(("get", True), 0),
        "unknown outcomes": sum(n for (op, ok), n in outcomes.items() if ok is None),
        "refused": sum(n for (op, ok), n in outcomes.items() if ok is False),
        "unknown writes applied after later acknowledged ones": late_unknown_writes(records, final),
    }
    return found


def read_back_and_check(load, records, reader):
    """Read every element *load* inserted back through the node *reader*, scan them all, and
    check *records* (the load's history) against both; the final values are kept beside the
    history for a post-mortem. :return: a :class:`HistoryCheck`."""
    inserted = {r["id"] for r in records if r["op"] == "insert" and r["ok"] is True}
    final = read_everything(reader, inserted)
    with open(load.history_path.with_suffix(".final.json"), "w") as f:
        json.dump({str(i): [doc, version] for i, (doc, version, _s, _e) in final.items()}, f)
    return check_history(records, final, scan_everything(reader))
