"""The request API every host serves: checks each request, then hands it to its handler.

This is the boundary where untrusted maps become typed calls. Each operation is registered
with its :class:`~nodedb.wire.schema.Schema` (the client operations' are in
:data:`CLIENT_OPERATIONS`), every request is checked against it once, here (type names, ids,
versions, documents, filters; an unknown field is refused), and its handler gets the checked
arguments, so the layers below can trust what they are given. The client operations are
served by the node's :class:`~nodedb.interfaces.IQuery`. See docs/protocol.md for each message.
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.wire.channel import PROTOCOL_VERSION
from nodedb.wire.requests import PING, REQUESTS, STATUS, parse_arguments
from nodedb.wire.schema import Field, Kind, Schema
from nodedb.wire.transaction import TRANSACTION

#: The client operations (``hello``, the handshake, aside) and their schemas. Each is served
#: by the :class:`~nodedb.interfaces.IQuery` method of the same name, but ``ping``.
CLIENT_OPERATIONS = {**REQUESTS, "transaction": TRANSACTION, "status": STATUS, "ping": PING}


@dataclass(frozen=True)
class Operation:
    """An operation a node serves.

    :ivar handler: ``handler(**arguments)``, given the arguments *schema* checked; or, for an
        operation registered without a schema, ``handler(request)``, given the request map
        as it came, which it checks itself.
    :ivar schema: a :class:`~nodedb.wire.schema.Schema`, or None.
    :ivar peer: served on peer connections only.
    """

    handler: Callable
    schema: Schema = None
    peer: bool = True

    def serve(self, request):
        if self.schema is None:
            return self.handler(request)
        return self.handler(**self.schema.arguments(request))


class RequestAPI:
    """Serves the client and peer requests of one node over any :class:`Channel`.

    :param query: the node's :class:`~nodedb.interfaces.IQuery`, or None for a host that serves
        only peer operations.
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
        self._operations = {}
        for op, schema in CLIENT_OPERATIONS.items():
            if op == "ping":
                self.register(op, _pong, client=True, schema=schema)
            elif query is not None:  # else a host that serves peer operations only (test peers)
                self.register(op, getattr(query, op), client=True, schema=schema)

    @property
    def operations(self):
        """``{op: Operation}`` of every operation served (``hello`` aside), read-only."""
        return MappingProxyType(self._operations)

    def register(self, op, handler, client=False, schema=None):
        """Serve *op* (a peer operation such as ``gossip.push``, or with *client* one that
        clients may send too, such as ``admin.recover``) with *handler*: with a *schema*,
        ``handler(**arguments)`` gets the arguments it checked; without, ``handler(request)``
        gets the request map, to check itself.

        Peer operations are served only on connections whose hello said ``role: peer``.
        """
        if op in self._operations:
            raise ValueError(f"op {op!r} is already served")
        self._operations[op] = Operation(handler, schema, peer=not client)

    def dispatch(self, request, channel):
        """Serve one request from *channel* (see :class:`nodedb.wire.channel.Channel`)."""
        op = request.get("op")
        if not channel.greeted:
            if op != "hello":
                raise errors.ProtocolError("the first request on a connection must be hello")
            return self._greet(request, channel)
        operation = self._operations.get(op) if type(op) is str else None
        if operation is None or (operation.peer and channel.role != "peer"):
            raise errors.InvalidRequest(f"unknown op {op!r}")
        if self._admit_request is not None:
            self._admit_request(op, channel)
        if self.metrics is None:
            return operation.serve(request)
        start = self.clock.seconds()
        try:
            result = operation.serve(request)
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
        channel.accept_hello(role, request.get("host") if role == "peer" else None)
        return self._hello()


def _pong():
    return "pong"
