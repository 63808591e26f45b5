"""Raft messages and entries on the wire: plain CBOR maps, checked field by field on the way in.

A peer's message never reaches :class:`nodedb.voting.raft.Raft` unless every field has the
type and range Raft relies on; anything else is a :class:`MessageError`.
"""

from nodedb.voting.raft import (
    APPEND,
    APPEND_REPLY,
    PRE_VOTE,
    PRE_VOTE_REPLY,
    SNAPSHOT,
    VOTE,
    VOTE_REPLY,
    Config,
    Entry,
    Message,
    Snapshot,
)

KINDS = (VOTE, VOTE_REPLY, PRE_VOTE, PRE_VOTE_REPLY, APPEND, APPEND_REPLY, SNAPSHOT)
ENTRY_KINDS = ("normal", "config")
MAX_ID = 64
MAX_MEMBERS = 10_000
MAX_ENTRIES = 10_000
_COUNTER_LIMIT = 1 << 63


class MessageError(ValueError):
    """A peer sent a Raft message that is malformed."""


def _check(condition, message):
    if not condition:
        raise MessageError(message)


def _counter(value, name):
    _check(type(value) is int and 0 <= value < _COUNTER_LIMIT, f"{name} must be a non-negative integer")
    return value


def _member(value, name):
    _check(type(value) is str and 0 < len(value) <= MAX_ID, f"{name} must be a member id")
    return value


def config_to_wire(config):
    return config.to_data()


def config_from_wire(value):
    _check(type(value) is dict, "a configuration is a map")
    voters, learners = value.get("voters"), value.get("learners", [])
    for name, members in (("voters", voters), ("learners", learners)):
        _check(type(members) is list and len(members) <= MAX_MEMBERS, f"{name} must be a list")
        for member in members:
            _member(member, name)
    return Config(frozenset(voters), frozenset(learners) - frozenset(voters))


def entry_to_wire(entry):
    return [entry.term, entry.index, entry.kind, entry.data]


def entry_from_wire(value):
    _check(type(value) is list and len(value) == 4, "an entry is [term, index, kind, data]")
    term, index, kind, data = value
    _check(kind in ENTRY_KINDS, "unknown entry kind")
    if kind == "config":
        data = config_from_wire(data).to_data()
    return Entry(_counter(term, "term"), _counter(index, "index"), kind, data)


def snapshot_to_wire(snapshot):
    return {
        "index": snapshot.index,
        "term": snapshot.term,
        "config": config_to_wire(snapshot.config),
        "data": snapshot.data,
    }


def snapshot_from_wire(value):
    _check(type(value) is dict, "a snapshot is a map")
    return Snapshot(
        _counter(value.get("index"), "snapshot index"),
        _counter(value.get("term"), "snapshot term"),
        config_from_wire(value.get("config")),
        value.get("data"),
    )


def message_to_wire(message):
    wire = {
        "kind": message.kind,
        "from": message.source,
        "to": message.target,
        "term": message.term,
    }
    if message.kind in (VOTE, PRE_VOTE):
        wire.update(last_index=message.last_index, last_term=message.last_term)
    elif message.kind in (VOTE_REPLY, PRE_VOTE_REPLY):
        wire["granted"] = message.granted
    elif message.kind == APPEND:
        wire.update(
            prev_index=message.prev_index,
            prev_term=message.prev_term,
            commit=message.commit,
            entries=[entry_to_wire(e) for e in message.entries],
        )
    elif message.kind == APPEND_REPLY:
        wire.update(success=message.success, match=message.match, hint=message.hint)
    elif message.kind == SNAPSHOT:
        wire["snapshot"] = snapshot_to_wire(message.snapshot)
    return wire


def message_from_wire(value):
    """:raise MessageError: unless *value* is a well-formed Raft message."""
    _check(type(value) is dict, "a Raft message is a map")
    kind = value.get("kind")
    _check(kind in KINDS, "unknown Raft message kind")
    fields = {
        "kind": kind,
        "source": _member(value.get("from"), "from"),
        "target": _member(value.get("to"), "to"),
        "term": _counter(value.get("term"), "term"),
    }
    if kind in (VOTE, PRE_VOTE):
        fields.update(last_index=_counter(value.get("last_index"), "last_index"), last_term=_counter(value.get("last_term"), "last_term"))
    elif kind in (VOTE_REPLY, PRE_VOTE_REPLY):
        _check(type(value.get("granted")) is bool, "granted must be a boolean")
        fields["granted"] = value["granted"]
    elif kind == APPEND:
        entries = value.get("entries")
        _check(type(entries) is list and len(entries) <= MAX_ENTRIES, "entries must be a list")
        parsed = tuple(entry_from_wire(e) for e in entries)
        prev_index = _counter(value.get("prev_index"), "prev_index")
        for offset, entry in enumerate(parsed, 1):
            _check(entry.index == prev_index + offset, "entries must follow prev_index without gaps")
        fields.update(
            prev_index=prev_index,
            prev_term=_counter(value.get("prev_term"), "prev_term"),
            commit=_counter(value.get("commit"), "commit"),
            entries=parsed,
        )
    elif kind == APPEND_REPLY:
        _check(type(value.get("success")) is bool, "success must be a boolean")
        fields.update(
            success=value["success"],
            match=_counter(value.get("match"), "match"),
            hint=_counter(value.get("hint"), "hint"),
        )
    else:
        fields["snapshot"] = snapshot_from_wire(value.get("snapshot"))
    return Message(**fields)
