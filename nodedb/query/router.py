"""Any-host routing: every request goes to the host that can answer it.

An element id names its partition and the agreed partition map names the partition's
primary, so the receiving host either runs the request itself (it is that primary) or sends
it straight to the primary over the peer connection (``query.forward``). A forwarded request
is never forwarded again: a host that is no longer the primary answers Unavailable (nothing
applied), and the client library retries. A write whose forward is lost on the way back
fails with Timeout instead, because it may have been applied.

When this host cannot reach the primary directly (its connection to it is down, or the
primary is unavailable from here) while the partition map still names it, the call goes
through another host that relays it once (``query.relay``):
:class:`~nodedb.query.calls.HostCalls`, with the rules of :mod:`nodedb.query.relay`.
"""

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from nodedb import errors
from nodedb.interfaces import IQueryRouter
from nodedb.query.api import CLIENT_OPERATIONS
from nodedb.query.local import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from nodedb.query.scans import ScanService, ScanSettings, batch_schema
from nodedb.wire.requests import SCAN
from nodedb.wire.schema import Field, Schema, integer, of_type
from nodedb.wire.transaction import plan, to_wire

_WRITES = frozenset({"insert", "update", "delete", "transaction"})
#: The client operations a host runs for another that forwarded them (``query.forward``),
#: checked by the same schemas as a client's request. A scan arrives in one of two other
#: forms: a batch of partitions (``parts``, :func:`~nodedb.query.scans.batch_schema`), or,
#: from hosts of earlier versions, a client scan up to ``until``, :data:`_RANGE_SCAN`.
_FORWARDED = {op: CLIENT_OPERATIONS[op] for op in ("insert", "get", "update", "delete", "transaction")}
_RANGE_SCAN = Schema(
    "scan", SCAN.fields + (Field("until", integer("query.forward: a scan needs until"), required=True, check_missing=True),)
)
_OP_ONLY = frozenset({"op"})
_FORWARD = Schema(
    "query.forward",
    (Field("request", of_type(dict, "map", "query.forward: request is a map"), required=True, check_missing=True),),
    ignore_unknown=True,
)


