"""The Twisted client of nodedb.

::

    from nodedb.client import connect

    client = await connect(reactor, ["127.0.0.1:7400"])
    user_id = await client.insert("user", {"name": "ada"})
    doc, version = await client.get("user", user_id)
    await client.update("user", user_id, {"name": "ada", "age": 36}, if_version=version)
    page = await client.scan("user", where={"age": {">=": 18}}, limit=100)
    tx = client.transaction()
    tx.insert("order", {"user": user_id}, near=user_id)
    tx.update("user", user_id, {"name": "ada", "orders": 1})
    new_order_id, new_version = await tx.commit()
    await client.close()

Every method returns a Deferred. Failures are :class:`nodedb.errors.NodeDBError` subclasses.
The client keeps one connection up, to the first reachable of the addresses it was given, and
moves to the next address by itself when that one goes away. A request that certainly was not
applied (the node answered Unavailable, as it does for a partition that is changing primary,
or the request never left) is retried with backoff until its timeout; reads are also retried
when the connection dropped under them. A write whose connection dropped while it was in
flight is not retried (it may have been applied) and fails with
:class:`~nodedb.errors.Unavailable`; a write the cluster could not confirm in time fails with
:class:`~nodedb.errors.Timeout` (it may or may not be applied).
"""

from dataclasses import dataclass

from twisted.internet import defer, task

from nodedb import errors
from nodedb import codec
from nodedb.wire.channel import DEFAULT_MAX_FRAME, hello_request
from nodedb.wire.connection import PersistentConnection, tcp_endpoints

DEFAULT_TIMEOUT = 10.0
CLIENT_NAME = "nodedb-python"
#: First and longest pause between two tries of a request that was not applied.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
HEARTBEAT_INTERVAL = 1.0


def _no_report(rtt, reply):
    """Heartbeat results need no handling: the connection drops itself after misses."""


@dataclass(frozen=True)
class Page:
    """One page of a scan: ``items`` is a list of ``(id, doc, version)`` in id order;
    ``cursor`` resumes after the last one, and is None after the last page."""

    items: list
    cursor: str | None


def _without_none(**arguments):
    return {name: value for name, value in arguments.items() if value is not None}


class Client:
    """A connection to a nodedb cluster; build it with :func:`connect`.

    :param heartbeat: seconds between pings on the connection; after three unanswered ones
        the client drops it and moves to the next address (a host that froze, or was cut off,
        never closes the connection by itself). None: no heartbeat.
    """

    def __init__(self, connection, timeout=DEFAULT_TIMEOUT, heartbeat=HEARTBEAT_INTERVAL):
        self._connection = connection
        self.timeout = timeout
        self._heartbeat = None
        if heartbeat:
            self._heartbeat = task.LoopingCall(connection.beat, heartbeat, _no_report)
            self._heartbeat.clock = connection.clock
            self._heartbeat.start(heartbeat, now=False)

    @property
    def server(self):
        """What the connected node said about itself in the handshake."""
        return self._connection.server

    def _call(self, op, arguments, idempotent=False, document=None):
        if document is not None:
            # A value the node would refuse to decode (a big integer, a date, a set) would
            # make it close the connection, failing every other request in flight on it.
            try:
                codec.check_document(document)
            except errors.InvalidRequest as e:
                return defer.fail(e)
        deadline = self._connection.clock.seconds() + self.timeout
        return self._try(op, arguments, idempotent, deadline, RETRY_FIRST)

    def _try(self, op, arguments, idempotent, deadline, pause):
        # Every try gets what is left of the request's timeout, not a new one.
        remaining = deadline - self._connection.clock.seconds()
        d = self._connection.call(op, arguments, remaining)
        d.addErrback(self._retry, op, arguments, idempotent, deadline, pause)
        return d

    def _retry(self, failure, op, arguments, idempotent, deadline, pause):
        failure.trap(errors.Unavailable)
        if not idempotent and failure.check(errors.ConnectionLost):
            return failure  # a write that may have been applied
        clock = self._connection.clock
        if clock.seconds() + pause >= deadline:
            return failure
        return task.deferLater(clock, pause, self._try, op, arguments, idempotent, deadline, min(pause * 2, RETRY_MAX))

    def insert(self, record_type, doc, near=None):
        """:return: a Deferred that fires with the new element's id."""
        return self._call("insert", _without_none(type=record_type, doc=doc, near=near), document=doc)

    def get(self, record_type, element_id, consistency=None):
        """:return: a Deferred that fires with ``(doc, version)``, or fails with NotFound.

        :param consistency: None (linearizable: the partition's primary answers once a
            majority confirmed it still leads) or ``"replica"`` (the nearest caught-up replica
            answers from its copy, which may be a little stale).
        """
        arguments = _without_none(type=record_type, key=element_id, consistency=consistency)
        d = self._call("get", arguments, idempotent=True)
        return d.addCallback(tuple)

    def update(self, record_type, element_id, doc, if_version=None):
        """Replace the document; :return: a Deferred that fires with the new version."""
        return self._call(
            "update", _without_none(type=record_type, key=element_id, doc=doc, if_version=if_version), document=doc
        )

    def delete(self, record_type, element_id, if_version=None):
        """:return: a Deferred that fires with the version (commit id) of the delete."""
        return self._call("delete", _without_none(type=record_type, key=element_id, if_version=if_version))

    def scan(self, record_type, where=None, limit=None, cursor=None):
        """:return: a Deferred that fires with a :class:`Page`, or fails with
        :class:`~nodedb.errors.CursorExpired` (an InvalidRequest) when the node that issued
        *cursor* dropped its state after an idle time (60 s by default): start again. A cursor
        works on any node; ``Unavailable`` during a failover is retried like any read."""
        d = self._call("scan", _without_none(type=record_type, where=where, limit=limit, cursor=cursor), idempotent=True)
        return d.addCallback(lambda page: Page([tuple(item) for item in page["items"]], page["cursor"]))

    def transaction(self):
        """:return: a :class:`Transaction` to queue operations on."""
        return Transaction(self)

    def status(self):
        """:return: a Deferred that fires with the connected node's status document."""
        return self._call("status", None, idempotent=True)

    def recover(self):
        """Unsafe: recover the cluster through the connected node after its majority is lost
        for good (see docs/running.md). :return: a Deferred that fires with the report: the
        voters now, the hosts removed, the partitions given new primaries and those lost."""
        return self._call("admin.recover", {"force": True})

    def close(self):
        """:return: a Deferred that fires once the connection is closed."""
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        return self._connection.stop()


