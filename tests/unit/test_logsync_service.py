"""LogSyncService driven by hand: a memory store, a fake clock and a transport whose calls
are answered (or not) by the test."""

import dataclasses
from dataclasses import dataclass

import pytest
from twisted.internet import defer, task

from nodedb import errors
from nodedb.ids import IdLayout
from nodedb.logsync.messages import parse_part
from nodedb.logsync.packer import Packer
from nodedb.logsync.service import LogSyncService, LogSyncTiming
from nodedb.storage import Append, Insert, Load, Promise, Reset
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import failure_result_of, no_result, success_result_of
from nodedb.voting.state import Assignment, ClusterState

LAYOUT = IdLayout(partition_bits=4)  # 16 partitions
PARTITIONS = LAYOUT.max_partitions


def eid(partition, sequence):
    return LAYOUT.make(partition, sequence)


@dataclass
class Call:
    address: str
    method: str
    args: dict
    timeout: float
    d: defer.Deferred

    def reply(self, *answers):
        self.d.callback({"parts": [list(a) for a in answers]})


class FakeTransport:
    def __init__(self):
        self.calls = []

    def call(self, address, method, args, timeout):
        d = defer.Deferred()
        self.calls.append(Call(address, method, args, timeout, d))
        return d

    def take(self):
        """The calls made since the last take, by address."""
        calls, self.calls = self.calls, []
        by_address = {}
        for call in calls:
            assert call.address not in by_address, f"two messages in flight to {call.address}"
            by_address[call.address] = call
        return by_address


class FakeApi:
    def __init__(self):
        self.handlers = {}

    def register(self, op, handler):
        self.handlers[op] = handler


class Host:
    """One LogSyncService with everything around it faked."""

    def __init__(self, host_id):
        self.clock = task.Clock()
        self.storage = MemoryStorage(layout=LAYOUT)
        success_result_of(self.storage.open())
        self.transport = FakeTransport()
        self.fenced = []
        self.announced = []
        self.service = LogSyncService(
            self.clock,
            host_id,
            self.storage,
            self.transport,
            lambda host: f"{host}:1",
            on_fenced=lambda partition, epoch: self.fenced.append((partition, epoch)),
            on_syncing=self.announced.append,
        )
        self.api = FakeApi()
        self.service.install(self.api)
        self.service.startService()

    def handle(self, op, request):
        return self.api.handlers[op](request)

    def pump(self):
        """Let the service send what it has queued; :return: the new calls by host."""
        self.clock.advance(0)
        return {address.split(":")[0]: call for address, call in self.transport.take().items()}

    def write(self, partition, sequence, data=b"x", record_type="doc"):
        """Commit one insert locally as the primary would; :return: its results."""
        epochs = self.service.epochs([partition])
        return success_result_of(self.storage.commit([Insert(record_type, eid(partition, sequence), data)], 1.0, epochs))

    def nothing_stored(self):
        store = self.storage.store
        return store.types == {} and store.log == {} and store.partitions == {}


def cluster(assign):
    """A cluster state with members z (which bootstrapped, and so leads every partition not
    in *assign*), a, b and c; *assign* is ``{partition: (replicas, epoch)}``."""
    state = ClusterState()
    state.apply({"op": "bootstrap", "cluster": "c1", "partitions": 4, "replicas": 3, "host": "z", "address": "z:1", "at": 0.0})
    for host in "abc":
        state.apply({"op": "accept", "host": host, "address": f"{host}:1", "at": 0.0})
    # The map is set directly: decisions change a replica set one replica at a time, and
    # these tests need arbitrary sets.
    for partition, (replicas, epoch) in assign.items():
        state.assignments[partition] = Assignment(tuple(replicas), epoch)
    for partition, (replicas, epoch) in assign.items():
        assert state.assignments[partition].replicas == tuple(replicas)
        assert state.assignments[partition].epoch == epoch
    return state


def entry(commit_id, epoch, sequence, data=b"x", partition=0, change=0, record_type="doc"):
    return [commit_id, epoch, float(commit_id), change, record_type, eid(partition, sequence), data]


def append_part(prev=(0, 0), entries=(), epoch=1, partition=0, last=None, **extra):
    part = {"p": partition, "e": epoch, "prev": list(prev), "entries": list(entries), "trunc": 0, "start": 0}
    part["last"] = last if last is not None else (entries[-1][0] if entries else prev[0])
    part.update(extra)
    return part


# -- refusing malformed input ------------------------------------------------------------------

GOOD_ENTRY = entry(1, 1, 1)


def with_entry(**changes):
    fields = ["commit_id", "epoch", "timestamp", "change", "record_type", "element_id", "data"]
    value = dict(zip(fields, GOOD_ENTRY))
    value.update(changes)
    return append_part(entries=[[value[f] for f in fields]], last=1)


