"""kill -9 in the middle of a stream of inserts, then a restart on the same data directory: every
acknowledged insert is there, and no id is ever handed out twice (DESIGN sections 3 and 4.1)."""

import sys
from pathlib import Path

import pytest

from nodedb.ids import IdLayout

from .harness import TIMEOUT, wait_for

pytestmark = pytest.mark.system

STREAM = Path(__file__).with_name("insert_stream.py")
RECORD_TYPE = "item"
IN_FLIGHT = 200
#: Kill the node once the stream has this many acknowledgements: a few different moments.
KILL_AFTER = (150, 2500, 1, 6000, 1100)
#: Failures a client may see when its node dies under it.
EXPECTED_FAILURES = {"Unavailable", "Timeout"}


def document(tag, n):
    """The document insert_stream.py inserts as number *n* of stream *tag*."""
    return {"tag": tag, "n": n, "pad": "x" * (n % 97)}


def read_acknowledgements(path):
    """``([(id, n), ...], failure_line)`` from an insert_stream.py output file."""
    acknowledged, failures = [], None
    for line in Path(path).read_text().splitlines():
        if line.startswith("# failed "):
            failures = line
        elif line:
            element_id, n = line.split()
            acknowledged.append((int(element_id), int(n)))
    return acknowledged, failures


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def highest_per_partition(ids, layout):
    highest = {}
    for element_id in ids:
        partition = layout.partition_of(element_id)
        highest[partition] = max(highest.get(partition, 0), element_id)
    return highest


def test_kill_9_during_inserts_then_restart(processes, tmp_path):
    layout = IdLayout()
    node = processes.start_node("crashy", admin=False)
    everything_acknowledged = {}  # id -> document, over every round
    for round_number, kill_after in enumerate(KILL_AFTER):
        tag = f"round-{round_number}"
        with node.client() as client:
            before = {element_id: doc for element_id, doc, _version in client.scan_all(RECORD_TYPE)}
        highest_before = highest_per_partition(before, layout)

        acks_path = tmp_path / f"acks-{round_number}.txt"
        stream = processes.spawn(
            [sys.executable, STREAM, node.address, acks_path, RECORD_TYPE, tag, IN_FLIGHT],
            tmp_path / f"stream-{round_number}.out",
        )

        def enough():
            if stream.poll() is not None:
                raise AssertionError(f"the insert stream ended early:\n{(tmp_path / f'stream-{round_number}.out').read_text()}")
            return count_lines(acks_path) >= kill_after

        wait_for(enough, what=f"{kill_after} acknowledged inserts")
        node.kill()
        assert stream.wait(timeout=TIMEOUT) == 0, (tmp_path / f"stream-{round_number}.out").read_text()
        acknowledged, failures = read_acknowledgements(acks_path)
        assert failures is not None, "the stream did not notice the node going away"
        kinds = set(failures.split()[3].split(","))
        assert kinds <= EXPECTED_FAILURES, failures
        assert len(acknowledged) >= kill_after

        # Ids are never repeated: not within the stream, not across rounds, not against
        # what the node held before this round (acknowledged or not).
        ids = [element_id for element_id, _n in acknowledged]
        assert len(set(ids)) == len(ids), "an id was acknowledged twice"
        assert not set(ids) & set(before), "an id of an earlier element was handed out again"
        # Every id handed out after the last restart is above every id its partition had.
        for element_id in ids:
            partition = layout.partition_of(element_id)
            assert element_id > highest_before.get(partition, 0), (element_id, partition, highest_before)

        node.start()
        with node.client() as client:
            stored = {element_id: doc for element_id, doc, _version in client.scan_all(RECORD_TYPE)}
        for element_id, n in acknowledged:
            everything_acknowledged[element_id] = document(tag, n)
        missing = [i for i in everything_acknowledged if i not in stored]
        assert not missing, f"{len(missing)} acknowledged inserts lost, e.g. {missing[:5]}"
        wrong = [i for i, doc in everything_acknowledged.items() if stored[i] != doc]
        assert not wrong, f"{len(wrong)} documents differ, e.g. {wrong[0]}: {stored[wrong[0]]}"
        # What was written but not acknowledged may be there too, but only whole.
        for element_id, doc in stored.items():
            assert doc == document(doc["tag"], doc["n"]), (element_id, doc)
        assert node.problems() == [], node.describe()

    # After the last restart too, new ids (in the default and in chosen partitions) are above
    # every id their partition ever had.
    highest = highest_per_partition(stored, layout)
    with node.client() as client:
        new_ids = client.insert_many(RECORD_TYPE, [document("after", n) for n in range(50)])
        for old in sorted(stored)[:: max(1, len(stored) // 5)]:
            new_ids.append(client.call("insert", type=RECORD_TYPE, doc=document("near", old), near=old))
    assert not set(new_ids) & set(stored)
    for element_id in new_ids:
        assert element_id > highest.get(layout.partition_of(element_id), 0)
