"""Scan cursors: opaque text that says where the next page starts.

A cursor is URL-safe base64 of a small CBOR map (``{"v": 1, "after": last id}``), so that
later versions can carry more (such as remote cursor ids) without breaking old clients.
"""

import base64
import binascii

from nodedb.errors import InvalidRequest, NodeDBError
from nodedb.ids import MAX_ID
from nodedb.wire import codec

_VERSION = 1


def encode_cursor(after_id):
    raw = codec.encode({"v": _VERSION, "after": after_id})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor):
    """:return: the last id the previous page covered, or -1 for no cursor."""
    if cursor is None:
        return -1
    if type(cursor) is not str or len(cursor) > 256:
        raise InvalidRequest("malformed cursor")
    try:
        value = codec.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), max_depth=2)
    except (binascii.Error, ValueError, NodeDBError):
        raise InvalidRequest("malformed cursor") from None
    if type(value) is not dict or value.get("v") != _VERSION:
        raise InvalidRequest("malformed cursor")
    after = value.get("after")
    if type(after) is not int or not 0 <= after <= MAX_ID:
        raise InvalidRequest("malformed cursor")
    return after