BAD_PARTS = {
    "not a map": [0, 1, [0, 0]],
    "no partition": {"e": 1, "prev": [0, 0]},
    "negative partition": append_part(partition=-1),
    "partition out of range": append_part(partition=PARTITIONS),
    "partition far out of range": append_part(partition=1 << 64),
    "partition as text": append_part(partition="0"),
    "partition as bool": append_part(partition=True),
    "no epoch": {"p": 0, "prev": [0, 0]},
    "epoch as float": append_part(epoch=1.0),
    "nothing to do": {"p": 0, "e": 1},
    "prev too short": append_part() | {"prev": [0]},
    "prev not a list": append_part() | {"prev": "0:0"},
    "prev negative epoch": append_part() | {"prev": [0, -1]},
    "entries not a list": append_part() | {"entries": {"1": GOOD_ENTRY}},
    "entry too short": append_part(entries=[GOOD_ENTRY[:6]]),
    "entry not a list": append_part(entries=[tuple(GOOD_ENTRY)]),
    "entry negative commit id": with_entry(commit_id=-1),
    "entry epoch as text": with_entry(epoch="1"),
    "entry timestamp as text": with_entry(timestamp="now"),
    "entry unknown change type": with_entry(change=3),
    "entry type name upper case": with_entry(record_type="Doc"),
    "entry type name as bytes": with_entry(record_type=b"doc"),
    "entry type name empty": with_entry(record_type=""),
    "entry negative element id": with_entry(element_id=-1),
    "entry element id past 64 bits": with_entry(element_id=1 << 64),
    "entry element id as text": with_entry(element_id="1"),
    "entry data as text": with_entry(data="x"),
    "negative trunc": append_part(trunc=-1),
    "start as text": append_part(start="0"),
    "reset not a time": {"p": 0, "e": 1, "reset": "yesterday"},
    "load not a list": {"p": 0, "e": 1, "reset": 1.0, "load": {"doc": []}},
    "load element too short": {"p": 0, "e": 1, "reset": 1.0, "load": [["doc", eid(0, 1), b"x"]]},
    "load element negative version": {"p": 0, "e": 1, "reset": 1.0, "load": [["doc", eid(0, 1), b"x", -1]]},
    "load element data as text": {"p": 0, "e": 1, "reset": 1.0, "load": [["doc", eid(0, 1), "x", 1]]},
    "load element bad type": {"p": 0, "e": 1, "reset": 1.0, "load": [["a-b", eid(0, 1), b"x", 1]]},
    "load done malformed": {"p": 0, "e": 1, "reset": 1.0, "load": [], "done": [1]},
}


@pytest.mark.parametrize("part", BAD_PARTS.values(), ids=BAD_PARTS.keys())
def test_parse_part_refuses_malformed_parts(part):
    with pytest.raises(errors.InvalidRequest):
        parse_part(part, PARTITIONS, LAYOUT)


@pytest.mark.parametrize("part", BAD_PARTS.values(), ids=BAD_PARTS.keys())
def test_append_with_a_malformed_part_writes_nothing(part):
    host = Host("b")
    # The bad part comes after a good one: the whole message is refused before storage.
    request = {"parts": [append_part(entries=[entry(1, 1, 1)]), part]}
    with pytest.raises(errors.InvalidRequest):
        host.handle("logsync.append", request)
    assert host.nothing_stored()


FOREIGN_ELEMENTS = {
    "entry of partition 5 in a part of partition 0": append_part(entries=[entry(1, 1, 1, partition=5)]),
    "loaded element of partition 5 in a part of partition 0": {
        "p": 0, "e": 1, "reset": 1.0, "load": [["doc", eid(5, 1), b"x", 1]]},
}


@pytest.mark.parametrize("part", FOREIGN_ELEMENTS.values(), ids=FOREIGN_ELEMENTS.keys())
def test_an_element_of_another_partition_is_refused(part):
    host = Host("b")
    with pytest.raises(errors.InvalidRequest):
        host.handle("logsync.append", {"parts": [part]})
    assert host.storage.get("doc", eid(5, 1)) is None


@pytest.mark.parametrize("change", [True, 1.0], ids=["bool", "float"])
def test_a_change_type_that_is_not_an_integer_is_refused(change):
    with pytest.raises(errors.InvalidRequest):
        parse_part(with_entry(change=change), PARTITIONS, LAYOUT)


@pytest.mark.parametrize("request_", [{}, {"parts": []}, {"parts": "all"}, {"parts": {"p": 0}}])
def test_append_without_a_list_of_parts_is_refused(request_):
    host = Host("b")
    with pytest.raises(errors.InvalidRequest):
        host.handle("logsync.append", request_)
    assert host.nothing_stored()


