"""A connection that carries requests and replies both ways: the protocol under clients and peers.

Each frame is a 4-byte big-endian length followed by one CBOR map. A request is
``{"id": n, "op": name, ...arguments}``; its reply is ``{"id": n, "ok": value}`` or
``{"id": n, "error": {"type": ..., "message": ...}}``. Many requests may be in flight; replies
come back in any order. The first request on a connection must be ``hello``.

Bad input never escapes the connection it arrived on: a frame that is too long or cannot be
decoded is answered with a ``ProtocolError`` (when possible), logged, and the connection is
closed; a well-formed request that is wrong gets an error reply and the connection stays up.
"""

from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.wire import codec

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 4 * 1024 * 1024


class Channel(Int32StringReceiver):
    """One framed connection.

    :ivar dispatch: ``dispatch(request, channel)`` serves an incoming request; it returns
        the reply value or a Deferred of it, or raises a NodeDBError. None refuses requests.
    :ivar on_made: called with the channel once it is connected.
    :ivar on_lost: called with the reason once the connection is gone.
    """

    _log = Logger()

    def __init__(self, dispatch=None, max_frame=DEFAULT_MAX_FRAME, on_made=None, on_lost=None):
        self.MAX_LENGTH = max_frame
        self.dispatch = dispatch
        self.on_made = on_made
        self.on_lost = on_lost
        self.connected_ = False
        #: Set by the serving side once the peer's hello was accepted, with the role it gave.
        self.greeted = False
        self.role = None
        self._next_id = 1
        self._pending = {}  # request id -> (Deferred, deadline)
        self.peer = None

    # -- connection events ------------------------------------------------------------------

    def connectionMade(self):
        self.connected_ = True
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if self.on_made is not None:
            self.on_made(self)

    def connectionLost(self, reason):
        self.connected_ = False
        unread = len(self.recvd)
        if unread and not self.transport.disconnecting:
            # The other end went away in the middle of a frame: bad input like any other.
            self._log.warn("{peer} closed the connection in the middle of a frame ({count} bytes unread)", peer=self.peer, count=unread)
        pending, self._pending = self._pending, {}
        why = f"connection to {self.peer} lost"
        if reason.check(SSL.Error):
            # A TLS handshake refused (either way): say so, not just "lost".
            why = f"TLS with {self.peer} failed: {_tls_reason(reason.value)}"
            self._log.warn("{why}", why=why)
        for d, _deadline in pending.values():
            d.errback(errors.ConnectionLost(why))
        if self.on_lost is not None:
            self.on_lost(reason)

    def lengthLimitExceeded(self, length):
        self._log.warn(
            "closing {peer}: frame of {length} bytes exceeds the {limit}-byte limit",
            peer=self.peer,
            length=length,
            limit=self.MAX_LENGTH,
        )
        self._send_error(None, errors.ProtocolError(f"frame too long ({length} bytes)"))
        self.transport.loseConnection()

    def stringReceived(self, frame):
        if self.transport.disconnecting:
            return  # a violation closed this connection; the frames after it are not served
        try:
            message = codec.decode(frame)
        except errors.ProtocolError as e:
            self._protocol_violation(None, e)
            return
        if type(message) is not dict:
            self._protocol_violation(None, errors.ProtocolError("a message must be a CBOR map"))
            return
        if "op" in message:
            self._serve(message)
        else:
            self._resolve(message)

    def _protocol_violation(self, request_id, error):
        self._log.warn("closing {peer}: {error}", peer=self.peer, error=error.message)
        self._send_error(request_id, error)
        self.transport.loseConnection()

    # -- serving requests -------------------------------------------------------------------

    def _serve(self, request):
        request_id = request.get("id")
        if type(request_id) is not int:
            self._protocol_violation(None, errors.ProtocolError("a request needs an integer id"))
            return
        if self.dispatch is None:
            self._send_error(request_id, errors.InvalidRequest("this end serves no requests"))
            return
        try:
            result = self.dispatch(request, self)
        except errors.ProtocolError as e:
            self._protocol_violation(request_id, e)
            return
        except errors.NodeDBError as e:
            self._send_error(request_id, e)
            return
        except Exception:
            self._log.failure("request {op!r} from {peer} failed", op=request.get("op"), peer=self.peer)
            self._send_error(request_id, errors.NodeDBError("internal error"))
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._send_ok, self._send_failure, (request_id,), None, (request_id, request))
        else:
            self._send_ok(result, request_id)

    def _send_ok(self, value, request_id):
        if self.connected_:
            self.sendString(codec.encode({"id": request_id, "ok": value}))

    def _send_failure(self, failure, request_id, request):
        error = failure.value
        if not isinstance(error, errors.NodeDBError):
            self._log.failure("request {op!r} from {peer} failed", failure, op=request.get("op"), peer=self.peer)
        self._send_error(request_id, error)

    def _send_error(self, request_id, error):
        if self.connected_:
            self.sendString(codec.encode({"id": request_id, "error": errors.to_wire(error)}))

    # -- making requests --------------------------------------------------------------------

    def call(self, op, arguments=None, deadline=None):
        """Send request *op* with *arguments* (a dict).

        :param deadline: clock time after which :meth:`expire` fails the call with Timeout.
        :return: a Deferred that fires with the reply value, or fails with the remote error.
        """
        if not self.connected_:
            return defer.fail(errors.Unavailable(f"not connected to {self.peer}"))
        request_id = self._next_id
        self._next_id += 1
        message = {"id": request_id, "op": op}
        if arguments:
            message.update(arguments)
        d = defer.Deferred()
        self._pending[request_id] = (d, deadline)
        self.sendString(codec.encode(message))
        return d

    def in_flight(self):
        """:return: how many of this end's requests await a reply."""
        return len(self._pending)

    def expire(self, now):
        """Fail every call whose deadline is before *now* with Timeout."""
        late = [rid for rid, (_d, deadline) in self._pending.items() if deadline is not None and deadline < now]
        for request_id in late:
            d, _deadline = self._pending.pop(request_id)
            d.errback(errors.Timeout(f"no reply from {self.peer} in time"))

    def _resolve(self, reply):
        request_id = reply.get("id")
        entry = self._pending.pop(request_id, None) if type(request_id) is int else None
        if entry is None:
            if "error" in reply:
                error = errors.from_wire(reply["error"])
                self._log.warn("{peer} reports: {error}", peer=self.peer, error=str(error))
            else:
                self._log.debug("reply to unknown request {id!r} from {peer}", id=request_id, peer=self.peer)
            return
        d, _deadline = entry
        if "ok" in reply:
            d.callback(reply["ok"])
        else:
            d.errback(Failure(errors.from_wire(reply.get("error"))))


def hello_request(role, **extra):
    """The arguments of the handshake request a *role* (``client`` or ``peer``) sends."""
    return dict(version=PROTOCOL_VERSION, role=role, **extra)


def _tls_reason(error):
    """The readable part of an OpenSSL error: ``certificate verify failed``, ``tlsv1 alert
    unknown ca``, ..."""
    reasons = [item[2] for item in error.args[0] if isinstance(item, tuple) and len(item) == 3] if error.args else []
    return ", ".join(r for r in reasons if r) or str(error)
