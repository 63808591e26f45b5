"""The messages LogSync receives, checked field by field: a peer's bytes never reach storage
unchecked (docs/protocol.md describes them)."""

from nodedb import codec, errors
from nodedb.ids import IdLayout, check_element_id
from nodedb.storage import MORE, Append, LogEntry, Load, Promise, Reset

_LAYOUT = IdLayout()


def _int(value, name):
    if type(value) is not int or value < 0 or value >= 1 << 64:
        raise errors.InvalidRequest(f"logsync: {name} must be a non-negative integer")
    return value


def _element_of(partition, element_id, layout):
    check_element_id(element_id)
    if layout.partition_of(element_id) != partition:
        raise errors.InvalidRequest(f"logsync: element {element_id} is not in partition {partition}")
    return element_id


def _entry(partition, value, layout):
    if type(value) is not list or len(value) != 7:
        raise errors.InvalidRequest("logsync: malformed log entry")
    commit_id, epoch, timestamp, change, record_type, element_id, data = value
    _int(commit_id, "commit id")
    _int(epoch, "epoch")
    codec.check_stored_type(record_type)
    _element_of(partition, element_id, layout)
    if type(timestamp) not in (int, float) or type(change) is not int or change & ~MORE not in (0, 1, 2) or type(data) is not bytes:
        raise errors.InvalidRequest("logsync: malformed log entry")
    return LogEntry.from_wire(partition, value)


def _element(partition, value, layout):
    if type(value) is not list or len(value) != 4:
        raise errors.InvalidRequest("logsync: malformed element")
    record_type, element_id, data, version = value
    codec.check_stored_type(record_type)
    _element_of(partition, element_id, layout)
    _int(version, "version")
    if type(data) is not bytes:
        raise errors.InvalidRequest("logsync: malformed element")
    return (record_type, element_id, data, version)


def _pair(value, name):
    if type(value) is not list or len(value) != 2:
        raise errors.InvalidRequest(f"logsync: {name} is [commit id, epoch]")
    return (_int(value[0], name), _int(value[1], name))


def parse_part(part, max_partition, layout=_LAYOUT):
    """The storage units of one part of a ``logsync.append`` message (checked field by
    field: a peer's bytes never reach storage unchecked; every element must belong to the
    part's partition under *layout*)."""
    if type(part) is not dict:
        raise errors.InvalidRequest("logsync: a part is a map")
    partition = _int(part.get("p"), "partition")
    if partition >= max_partition:
        raise errors.InvalidRequest("logsync: no such partition")
    epoch = _int(part.get("e"), "epoch")
    units = []
    if "reset" in part:
        mtime = part["reset"]
        if type(mtime) not in (int, float):
            raise errors.InvalidRequest("logsync: reset is a time")
        units.append(Reset(partition, epoch, float(mtime)))
    if "load" in part:
        elements = part["load"]
        if type(elements) is not list:
            raise errors.InvalidRequest("logsync: load is a list")
        done = part.get("done")
        loaded = [_element(partition, e, layout) for e in elements]
        units.append(Load(partition, epoch, loaded, None if done is None else _pair(done, "done")))
    if "prev" in part:
        entries = part.get("entries", [])
        if type(entries) is not list:
            raise errors.InvalidRequest("logsync: entries is a list")
        truncate = _int(part.get("trunc", 0), "trunc")
        start = _int(part.get("start", 0), "start")
        entries = [_entry(partition, e, layout) for e in entries]
        units.append(Append(partition, epoch, _pair(part["prev"], "prev"), entries, truncate, start))
    if not units:
        raise errors.InvalidRequest("logsync: a part carries prev, reset or load")
    return partition, units


def parse_promise(request, max_partition):
    """The storage units of a ``logsync.promise`` request."""
    parts = request.get("parts")
    if type(parts) is not list or not parts:
        raise errors.InvalidRequest("logsync.promise: parts is a non-empty list")
    units = []
    for part in parts:
        partition, epoch = _pair(part, "a promise")
        if partition >= max_partition:
            raise errors.InvalidRequest("logsync.promise: no such partition")
        units.append(Promise(partition, epoch))
    return units


def parse_handoff(request):
    """:return: ``(partition, epoch, follower)`` of a ``logsync.handoff`` request."""
    try:
        partition = _int(request["p"], "partition")
        epoch = _int(request["e"], "epoch")
        follower = request["to"]
    except KeyError:
        raise errors.InvalidRequest("logsync.handoff: p, e and to are required") from None
    if type(follower) is not str:
        raise errors.InvalidRequest("logsync.handoff: to is a host id")
    return partition, epoch, follower


def parse_append(request, max_partition, layout):
    """:return: the parts of a ``logsync.append`` request, and ``[(partition, units)]`` for
    each (the whole message is refused before anything reaches storage)."""
    parts = request.get("parts")
    if type(parts) is not list or not parts:
        raise errors.InvalidRequest("logsync.append: parts is a non-empty list")
    return parts, [parse_part(part, max_partition, layout) for part in parts]