def test_parse_part_turns_a_good_part_into_storage_units():
    part = {
        "p": 3,
        "e": 2,
        "reset": 5,
        "load": [["doc", eid(3, 1), b"x", 4]],
        "done": [4, 1],
        "prev": [4, 1],
        "entries": [entry(5, 2, 2, partition=3)],
        "trunc": 4,
        "start": 4,
    }
    partition, units = parse_part(part, PARTITIONS, LAYOUT)
    assert partition == 3
    reset, load, append = units
    assert reset == Reset(3, 2, 5.0) and type(reset.mtime) is float
    assert load == Load(3, 2, [("doc", eid(3, 1), b"x", 4)], (4, 1))
    assert type(append) is Append
    assert (append.partition, append.epoch, append.prev, append.truncate, append.start) == (3, 2, (4, 1), 4, 4)
    [logged] = append.entries
    assert (logged.partition, logged.commit_id, logged.epoch, logged.element_id, logged.data) == (3, 5, 2, eid(3, 2), b"x")


BAD_PROMISES = {
    "no parts": {},
    "empty parts": {"parts": []},
    "parts not a list": {"parts": "0:1"},
    "part not a pair": {"parts": [[0]]},
    "part a triple": {"parts": [[0, 1, 2]]},
    "part a map": {"parts": [{"p": 0, "e": 1}]},
    "negative partition": {"parts": [[-1, 1]]},
    "partition out of range": {"parts": [[PARTITIONS, 1]]},
    "partition as text": {"parts": [["0", 1]]},
    "epoch as float": {"parts": [[0, 1.0]]},
    "epoch as bool": {"parts": [[0, True]]},
    "a good part then a bad one": {"parts": [[0, 1], [PARTITIONS + 5, 1]]},
}


@pytest.mark.parametrize("request_", BAD_PROMISES.values(), ids=BAD_PROMISES.keys())
def test_promise_refuses_malformed_input_and_writes_nothing(request_):
    host = Host("b")
    with pytest.raises(errors.InvalidRequest):
        host.handle("logsync.promise", request_)
    assert host.nothing_stored()


BAD_HANDOFFS = {
    "nothing": {},
    "no follower": {"p": 0, "e": 1},
    "no epoch": {"p": 0, "to": "b"},
    "negative partition": {"p": -1, "e": 1, "to": "b"},
    "epoch as text": {"p": 0, "e": "1", "to": "b"},
    "follower not text": {"p": 0, "e": 1, "to": 7},
    "follower as bytes": {"p": 0, "e": 1, "to": b"b"},
}


@pytest.mark.parametrize("request_", BAD_HANDOFFS.values(), ids=BAD_HANDOFFS.keys())
def test_handoff_refuses_malformed_input(request_):
    host = Host("a")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    with pytest.raises(errors.InvalidRequest):
        host.handle("logsync.handoff", request_)
    assert host.service.epochs([0]) == {0: 1}  # still takes writes


def test_handoff_of_a_partition_not_led_here_is_unavailable():
    host = Host("a")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    for request in ({"p": 1, "e": 0, "to": "b"}, {"p": 0, "e": 2, "to": "b"}, {"p": 0, "e": 1, "to": "z"}):
        failure_result_of(host.handle("logsync.handoff", request), errors.Unavailable)
    assert host.service.epochs([0]) == {0: 1}


# -- the follower ------------------------------------------------------------------------------


def test_a_follower_applies_appends_and_reports_caught_up_at_the_primarys_end():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    assert host.service.syncing() == [0]
    assert host.announced == [[0]]

    part = append_part(prev=(0, 0), entries=[entry(1, 1, 1, b"one"), entry(2, 1, 2, b"two")], last=3)
    reply = success_result_of(host.handle("logsync.append", {"parts": [part]}))
    assert reply == {"parts": [[True, 2, 1, 1, False]]}
    assert host.storage.get("doc", eid(0, 1)) == (b"one", 1)
    assert host.storage.get("doc", eid(0, 2)) == (b"two", 2)
    assert host.service.syncing() == [0]  # the primary already had 3

    part = append_part(prev=(2, 1), entries=[entry(3, 1, 3, b"three")], last=3)
    reply = success_result_of(host.handle("logsync.append", {"parts": [part]}))
    assert reply == {"parts": [[True, 3, 1, 1, False]]}
    assert host.service.syncing() == []
    assert host.announced == [[0], []]
    state = host.storage.partition_state(0)
    assert (state.last_commit_id, state.last_epoch, state.epoch, state.followed) == (3, 1, 1, 1)


