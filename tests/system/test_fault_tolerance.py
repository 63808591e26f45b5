"""The contract of issue 12 on real processes: once every host lists every host as ``write``
or ``read``, losing any one host (kill -9, for good) loses no acknowledged write, writes go
on through the survivors within 10 s, and a new host joins through a survivor. The host
killed is the founder, at once: the moment that used to leave the survivors stuck for good
(its Voting group still had one voter)."""

import time

import pytest

from .harness import WireClient, WireError, settle_requests, wait_for
from .replicated import status

pytestmark = pytest.mark.system

WRITABLE = ("write", "read")


def every_host_listed_writable(nodes, count):
    """Every one of *nodes* lists *count* hosts, each as ``write`` or ``read``."""
    try:
        views = [status(node) for node in nodes]
    except (OSError, AssertionError):
        return False
    return all(len(v["hosts"]) == count and all(h["status"] in WRITABLE for h in v["hosts"]) for v in views)


def call_through(nodes, op, **arguments):
    """The result of *op* through the first of *nodes* that answers it, or None (the errors
    are kept in ``call_through.errors`` for the failure message)."""
    for node in nodes:
        try:
            with WireClient(node.address, timeout=5.0) as client:
                return client.call(op, **arguments)
        except (OSError, WireError) as e:
            call_through.errors.append(f"{node.name}: {e}")
    return None


call_through.errors = []


@pytest.mark.parametrize("expect", [False, True], ids=["one-by-one", "bootstrap-expect"])
def test_the_founder_killed_once_every_host_is_admitted_loses_nothing(processes, expect):
    founding = ["--bootstrap-expect", "3"] if expect else []
    first = processes.node("n0", args=["--replicas", "3", *founding])
    first.start()
    nodes = [first] + [processes.start_node(f"n{i}", args=["--seed", first.address]) for i in (1, 2)]
    wait_for(
        lambda: every_host_listed_writable(nodes, 3), interval=0.05,
        what="every host to list every host as write or read",
    )
    # No more settling: the writes (100 through each host, so some land in the partitions
    # each leads), then the kill, right away.
    ids = []
    for node in nodes:
        with node.client() as client:
            requests = [("insert", {"type": "doc", "doc": {"n": n}}) for n in range(len(ids), len(ids) + 100)]
            ids += settle_requests(client, requests, f"100 inserts through {node.name}")
    led = {int(p) for p in status(first)["replication"]["primary"]}
    first.kill()
    killed = time.monotonic()
    survivors = nodes[1:]
    # Writes resume in the partitions the founder led: one element of each is updated.
    pending = {i >> 48: i for i in ids if i >> 48 in led}
    assert pending, "the founder led none of the partitions written to"
    updated = set()

    def updated_everywhere():
        for partition, element in list(pending.items()):
            if call_through(survivors, "update", type="doc", key=element, doc={"after": "kill"}) is not None:
                updated.add(pending.pop(partition))
        return not pending

    wait_for(updated_everywhere, timeout=10.0, interval=0.05,
             what="writes in the founder's partitions within 10 s of the kill")
    resumed = time.monotonic() - killed
    print(f"writes resumed in the founder's partitions {resumed:.2f} s after its kill -9")

    def all_read_back():
        try:
            with WireClient(survivors[0].address, timeout=5.0) as client:
                return [client.get("doc", i)[0] for i in ids]
        except (OSError, WireError):
            return None

    docs = wait_for(all_read_back, timeout=20, interval=0.1, what="every acknowledged write read back")
    assert docs == [{"after": "kill"} if i in updated else {"n": n} for n, i in enumerate(ids)]

    # A new host joins through a survivor, is admitted, and the cluster takes writes.
    newcomer = processes.start_node("n3", args=["--seed", survivors[0].address])
    wait_for(lambda: newcomer_admitted(survivors, newcomer), timeout=60, interval=0.1,
             what="the newcomer to be admitted")
    assert call_through([newcomer], "insert", type="probe", doc={"after": "join"}) is not None, call_through.errors[-3:]


def newcomer_admitted(survivors, newcomer):
    """The survivors list *newcomer* as ``write`` or ``read`` (the dead founder stays listed
    with its last status, and available: false)."""
    try:
        views = [status(node) for node in survivors]
    except (OSError, AssertionError):
        return False
    return all(
        any(h["id"] == newcomer.host_id and h["status"] in WRITABLE for h in v["hosts"]) for v in views
    )
