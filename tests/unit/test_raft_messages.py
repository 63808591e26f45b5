"""Raft messages survive the wire, and malformed ones never reach Raft."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb.voting.messages import MessageError, message_from_wire, message_to_wire
from nodedb.voting.raft import Config, Message, Raft, Snapshot
from nodedb import codec


def traffic():
    """Messages of every kind, from a small group that elects, replicates and compacts."""
    config = Config(frozenset("abc"))
    nodes = {i: Raft(i, random.Random(n), snapshot=Snapshot(0, 0, config)) for n, i in enumerate("abc")}
    seen = []

    def pump():
        for _ in range(20):
            for node in nodes.values():
                ready = node.ready()
                for message in ready.messages:
                    seen.append(message)
                    if message.target in nodes:
                        nodes[message.target].step(message)
                node.advance(ready)

    nodes["a"].campaign()
    pump()
    nodes["a"].propose({"op": "accept", "host": "h1"})
    nodes["a"].propose_config({"a", "b", "c"}, learners={"d"})
    pump()
    nodes["a"].compact(nodes["a"].applied, {"state": 1})
    nodes["a"].tracker.progress["c"].next = 1
    nodes["a"].tick()
    pump()
    return seen


MESSAGES = traffic()


def test_the_traffic_covers_every_kind():
    assert {m.kind for m in MESSAGES} == {"pre-vote", "pre-vote-reply", "vote", "vote-reply", "append", "append-reply", "snapshot"}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_round_trip_through_cbor(message):
    wire = codec.decode(codec.encode(message_to_wire(message)))
    assert message_from_wire(wire) == message


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "coup"},
        {"term": -1},
        {"term": "2"},
        {"from": ""},
        {"to": 7},
        {"granted": 1},
        {"entries": [[1, 99, "normal", None]]},
        {"entries": [[1, 1, "weird", None]]},
        {"entries": [[1, 1, "config", {"voters": "abc"}]]},
        {"snapshot": {"index": 1, "term": 1, "config": {"voters": [1]}}},
    ],
)
def test_malformed_messages_are_refused(change):
    kinds = {"granted": "vote-reply", "entries": "append", "snapshot": "snapshot"}
    template = next(m for m in MESSAGES if m.kind == kinds.get(next(iter(change)), "append"))
    wire = message_to_wire(template)
    wire.update(change)
    with pytest.raises(MessageError):
        message_from_wire(wire)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c), max_leaves=20))
def test_arbitrary_values_give_a_message_or_message_error(value):
    try:
        message = message_from_wire(value)
    except MessageError:
        return
    assert isinstance(message, Message)