def test_a_follower_refuses_a_gap_and_is_syncing_again():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    success_result_of(host.handle("logsync.append", {"parts": [append_part(entries=[entry(1, 1, 1)], last=1)]}))
    assert host.service.syncing() == []
    reply = success_result_of(host.handle("logsync.append", {"parts": [append_part(prev=(5, 1), entries=[entry(6, 1, 6)])]}))
    assert reply == {"parts": [[False, 1, 1, 1, False]]}
    assert host.storage.get("doc", eid(0, 6)) is None
    assert host.service.syncing() == [0]
    assert host.announced == [[0], [], [0]]


def test_a_promise_fences_older_appends_and_reports_how_complete_the_copy_is():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    success_result_of(host.handle("logsync.append", {"parts": [append_part(entries=[entry(1, 1, 1), entry(2, 1, 2)])]}))
    reply = success_result_of(host.handle("logsync.promise", {"parts": [[0, 2], [1, 0]]}))
    # [accepted, followed, last, syncing]
    assert reply == {"parts": [[True, 1, 2, False], [True, 0, 0, False]]}
    reply = success_result_of(host.handle("logsync.append", {"parts": [append_part(prev=(2, 1), entries=[entry(3, 1, 3)])]}))
    assert reply == {"parts": [[False, 2, 1, 2, False]]}  # refused, and says it promised epoch 2
    assert host.storage.get("doc", eid(0, 3)) is None
    reply = success_result_of(host.handle("logsync.promise", {"parts": [[0, 1]]}))
    assert reply == {"parts": [[False, 1, 2, False]]}  # no going back


def test_a_follower_of_several_partitions_answers_part_by_part():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1), 1: (("c", "b"), 1)}))
    assert host.service.syncing() == [0, 1]
    parts = [
        append_part(entries=[entry(1, 1, 1)], last=1),
        append_part(partition=1, prev=(4, 1), entries=[entry(5, 1, 5, partition=1)]),
    ]
    reply = success_result_of(host.handle("logsync.append", {"parts": parts}))
    assert reply == {"parts": [[True, 1, 1, 1, False], [False, 0, 0, 1, False]]}
    assert host.service.syncing() == [1]


def test_a_full_resync_marks_the_copy_syncing_until_done():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    success_result_of(host.handle("logsync.append", {"parts": [append_part(entries=[entry(1, 1, 1, b"old")], last=1)]}))
    assert host.service.syncing() == []
    reply = success_result_of(host.handle("logsync.append", {"parts": [
        {"p": 0, "e": 1, "reset": 2.0, "load": [["doc", eid(0, 7), b"new", 9]]}]}))
    assert reply == {"parts": [[True, 0, 0, 1, True]]}
    assert host.storage.get("doc", eid(0, 1)) is None  # the reset dropped the old copy
    assert host.service.syncing() == [0]
    reply = success_result_of(host.handle("logsync.append", {"parts": [{"p": 0, "e": 1, "load": [], "done": [9, 1]}]}))
    assert reply == {"parts": [[True, 9, 1, 1, False]]}
    assert host.storage.get("doc", eid(0, 7)) == (b"new", 9)
    assert host.service.syncing() == [0]
    # Caught up only once an append reaches the primary's end.
    success_result_of(host.handle("logsync.append", {"parts": [append_part(prev=(9, 1), last=9)]}))
    assert host.service.syncing() == []


def test_a_new_assignment_epoch_makes_a_caught_up_copy_syncing_again():
    host = Host("b")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    success_result_of(host.handle("logsync.append", {"parts": [append_part(entries=[entry(1, 1, 1)], last=1)]}))
    assert host.service.syncing() == []
    host.service.update(cluster({0: (("c", "a", "b"), 2)}))
    assert host.service.syncing() == [0]


# -- the primary -------------------------------------------------------------------------------


def primary_host(assign=None):
    """Host a, primary of partition 0 (epoch 1) with followers b and c, its lead promise on
    disk and the first probes answered."""
    host = Host("a")
    host.service.update(cluster(assign or {0: (("a", "b", "c"), 1)}))
    assert host.service.epochs([0]) == {0: 1}
    assert host.storage.partition_state(0).followed == 1
    probes = host.pump()
    assert set(probes) == {"b", "c"}
    for call in probes.values():
        assert call.method == "logsync.append"
        [part] = call.args["parts"]
        assert (part["p"], part["e"], part["prev"], part["entries"], part["start"]) == (0, 1, [0, 0], [], 0)
        call.reply([True, 0, 0, 1, False])
    return host