@implementer(IQueryRouter)
class Router:
    """Routes each request to the partition's primary (or nearest replica).

    :param local: the :class:`~nodedb.query.local.LocalQuery` of this host.
    :param host_id: this host's id.
    :param placement: the :class:`~nodedb.placement.Placement`: which host leads a
        partition, which is nearest, which take inserts.
    :param calls: the :class:`~nodedb.query.calls.HostCalls` that reach other hosts.
    :param transactions: the :class:`~nodedb.interfaces.ITransactions` that coordinates
        transactions across partitions (None: every transaction runs here).
    :param scan_settings: the :class:`~nodedb.query.scans.ScanSettings` of the scans this
        host coordinates.
    """

    _log = Logger()

    def __init__(self, local, host_id, placement, calls, transactions=None, scan_settings=None):
        self.local = local
        self.host_id = host_id
        self.placement = placement
        self.calls = calls
        self.transactions = transactions
        self.layout = local.storage.layout
        self._turn = itertools.count()
        #: The scans this host coordinates (:mod:`nodedb.query.scans`).
        self.scans = ScanService(
            host_id,
            self.layout,
            partitions=placement.partitions,
            primary_of=self._scan_primary,
            fetch=self._scan_batch,
            clock=local.clock,
            settings=scan_settings or ScanSettings(),
        )
        #: The schema of the scan batches this host runs for others and for itself.
        self._batch = batch_schema(self.layout, placement.partitions)

    def install(self, api):
        api.register("query.forward", self._serve_forward, schema=_FORWARD)

    # -- IQuery -----------------------------------------------------------------------------

    def insert(self, record_type, doc, near=None):
        if near is not None:
            return self._route(
                self.layout.partition_of(near),
                self.local.insert,
                (record_type, doc, near),
                lambda: _request("insert", record_type=record_type, doc=doc, near=near),
            )
        if self.placement.can_insert():
            return self.local.insert(record_type, doc)
        hosts = [h for h in self.placement.insert_hosts() if h != self.host_id]
        if not hosts:
            return defer.fail(errors.Unavailable("no host with room takes inserts now"))
        return self._forward(hosts[next(self._turn) % len(hosts)], _request("insert", record_type=record_type, doc=doc))

    def get(self, record_type, element_id, consistency=None):
        partition = self.layout.partition_of(element_id)

        def request():
            return _request("get", record_type=record_type, element_id=element_id, consistency=consistency)

        if consistency == "replica":
            try:
                host = self.placement.nearest_replica(partition)
            except errors.NodeDBError as e:
                return defer.fail(e)
            if host == self.host_id:
                return self.local.read(record_type, element_id)
            return self._forward(host, request())
        return self._route(partition, self.local.get, (record_type, element_id), request)

    def update(self, record_type, element_id, doc, if_version=None):
        return self._route(
            self.layout.partition_of(element_id),
            self.local.update,
            (record_type, element_id, doc, if_version),
            lambda: _request("update", record_type=record_type, element_id=element_id, doc=doc, if_version=if_version),
        )

    def delete(self, record_type, element_id, if_version=None):
        return self._route(
            self.layout.partition_of(element_id),
            self.local.delete,
            (record_type, element_id, if_version),
            lambda: _request("delete", record_type=record_type, element_id=element_id, if_version=if_version),
        )

    def scan(self, record_type, where=None, limit=None, cursor=None):
        """A page of a scan of every partition at once, merged in id order
        (:class:`~nodedb.query.scans.ScanService`)."""
        limit = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            return defer.fail(errors.InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}"))
        return self.scans.page(record_type, where, limit, cursor)

    def _scan_primary(self, partition):
        try:
            return self.placement.primary_of(partition)
        except errors.Unavailable:
            return None

    def _scan_batch(self, host, request):
        """One batch of a scan this host coordinates, run by *host* (this one included)."""
        if host == self.host_id:
            return self._serve_forward(request)
        return self._forward(host, request)

    def transaction(self, operations):
        """One commit at the partition's primary when every operation is in one partition;
        otherwise two-phase commit coordinated by the primary of the home partition (see
        :mod:`nodedb.transactions.service`)."""
        home, groups = plan(operations, self.layout.partition_of)
        if home is None:
            if self.placement.can_insert():
                return self.local.transaction(operations)
            candidates = [h for h in self.placement.insert_hosts() if h != self.host_id]
            if not candidates:
                return defer.fail(errors.Unavailable("no host with room takes inserts now"))
            return self._forward(candidates[next(self._turn) % len(candidates)], _transaction_request(operations))
        try:
            host = self.placement.primary_of(home)
        except errors.NodeDBError as e:
            return defer.fail(e)
        if host == self.host_id:
            return self._transaction_here(operations)
        return self._forward(host, _transaction_request(operations))

    def _transaction_here(self, operations):
        home, groups = plan(operations, self.layout.partition_of)
        if len(groups) > 1 and self.transactions is not None:
            return self.transactions.run(operations)
        if home is not None:
            anchor = next(op.get("id", op.get("near")) for op in operations if op.get("id", op.get("near")) is not None)
            operations = [dict(op, near=anchor) if op["op"] == "insert" and op.get("near") is None else op for op in operations]
        return self.local.transaction(operations)

    def status(self):
        return self.local.status()

    # -- routing ----------------------------------------------------------------------------

    def _route(self, partition, run, arguments, request):
        """``run(*arguments)`` here if this host is the partition's primary, else forward
        ``request()`` (the checked arguments need no second parse when they stay here)."""
        try:
            host = self.placement.primary_of(partition)
        except errors.NodeDBError as e:
            return defer.fail(e)
        if host == self.host_id:
            return run(*arguments)
        return self._forward(host, request())

    def _forward(self, host, request):
        """Send the client *request* to *host*, which runs it (``query.forward``)."""
        return self.calls.call_host(host, "query.forward", {"request": request}, request["op"] in _WRITES)

    # -- serving forwarded requests ---------------------------------------------------------

    def _serve_forward(self, request):
        """Run *request*, forwarded by another host (or a scan batch of this host's own), here:
        as the partition's primary (or replica), never forwarding it again."""
        op = request.get("op")
        if op == "scan":
            schema, run = (self._batch, self.local.scan_parts) if "parts" in request else (_RANGE_SCAN, self.local.scan)
        elif type(op) is str and op in _FORWARDED:
            # What the router does with each, LocalQuery does on this host alone.
            schema, run = _FORWARDED[op], self._transaction_here if op == "transaction" else getattr(self.local, op)
        else:
            raise errors.InvalidRequest(f"query.forward: cannot forward {op!r}")
        return run(**schema.arguments(request, envelope=_OP_ONLY))



def _transaction_request(operations):
    return {"op": "transaction", "ops": to_wire(operations)}


def _request(op, **arguments):
    """The forwarded request of *op* with the keyword *arguments* of its handler."""
    return {"op": op, **_FORWARDED[op].to_wire(**arguments)}
