"""The requests of nodedb's client, written once for :class:`~nodedb.client.Client` (which
retries and fails over) and :class:`~nodedb.client.NodeDBProtocol` (one connection)."""

from dataclasses import dataclass

from twisted.internet import defer

from nodedb import errors
from nodedb import codec


@dataclass(frozen=True)
class Page:
    """One page of a scan: ``items`` is a list of ``(id, doc, version)`` in id order;
    ``cursor`` resumes after the last one, and is None after the last page."""

    items: list
    cursor: str | None


def _without_none(**arguments):
    return {name: value for name, value in arguments.items() if value is not None}


class Operations:
    """The operations of the wire protocol (docs/protocol.md) as Deferred-returning methods.

    A subclass sends them with ``_send(op, arguments, idempotent)``, which returns a Deferred
    of the reply value; *idempotent* says that sending the request twice does no harm.
    """

    def _call(self, op, arguments, idempotent=False, document=None):
        if document is not None:
            # A value the node would refuse to decode (a big integer, a date, a set) would
            # make it close the connection, failing every other request in flight on it.
            try:
                codec.check_document(document)
            except errors.InvalidRequest as e:
                return defer.fail(e)
        return self._send(op, arguments, idempotent)

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