def test_a_write_is_acknowledged_once_one_follower_of_three_has_it():
    host = primary_host()
    results = host.write(0, 1, b"hello")
    assert results == [(eid(0, 1), 1)]
    d = host.service.acknowledge(results)
    no_result(d)
    sent = host.pump()
    assert set(sent) == {"b", "c"}
    for call in sent.values():
        [part] = call.args["parts"]
        assert part["p"] == 0 and part["e"] == 1
        assert part["prev"] == [0, 0]
        assert part["entries"] == [[1, 1, 1.0, 0, "doc", eid(0, 1), b"hello"]]
        assert part["start"] == 0 and part["last"] == 1
    # A refusal that only tells where the follower stands acknowledges nothing.
    sent["c"].reply([False, 0, 0, 1, False])
    no_result(d)
    sent["b"].reply([True, 1, 1, 1, False])
    assert success_result_of(d) is None
    assert host.service.status()["primary"]["0"]["committed"] == 1


def test_what_the_primary_sends_a_real_follower_applies():
    primary = primary_host()
    follower = Host("b")
    follower.service.update(cluster({0: (("a", "b", "c"), 1)}))
    results = primary.write(0, 1, b"one") + primary.write(0, 2, b"two")
    d = primary.service.acknowledge(results)
    sent = primary.pump()
    answer = success_result_of(follower.handle("logsync.append", sent["b"].args))
    sent["b"].d.callback(answer)
    success_result_of(d)
    assert follower.storage.get("doc", eid(0, 2)) == (b"two", 2)
    assert follower.storage.partition_state(0).position() == (1, 2)


def test_an_answer_to_a_message_sent_before_the_write_acknowledges_nothing():
    host = Host("a")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    probes = host.pump()  # sent before the write
    d = host.service.acknowledge(host.write(0, 1))
    assert host.pump() == {}  # one new entry waits for the message on its way
    probes["b"].reply([True, 0, 0, 1, False])
    probes["c"].reply([True, 0, 0, 1, False])
    no_result(d)
    sent = host.pump()
    assert [e[0] for e in sent["b"].args["parts"][0]["entries"]] == [1]
    sent["b"].reply([True, 1, 1, 1, False])
    success_result_of(d)


def test_entries_are_pipelined_once_a_batch_is_worth_it_and_within_the_window():
    host = primary_host()
    timing = host.service.timing
    host.service.acknowledge(host.write(0, 1))
    messages = [host.pump()["b"]]  # nothing was on its way: it goes at once
    sequence = 1
    while len(messages) < timing.pipeline:
        for _ in range(timing.pipeline_batch - 1):
            sequence += 1
            host.service.acknowledge(host.write(0, sequence))
            assert "b" not in host.pump()  # not worth a message of its own yet
        sequence += 1
        host.service.acknowledge(host.write(0, sequence))
        messages.append(host.pump()["b"])
        assert len(messages[-1].args["parts"][0]["entries"]) == timing.pipeline_batch
    for _ in range(timing.pipeline_batch):  # the window is full: nothing more goes
        sequence += 1
        host.service.acknowledge(host.write(0, sequence))
        assert "b" not in host.pump()
    messages[0].reply([True, 1, 1, 1, False])
    more = host.pump()["b"].args["parts"][0]["entries"]
    assert [e[0] for e in more] == list(range(sequence - timing.pipeline_batch + 1, sequence + 1))


def test_five_replicas_need_two_followers():
    host = Host("a")
    state = ClusterState()
    state.apply({"op": "bootstrap", "cluster": "c1", "partitions": 4, "replicas": 5, "host": "z", "address": "z:1", "at": 0.0})
    for h in "abcde":
        state.apply({"op": "accept", "host": h, "address": f"{h}:1", "at": 0.0})
    state.assignments[0] = Assignment(("a", "b", "c", "d", "e"), 1)
    host.service.update(state)
    d = host.service.acknowledge(host.write(0, 1))
    sent = host.pump()
    assert set(sent) == set("bcde")
    sent["b"].reply([True, 1, 1, 1, False])
    sent["c"].reply([False, 0, 0, 1, False])
    no_result(d)
    sent["e"].reply([True, 1, 1, 1, False])
    success_result_of(d)


def test_a_replica_set_of_one_acknowledges_at_once_and_reads_at_once():
    host = Host("a")
    host.service.update(cluster({0: (("a",), 1)}))
    assert host.service.acknowledge(host.write(0, 1)) is None
    assert host.service.read_barrier([0]) is None
    assert host.pump() == {}


def test_a_write_in_a_partition_not_led_here_is_refused_or_times_out():
    host = primary_host()
    with pytest.raises(errors.Unavailable):
        host.service.epochs([1])  # z leads it
    failure_result_of(host.service.acknowledge([(eid(1, 1), 1)]), errors.Timeout)


