"""The failures nodedb reports, on the wire and in the client.

Every error a client can see is a subclass of :class:`NodeDBError`. On the wire an error
travels as ``{"type": <class name>, "message": <text>}`` and :func:`from_wire` turns it back
into the same class, so a caller never parses messages to learn what happened.
"""


class NodeDBError(Exception):
    """Base of every nodedb failure."""

    #: The name this error travels under on the wire.
    wire_name = "NodeDBError"
    #: True when the error is the answer of the host that served the request (rather than
    #: a failure to reach it): a remote Unavailable means nothing was applied.
    remote = False

    def __init__(self, message=""):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message or self.wire_name


class NotFound(NodeDBError):
    """The element (or record type) does not exist."""

    wire_name = "NotFound"


class Conflict(NodeDBError):
    """A compare-and-set failed: the element's version is not the one given."""

    wire_name = "Conflict"


class Timeout(NodeDBError):
    """The request did not complete in time; a write may or may not have been applied."""

    wire_name = "Timeout"


class Unavailable(NodeDBError):
    """No host that can serve the request is reachable, or the store cannot accept writes."""

    wire_name = "Unavailable"


class ConnectionLost(Unavailable):
    """The connection closed while the request was in flight: a write may or may not have been
    applied. (It travels as Unavailable; only the end that saw the loss knows the difference.)"""


class Fenced(Unavailable):
    """The host was removed from its cluster by a recovery from a lost majority
    (``nodedb recover --force``): it serves nothing until its data is wiped and it joins
    again as a new host. The recovered cluster answers a removed host's peer requests so;
    the removed host, once it knows, answers every request Unavailable, saying why."""

    wire_name = "Fenced"


class InvalidRequest(NodeDBError):
    """The request is malformed: wrong types, bad names, oversized documents, unknown commands."""

    wire_name = "InvalidRequest"


class CursorExpired(InvalidRequest):
    """The scan state a cursor names was dropped by the host that issued it (idle too long,
    or evicted to make room): start the scan again. A cursor presented to another host, or
    to the same host after a restart, resumes from its position instead."""

    wire_name = "CursorExpired"


class ProtocolError(NodeDBError):
    """The peer broke the framing or the handshake; the connection is closed."""

    wire_name = "ProtocolError"


_BY_WIRE_NAME = {
    cls.wire_name: cls
    for cls in (NodeDBError, NotFound, Conflict, Timeout, Unavailable, Fenced, InvalidRequest, CursorExpired, ProtocolError)
}


def to_wire(error):
    """The wire form of *error*: any exception that is not a :class:`NodeDBError` is hidden
    behind a generic message so that internals never leak to a peer."""
    if isinstance(error, NodeDBError):
        return {"type": error.wire_name, "message": error.message}
    return {"type": NodeDBError.wire_name, "message": "internal error"}


def from_wire(value):
    """The exception for a wire error; an unknown or malformed one becomes a plain NodeDBError."""
    if not isinstance(value, dict):
        return NodeDBError("malformed error reply")
    cls = _BY_WIRE_NAME.get(value.get("type"), NodeDBError)
    message = value.get("message")
    error = cls(message if isinstance(message, str) else "")
    error.remote = True
    return error
