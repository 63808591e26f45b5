"""The request API every host serves: checks each request, then hands it to :class:`IQuery`.

This is the boundary where untrusted maps become typed calls. Every argument is checked here
(type names, ids, versions, documents, filters) and any unknown field is refused, so the
layers below can trust what they are given. See docs/protocol.md for each message.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.ids import check_element_id
from nodedb import codec
from nodedb.wire.channel import PROTOCOL_VERSION

MAX_TRANSACTION_OPERATIONS = 10_000


def _version(value):
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise errors.InvalidRequest("a version is a non-negative integer")
    return value


def _limit(value):
    if value is None:
        return None
    if type(value) is not int:
        raise errors.InvalidRequest("limit is an integer")
    return value


def _optional_id(value):
    return None if value is None else check_element_id(value)


def _cursor(value):
    if value is not None and type(value) is not str:
        raise errors.InvalidRequest("cursor is text")
    return value


def _consistency(value):
    if value not in (None, "linearizable", "replica"):
        raise errors.InvalidRequest('consistency is "linearizable" (the default) or "replica"')
    return None if value == "linearizable" else value


def _where(value):
    if value is not None and type(value) is not dict:
        raise errors.InvalidRequest("where is a map")
    return value


#: For each operation, its fields: name -> (checker, required).
_FIELDS = {
    "insert": {"type": (codec.check_type_name, True), "doc": (codec.check_document, True), "near": (_optional_id, False)},
    "get": {
        "type": (codec.check_type_name, True),
        "key": (check_element_id, True),
        "consistency": (_consistency, False),
    },
    "update": {
        "type": (codec.check_type_name, True),
        "key": (check_element_id, True),
        "doc": (codec.check_document, True),
        "if_version": (_version, False),
    },
    "delete": {"type": (codec.check_type_name, True), "key": (check_element_id, True), "if_version": (_version, False)},
    "scan": {
        "type": (codec.check_type_name, True),
        "where": (_where, False),
        "limit": (_limit, False),
        "cursor": (_cursor, False),
    },
}
_ENVELOPE = frozenset({"id", "op"})
_ALLOWED = {op: frozenset(fields) for op, fields in _FIELDS.items()}
_OP_ONLY = frozenset({"op"})


def parse_arguments(op, message, ignore=_ENVELOPE):
    """The checked arguments of *op* taken from *message*, as keyword arguments.

    :raise InvalidRequest: for a missing, mistyped or unknown field.
    """
    fields = _FIELDS[op]
    if not message.keys() <= _ALLOWED[op] | ignore:
        unknown = sorted(map(repr, message.keys() - _ALLOWED[op] - ignore))
        raise errors.InvalidRequest(f"{op}: unknown field {unknown[0]}")
    arguments = {}
    for name, (check, required) in fields.items():
        if name in message:
            arguments[name] = check(message[name])
        elif required:
            raise errors.InvalidRequest(f"{op}: missing field {name!r}")
    return arguments


def parse_transaction(operations):
    """The checked operations of a ``transaction`` request."""
    if type(operations) is not list or not operations:
        raise errors.InvalidRequest("transaction: ops must be a non-empty list")
    if len(operations) > MAX_TRANSACTION_OPERATIONS:
        raise errors.InvalidRequest(f"transaction: at most {MAX_TRANSACTION_OPERATIONS} operations")
    parsed = []
    for index, operation in enumerate(operations):
        op = operation.get("op") if type(operation) is dict else None
        if op not in ("insert", "update", "delete"):
            raise errors.InvalidRequest(f"transaction: operation {index} must be insert, update or delete")
        try:
            arguments = parse_arguments(op, operation, ignore=_OP_ONLY)
        except errors.InvalidRequest as e:
            raise errors.InvalidRequest(f"transaction: operation {index}: {e.message}") from None
        arguments["op"] = op
        if "key" in arguments:
            arguments["id"] = arguments.pop("key")
        parsed.append(arguments)
    return parsed


class RequestAPI:
    """Serves the client and peer requests of one node over any :class:`Channel`.

    :param query: the node's :class:`~nodedb.interfaces.IQuery`.
    :param hello: a callable returning what a ``hello`` reply carries about this node.
    :param metrics: a :class:`nodedb.metrics.NodeMetrics`, or None.
    :param clock: an ``IReactorTime`` for request latencies.
    """

    _log = Logger()

    def __init__(self, query, hello, clock, metrics=None, admit_peer=None, admit_request=None):
        self.query = query
        self._hello = hello
        self._admit_peer = admit_peer
        #: ``admit_request(op, channel)`` raises to refuse a request (a fenced host, or one
        #: from a host a recovery removed).
        self._admit_request = admit_request
        self.clock = clock
        self.metrics = metrics
        self._handlers = {
            "insert": self._insert,
            "get": self._get,
            "update": self._update,
            "delete": self._delete,
            "scan": self._scan,
            "transaction": self._transaction,
            "status": self._status,
            "ping": self._ping,
        }
        self._peer_ops = set()

    def register(self, op, handler, client=False):
        """Serve *op* (a peer operation such as ``gossip.push``, or with *client* one that
        clients may send too, such as ``admin.recover``) with ``handler(request)``.

        Peer operations are served only on connections whose hello said ``role: peer``.
        """
        if op in self._handlers:
            raise ValueError(f"op {op!r} is already served")
        self._handlers[op] = handler
        if not client:
            self._peer_ops.add(op)

    def dispatch(self, request, channel):
        """Serve one request from *channel* (see :class:`nodedb.wire.channel.Channel`)."""
        op = request.get("op")
        if not channel.greeted:
            if op != "hello":
                raise errors.ProtocolError("the first request on a connection must be hello")
            return self._greet(request, channel)
        handler = self._handlers.get(op) if type(op) is str else None
        if handler is None or (op in self._peer_ops and channel.role != "peer"):
            raise errors.InvalidRequest(f"unknown op {op!r}")
        if self._admit_request is not None:
            self._admit_request(op, channel)
        if self.metrics is None:
            return handler(request)
        start = self.clock.seconds()
        try:
            result = handler(request)
        except errors.NodeDBError as e:
            self.metrics.observe(op, e.wire_name, self.clock.seconds() - start)
            raise
        if isinstance(result, defer.Deferred):
            return result.addBoth(self._observe, op, start)
        self.metrics.observe(op, "ok", self.clock.seconds() - start)
        return result

    def _observe(self, result, op, start):
        outcome = "ok"
        if isinstance(result, Failure):
            error = result.value
            outcome = error.wire_name if isinstance(error, errors.NodeDBError) else "internal"
        self.metrics.observe(op, outcome, self.clock.seconds() - start)
        return result

    def _greet(self, request, channel):
        version = request.get("version")
        if version != PROTOCOL_VERSION:
            raise errors.ProtocolError(
                f"protocol version {version!r} is not supported; this node speaks {PROTOCOL_VERSION}"
            )
        role = request.get("role", "client")
        if role not in ("client", "peer"):
            raise errors.ProtocolError(f"unknown role {role!r}")
        if role == "peer" and self._admit_peer is not None:
            self._admit_peer(request, channel)
        channel.role = role
        channel.peer_host = request.get("host") if role == "peer" else None
        channel.greeted = True
        return self._hello()

    def _insert(self, request):
        a = parse_arguments("insert", request)
        return self.query.insert(a["type"], a["doc"], a.get("near"))

    def _get(self, request):
        a = parse_arguments("get", request)
        return self.query.get(a["type"], a["key"], a.get("consistency"))

    def _update(self, request):
        a = parse_arguments("update", request)
        return self.query.update(a["type"], a["key"], a["doc"], a.get("if_version"))

    def _delete(self, request):
        a = parse_arguments("delete", request)
        return self.query.delete(a["type"], a["key"], a.get("if_version"))

    def _scan(self, request):
        a = parse_arguments("scan", request)
        return self.query.scan(a["type"], a.get("where"), a.get("limit"), a.get("cursor"))

    def _transaction(self, request):
        unknown = set(request) - _ENVELOPE - {"ops"}
        if unknown:
            # repr first: the keys may mix text and bytes, which do not sort together.
            raise errors.InvalidRequest(f"transaction: unknown field {sorted(map(repr, unknown))[0]}")
        return self.query.transaction(parse_transaction(request.get("ops")))

    def _status(self, request):
        return self.query.status()

    def _ping(self, request):
        return "pong"