def test_a_reply_with_a_newer_epoch_fences_the_primary():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    read = host.service.read_barrier([0])
    sent = host.pump()
    sent["b"].reply([False, 0, 0, 2, False])  # b promised epoch 2
    failure_result_of(d, errors.Timeout)
    failure_result_of(read, errors.Unavailable)
    with pytest.raises(errors.Unavailable):
        host.service.epochs([0])
    with pytest.raises(errors.Unavailable):
        host.service.read_barrier([0])
    assert not host.service.is_primary(0)
    assert host.fenced == [(0, 1)]
    assert host.service.status()["primary"]["0"]["fenced"] is True
    # c's late acceptance changes nothing, and the fenced primary ships nothing more.
    sent["c"].reply([True, 1, 1, 1, False])
    with pytest.raises(errors.Unavailable):
        host.service.epochs([0])
    host.clock.advance(1.0)
    assert host.pump() == {}
    # It asks again for the election that fenced it.
    host.clock.advance(2.0)
    assert host.fenced[0] == (0, 1) and len(host.fenced) >= 2


def test_a_promise_of_a_newer_epoch_fences_this_primary_too():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    reply = success_result_of(host.handle("logsync.promise", {"parts": [[0, 2]]}))
    assert reply == {"parts": [[True, 1, 1, False]]}
    failure_result_of(d, errors.Timeout)
    with pytest.raises(errors.Unavailable):
        host.service.epochs([0])


def test_a_write_without_a_majority_times_out():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    host.pump()  # never answered
    host.clock.advance(9.0)
    no_result(d)
    host.clock.advance(1.5)
    failure_result_of(d, errors.Timeout)
    assert host.service.epochs([0]) == {0: 1}  # still the primary


def test_a_read_barrier_waits_for_a_message_sent_after_it():
    host = Host("a")
    host.service.update(cluster({0: (("a", "b", "c"), 1)}))
    first = host.pump()  # message 1 in flight to each follower
    read = host.service.read_barrier([0])
    no_result(read)
    # Answers to a message sent before the read do not confirm it.
    first["b"].reply([True, 0, 0, 1, False])
    first["c"].reply([True, 0, 0, 1, False])
    no_result(read)
    second = host.pump()
    assert set(second) == {"b", "c"}
    second["b"].reply([True, 0, 0, 1, False])
    assert success_result_of(read) is None


def test_a_read_barrier_waits_for_what_the_store_held_to_be_committed():
    host = primary_host()
    results = host.write(0, 1)  # visible in the store, not yet acknowledged
    read = host.service.read_barrier([0])
    sent = host.pump()
    sent["b"].reply([True, 0, 0, 1, False])
    sent["c"].reply([True, 0, 0, 1, False])
    no_result(read)  # confirmed, but entry 1 is not on a majority
    d = host.service.acknowledge(results)
    sent = host.pump()
    sent["c"].reply([True, 1, 1, 1, False])
    success_result_of(d)
    success_result_of(read)


def test_a_read_barrier_fails_when_not_confirmed_in_time():
    host = primary_host()
    read = host.service.read_barrier([0])
    host.pump()
    host.clock.advance(10.5)
    failure_result_of(read, errors.Unavailable)


def test_a_lost_message_is_sent_again_at_the_next_heartbeat():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    sent = host.pump()
    sent["b"].d.errback(errors.ConnectionLost("gone"))
    assert host.pump() == {}  # not at once
    host.clock.advance(0.25)
    again = host.pump()
    assert "b" in again  # (c gets a heartbeat probe too)
    probe = again["b"].args["parts"][0]
    assert (probe["prev"], probe["entries"]) == ([1, 1], [])  # where is it? (it may have the entry)
    again["b"].reply([False, 0, 0, 1, False])  # it does not: send from its end
    resent = host.pump()
    assert resent["b"].args["parts"][0]["entries"] == sent["b"].args["parts"][0]["entries"]
    resent["b"].reply([True, 1, 1, 1, False])
    success_result_of(d)


def test_a_malformed_reply_acknowledges_nothing():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    sent = host.pump()
    sent["b"].d.callback({"parts": [[True, 1, 1, 1, False], [True, 1, 1, 1, False]]})  # two answers to one part
    sent["c"].d.callback(["not", "a", "map"])
    no_result(d)


# -- catching up -------------------------------------------------------------------------------


