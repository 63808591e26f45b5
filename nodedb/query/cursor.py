"""Scan cursors: opaque text that says where the next page starts.

A cursor is URL-safe base64 of a small CBOR map. Version 2 (``{"v": 2, "after": last id}``)
may also name the scan state the host that answered keeps for it: ``"host"`` (that host's
id), ``"run"`` (a nonce of that host's process run) and ``"id"`` (the cursor's number there).
The state is only a cache: ``after`` alone is enough to resume, on any host. Version 1
(``{"v": 1, "after": id}``) cursors are still read, as positions.
"""

import base64
import binascii
from dataclasses import dataclass

from nodedb.errors import InvalidRequest, NodeDBError
from nodedb.ids import MAX_ID
from nodedb import codec

_VERSION = 2
_READABLE = (1, 2)
MAX_CURSOR_LENGTH = 256


@dataclass(frozen=True)
class ScanCursor:
    """A decoded cursor: the last id covered, and where its scan state may be kept."""

    after: int
    host: str | None = None
    run: bytes | None = None
    number: int | None = None


def encode_cursor(after_id, host=None, run=None, number=None):
    """A cursor that resumes after *after_id*; with *host*, *run* and *number*, it also names
    the scan state that *host* keeps for it during this process *run*."""
    value = {"v": _VERSION, "after": after_id}
    if host is not None:
        value.update(host=host, run=run, id=number)
    raw = codec.encode(value)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_cursor(cursor):
    """:return: the :class:`ScanCursor` of *cursor*, or None for no cursor.

    :raise InvalidRequest: ("malformed cursor") if *cursor* cannot be read.
    """
    if cursor is None:
        return None
    if type(cursor) is not str or len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidRequest("malformed cursor")
    try:
        value = codec.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), max_depth=2)
    except (binascii.Error, ValueError, NodeDBError):
        raise InvalidRequest("malformed cursor") from None
    if type(value) is not dict or value.get("v") not in _READABLE:
        raise InvalidRequest("malformed cursor")
    after = value.get("after")
    if type(after) is not int or not 0 <= after <= MAX_ID:
        raise InvalidRequest("malformed cursor")
    names = {"v", "after"} if value["v"] == 1 else {"v", "after", "host", "run", "id"}
    if not value.keys() <= names:
        raise InvalidRequest("malformed cursor")
    if "host" not in value and "run" not in value and "id" not in value:
        return ScanCursor(after)
    host, run, number = value.get("host"), value.get("run"), value.get("id")
    if (
        type(host) is not str
        or not 0 < len(host) <= 64
        or type(run) is not bytes
        or not 0 < len(run) <= 16
        or type(number) is not int
        or not 0 <= number <= MAX_ID
    ):
        raise InvalidRequest("malformed cursor")
    return ScanCursor(after, host, run, number)


def decode_cursor(cursor):
    """:return: the last id the previous page covered, or -1 for no cursor."""
    found = read_cursor(cursor)
    return -1 if found is None else found.after