class Transaction:
    """Operations that :meth:`commit` applies all together or not at all."""

    def __init__(self, client):
        self._client = client
        self._operations = []
        self._committed = False

    def insert(self, record_type, doc, near=None):
        self._operations.append(_without_none(op="insert", type=record_type, doc=doc, near=near))
        return self

    def update(self, record_type, element_id, doc, if_version=None):
        self._operations.append(
            _without_none(op="update", type=record_type, key=element_id, doc=doc, if_version=if_version)
        )
        return self

    def delete(self, record_type, element_id, if_version=None):
        self._operations.append(_without_none(op="delete", type=record_type, key=element_id, if_version=if_version))
        return self

    def commit(self):
        """:return: a Deferred that fires with the results in order (new ids for inserts,
        new versions for updates and deletes), or fails and applies none of them."""
        if self._committed:
            return defer.fail(errors.InvalidRequest("this transaction was already committed"))
        if not self._operations:
            return defer.succeed([])
        self._committed = True
        for index, operation in enumerate(self._operations):
            if "doc" in operation:
                try:
                    codec.check_document(operation["doc"])
                except errors.InvalidRequest as e:
                    return defer.fail(errors.InvalidRequest(f"operation {index}: {e.message}"))
        return self._client._call("transaction", {"ops": self._operations})


def connect(
    reactor, addresses, timeout=DEFAULT_TIMEOUT, max_frame=DEFAULT_MAX_FRAME, heartbeat=HEARTBEAT_INTERVAL, tls=None
):
    """Connect to a nodedb cluster through any of *addresses* (``"host:port"`` texts).

    :param tls: for a cluster that runs with ``--tls``: a TLS directory (``ca.pem``,
        ``cert.pem``, ``key.pem``, as ``nodedb ca client`` writes it) or a
        :class:`~nodedb.security.tls.TLSContext`. The node's certificate must be signed by that
        CA and name the address dialled; this client presents its own certificate.

    :param timeout: seconds each request may take, waiting for a connection included.
    :param heartbeat: seconds between pings that detect a node that stopped answering.
    :return: a Deferred that fires with a :class:`Client` once a node has answered the
        handshake, or fails with :class:`~nodedb.errors.Unavailable` if none of the addresses
        answers (each is tried once), or InvalidRequest for a malformed address.
    """
    if isinstance(addresses, str):
        addresses = [addresses]
    try:
        named = tcp_endpoints(reactor, addresses, _tls_context(tls))
    except errors.NodeDBError as e:
        return defer.fail(e)
    if not named:
        return defer.fail(errors.InvalidRequest("no address to connect to"))
    connection = PersistentConnection(reactor, named, hello_request("client", client=CLIENT_NAME), max_frame=max_frame)
    connection.start()
    d = connection.when_connected(attempts=len(named))
    d.addTimeout(timeout, reactor)

    def failed(reason):
        connection.stop()
        if reason.check(defer.TimeoutError):
            raise errors.Unavailable(f"cannot reach a node ({connection.last_error or 'no answer in time'})")
        return reason

    return d.addCallbacks(lambda _channel: Client(connection, timeout, heartbeat), failed)


def _tls_context(tls):
    if tls is None:
        return None
    from nodedb.security.tls import TLSContext, TLSError

    if isinstance(tls, TLSContext):
        return tls
    try:
        return TLSContext(tls)
    except TLSError as e:
        raise errors.InvalidRequest(f"tls: {e}") from None