def test_a_new_primary_continues_a_prefix_follower_and_resyncs_a_diverged_one():
    host = Host("a")
    # Two writes of epoch 1, when this host led the partition alone.
    results = success_result_of(host.storage.replicate([Promise(0, 1, lead=True)]))
    assert results[0][0]
    for sequence, data in ((1, b"x"), (2, b"y")):
        success_result_of(host.storage.commit([Insert("doc", eid(0, sequence), data)], 1.0, {0: 1}))
    host.service.update(cluster({0: (("a", "b", "c"), 2)}))
    first = host.pump()
    for call in first.values():
        [part] = call.args["parts"]
        assert (part["e"], part["prev"], part["entries"], part["start"], part["last"]) == (2, [2, 1], [], 2, 2)
    # b holds our entry 1 (a prefix of our log); c's entry 2 was written in epoch 0 by a
    # primary whose write never reached us.
    first["b"].reply([False, 1, 1, 2, False])
    first["c"].reply([False, 2, 0, 2, False])
    second = host.pump()
    [to_b] = second["b"].args["parts"]
    assert to_b["prev"] == [1, 1]
    assert [e[0] for e in to_b["entries"]] == [2]
    assert [e[1] for e in to_b["entries"]] == [1]
    [to_c] = second["c"].args["parts"]
    assert "reset" in to_c and "prev" not in to_c
    assert sorted(to_c["load"]) == [["doc", eid(0, 1), b"x", 1], ["doc", eid(0, 2), b"y", 2]]
    assert to_c["done"] == [2, 1]
    assert host.service.status()["resyncs"] == 1
    assert host.service.status()["primary"]["0"]["followers"]["c"]["resync"] == {"base": 2, "copied": 2}
    second["c"].reply([True, 2, 1, 2, False])
    status = host.service.status()
    assert status["resyncs"] == 0
    assert status["primary"]["0"]["followers"]["c"] == {"match": 2, "resync": None}
    assert status["primary"]["0"]["committed"] == 2
    second["b"].reply([True, 2, 1, 2, False])
    assert host.service.status()["primary"]["0"]["followers"]["b"]["match"] == 2


def test_a_follower_ahead_of_the_new_primary_gets_a_full_resync():
    host = Host("a")
    success_result_of(host.storage.replicate([Promise(0, 1, lead=True)]))
    success_result_of(host.storage.commit([Insert("doc", eid(0, 1), b"x")], 1.0, {0: 1}))
    host.service.update(cluster({0: (("a", "b", "c"), 2)}))
    first = host.pump()
    first["b"].reply([False, 3, 1, 2, False])  # unacknowledged writes of the old primary
    first["c"].reply([False, 1, 1, 2, False])  # exactly our log
    second = host.pump()
    [to_b] = second["b"].args["parts"]
    assert "reset" in to_b and to_b["done"] == [1, 1]
    assert "c" not in second  # it has all we have: nothing to send until the next heartbeat
    host.clock.advance(0.25)
    [to_c] = host.pump()["c"].args["parts"]
    assert to_c["prev"] == [1, 1] and to_c["entries"] == []


def test_a_follower_that_says_it_is_resyncing_gets_a_new_resync():
    host = primary_host()
    host.service.acknowledge(host.write(0, 1)).addErrback(lambda _f: None)
    sent = host.pump()
    sent["b"].reply([False, 0, 0, 1, True])  # its copy is half-loaded from an older resync
    sent["c"].reply([True, 1, 1, 1, False])
    again = host.pump()
    [part] = again["b"].args["parts"]
    assert "reset" in part and part["done"] == [1, 1]


# -- planned handoff and elections -------------------------------------------------------------


def test_a_handoff_holds_writes_until_the_follower_has_everything():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    sent = host.pump()
    handoff = host.handle("logsync.handoff", {"p": 0, "e": 1, "to": "b"})
    no_result(handoff)
    with pytest.raises(errors.Unavailable):
        host.service.epochs([0])
    failure_result_of(host.service.handoff(0, 1, "c"), errors.Unavailable)  # one at a time
    sent["c"].reply([True, 1, 1, 1, False])
    success_result_of(d)
    no_result(handoff)  # b does not have it yet
    sent["b"].reply([True, 1, 1, 1, False])
    assert success_result_of(handoff) == {"last": 1}
    with pytest.raises(errors.Unavailable):
        host.service.epochs([0])  # still held until the map moves on


def test_a_handoff_waits_for_commits_still_on_their_way_to_storage():
    host = primary_host()
    epochs = host.service.begin([0])  # a write that got past the check, not yet stored
    handoff = host.service.handoff(0, 1, "b")
    host.pump()["b"].reply([True, 0, 0, 1, False])
    no_result(handoff)  # b has everything stored so far, but a commit is still landing
    results = success_result_of(host.storage.commit([Insert("doc", eid(0, 1), b"x")], 1.0, epochs))
    d = host.service.acknowledge(results, epochs)
    host.pump()["b"].reply([True, 1, 1, 1, False])
    success_result_of(d)
    assert success_result_of(handoff) == {"last": 1}


def test_a_handoff_that_does_not_finish_in_time_lets_writes_resume():
    host = primary_host()
    d = host.service.acknowledge(host.write(0, 1))
    sent = host.pump()
    sent["b"].reply([True, 1, 1, 1, False])
    success_result_of(d)
    handoff = host.service.handoff(0, 1, "c")  # c never answers
    host.clock.advance(2.9)
    no_result(handoff)
    host.clock.advance(0.35)
    failure_result_of(handoff, errors.Unavailable)
    assert host.service.epochs([0]) == {0: 1}


def test_a_handoff_fails_when_the_map_moves_on_before_it_finishes():
    # The Voting leader waits on this Deferred with no timeout of its own: a primary that
    # stops leading mid-handoff must answer, or the leader never plans another move.
    host = primary_host()
    write = host.service.acknowledge(host.write(0, 1))
    handoff = host.service.handoff(0, 1, "b")
    host.pump()  # b and c never answer
    no_result(handoff)
    host.service.update(cluster({0: (("c", "a", "b"), 2)}))
    failure_result_of(handoff, errors.Unavailable)
    failure_result_of(write, errors.Timeout)


def test_a_handoff_fails_when_the_service_stops():
    host = primary_host()
    host.service.acknowledge(host.write(0, 1)).addErrback(lambda failure: None)
    handoff = host.service.handoff(0, 1, "b")
    host.pump()
    no_result(handoff)
    host.service.stopService()
    failure_result_of(handoff, errors.Unavailable)


def test_a_resync_page_for_a_follower_whose_address_is_unknown_goes_once_it_is_known():
    # Packing a page marks it in flight: a page packed for a host with no address would
    # wait for an answer that never comes, and that follower's resync would stall.
    known = {"b": "b:1", "c": "c:1"}
    host = Host("a")
    host.service.primaries.address_of = known.get
    success_result_of(host.storage.replicate([Promise(0, 1, lead=True)]))
    success_result_of(host.storage.commit([Insert("doc", eid(0, 1), b"x")], 1.0, {0: 1}))
    host.service.update(cluster({0: (("a", "b", "c"), 2)}))
    first = host.pump()
    first["b"].reply([True, 1, 1, 2, False])
    del known["c"]
    first["c"].reply([False, 1, 0, 2, False])  # diverged: c needs a full resync
    assert "c" not in host.pump()
    known["c"] = "c:1"
    host.clock.advance(host.service.timing.heartbeat)
    [to_c] = host.pump()["c"].args["parts"]
    assert "reset" in to_c and to_c["load"] == [["doc", eid(0, 1), b"x", 1]]


def test_an_election_picks_the_most_complete_of_enough_answers():
    host = Host("z")  # the voting leader, not a replica
    chosen = host.service.elect({0: (2, ("a", "b", "c"))})
    calls = host.transport.take()
    assert set(calls) == {"a:1", "b:1", "c:1"}
    assert all(c.method == "logsync.promise" and c.args == {"parts": [[0, 2]]} for c in calls.values())
    calls["a:1"].reply([True, 1, 5, False])
    calls["b:1"].reply([True, 1, 7, False])
    no_result(chosen)  # waits for every call to answer or fail
    calls["c:1"].d.errback(errors.Timeout("no answer"))
    assert success_result_of(chosen) == {0: "b"}


def test_an_election_with_too_few_answers_chooses_nobody():
    host = Host("z")
    chosen = host.service.elect({0: (2, ("a", "b", "c"))}, skip={"c"})
    calls = host.transport.take()
    assert set(calls) == {"a:1", "b:1"}
    calls["a:1"].reply([True, 1, 5, False])
    calls["b:1"].reply([False, 0, 0, False])  # it promised a newer epoch already
    assert success_result_of(chosen) == {}


def test_an_election_ignores_syncing_answers_and_honours_prefer_on_ties():
    host = Host("z")
    chosen = host.service.elect({0: (2, ("a", "b", "c"))}, prefer={0: "c"})
    calls = host.transport.take()
    calls["a:1"].reply([True, 1, 9, True])
    calls["b:1"].reply([True, 1, 7, False])
    calls["c:1"].reply([True, 1, 7, False])
    assert success_result_of(chosen) == {0: "c"}


def test_a_primary_ships_a_commits_entries_together():
    """A batch ends where a commit ends, even when that commit alone is longer than a batch,
    so that no follower (and no primary a failover picks) holds part of a transaction."""
    storage = MemoryStorage(layout=LAYOUT)
    success_result_of(storage.open())
    packer = Packer(storage, dataclasses.replace(LogSyncTiming(), batch_entries=3))
    commits = [[1], [2, 3, 4], [5], [6, 7, 8, 9, 10], [11]]
    for sequences in commits:
        success_result_of(storage.commit([Insert("doc", eid(0, s), b"x") for s in sequences], 1.0))

    def batch(prev):
        return [e.commit_id for e in packer.whole_commits(0, prev)]

    assert batch(0) == [1]  # 1 | 2 3 4: the batch of 3 would cut the second commit
    assert batch(1) == [2, 3, 4]
    assert batch(4) == [5]
    assert batch(5) == [6, 7, 8, 9, 10]  # longer than a batch: shipped whole
    assert batch(10) == [11]
    assert batch(11) == []
