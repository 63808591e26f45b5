"""Any-host routing: every request goes to the host that can answer it.

An element id names its partition and the agreed partition map names the partition's
primary, so the receiving host either runs the request itself (it is that primary) or sends
it straight to the primary over the peer connection (``query.forward``). A forwarded request
is never forwarded again: a host that is no longer the primary answers Unavailable (nothing
applied), and the client library retries. A write whose forward is lost on the way back
fails with Timeout instead, because it may have been applied.

When this host cannot reach the primary directly (its connection to it is down, or the
primary is unavailable from here) while the partition map still names it, the call goes
through another host that relays it once (``query.relay``): :meth:`Router.call_host`, with
the rules of :mod:`nodedb.query.relay`.
"""

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from nodedb import errors
from nodedb.interfaces import IQueryRouter
from nodedb.query import relay
from nodedb.query.api import CLIENT_OPERATIONS
from nodedb.query.local import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from nodedb.query.scans import ScanService, ScanSettings, batch_schema
from nodedb.wire.requests import SCAN
from nodedb.wire.schema import Field, Kind, Schema, integer, of_type
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


def _seconds(value):
    if type(value) not in (int, float) or not value > 0:
        raise errors.InvalidRequest("query.relay: timeout is a positive number of seconds")
    return value


_RELAY_FIELDS = "query.relay: to and call are text, args a map"
_RELAY = Schema(
    "query.relay",
    (
        Field("to", of_type(str, "text", _RELAY_FIELDS), required=True, check_missing=True),
        Field("call", of_type(str, "text", _RELAY_FIELDS), required=True, check_missing=True),
        Field("args", of_type(dict, "map", _RELAY_FIELDS), argument="arguments"),
        Field("timeout", Kind("seconds", _seconds), required=True, check_missing=True),
    ),
    ignore_unknown=True,
)
#: The longest a relay waits for the target (``--peer-timeout`` is at most 300 s).
_MAX_RELAY_TIMEOUT = 300.0


@implementer(IQueryRouter)
class Router:
    """Routes each request to the partition's primary (or nearest replica).

    :param local: the :class:`~nodedb.query.local.LocalQuery` of this host.
    :param host_id: this host's id.
    :param cluster: ``cluster()`` -> the agreed :class:`~nodedb.voting.state.ClusterState`.
    :param transport: the :class:`~nodedb.interfaces.IPeerTransport`.
    :param address_of: ``address_of(host_id)`` -> ``"host:port"`` or None.
    :param insert_hosts: ``insert_hosts()`` -> hosts that are primary of some partition and
        have room, for inserts this host cannot take itself.
    :param nearest_replica: ``nearest_replica(partition)`` -> the closest host holding a
        current copy (this host when it does), for ``consistency="replica"`` reads.
    :param can_insert: ``can_insert()`` -> whether this host takes new elements itself.
    :param timeout: seconds a call to another host may take, relays included.
    :param reachable: ``reachable(host_id)`` -> False when this host cannot reach that one
        directly now (its connection is down, or the host is unavailable from here).
    :param relays: ``relays(host_id)`` -> hosts this one reaches that could relay a call to
        that host, best first (:func:`nodedb.query.relay.rank_relays`).
    :param clock: for the deadlines of calls (by default the clock of *local*).
    :param scan_settings: the :class:`~nodedb.query.scans.ScanSettings` of the scans this
        host coordinates.
    """

    _log = Logger()

    def __init__(
        self,
        local,
        host_id,
        cluster,
        transport,
        address_of,
        insert_hosts,
        nearest_replica,
        can_insert,
        timeout=10.0,
        reachable=None,
        relays=None,
        clock=None,
        scan_settings=None,
    ):
        self.local = local
        self.host_id = host_id
        self.cluster = cluster
        self.transport = transport
        self.address_of = address_of
        self.insert_hosts = insert_hosts
        self.nearest_replica = nearest_replica
        self.can_insert = can_insert
        self.timeout = timeout
        self.reachable = reachable or (lambda host: True)
        self.relays = relays or (lambda host: [])
        self.clock = clock or local.clock
        self.layout = local.storage.layout
        self._turn = itertools.count()
        #: The scans this host coordinates (:mod:`nodedb.query.scans`).
        self.scans = ScanService(
            host_id,
            self.layout,
            partitions=lambda: self.cluster().partitions,
            primary_of=self._scan_primary,
            fetch=self._scan_batch,
            clock=local.clock,
            settings=scan_settings or ScanSettings(),
        )
        #: The schema of the scan batches this host runs for others and for itself.
        self._batch = batch_schema(self.layout, lambda: self.cluster().partitions)
        #: The :class:`~nodedb.transactions.service.TransactionService` of a replicated node.
        self.transactions = None
        #: Calls this host sent through a relay, and calls it relayed for others.
        self.relayed = 0
        self.relays_served = 0

    def install(self, api):
        api.register("query.forward", self._serve_forward, schema=_FORWARD)
        api.register("query.relay", self._serve_relay, schema=_RELAY)

    # -- IQuery -----------------------------------------------------------------------------

    def insert(self, record_type, doc, near=None):
        if near is not None:
            return self._route(
                self.layout.partition_of(near),
                self.local.insert,
                (record_type, doc, near),
                lambda: _request("insert", record_type=record_type, doc=doc, near=near),
            )
        if self.can_insert():
            return self.local.insert(record_type, doc)
        hosts = [h for h in self.insert_hosts() if h != self.host_id]
        if not hosts:
            return defer.fail(errors.Unavailable("no host with room takes inserts now"))
        return self._forward(hosts[next(self._turn) % len(hosts)], _request("insert", record_type=record_type, doc=doc))

    def get(self, record_type, element_id, consistency=None):
        partition = self.layout.partition_of(element_id)

        def request():
            return _request("get", record_type=record_type, element_id=element_id, consistency=consistency)

        if consistency == "replica":
            try:
                host = self.nearest_replica(partition)
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
        assignment = self.cluster().assignments.get(partition)
        return None if assignment is None else assignment.primary

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
            if self.can_insert():
                return self.local.transaction(operations)
            candidates = [h for h in self.insert_hosts() if h != self.host_id]
            if not candidates:
                return defer.fail(errors.Unavailable("no host with room takes inserts now"))
            return self._forward(candidates[next(self._turn) % len(candidates)], _transaction_request(operations))
        try:
            host = self.primary_of(home)
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

    def primary_of(self, partition):
        """The host id the agreed map names primary of *partition*; :raise Unavailable: if none."""
        assignment = self.cluster().assignments.get(partition)
        if assignment is None or assignment.primary is None:
            raise errors.Unavailable(f"partition {partition} has no primary now")
        return assignment.primary

    def _route(self, partition, run, arguments, request):
        """``run(*arguments)`` here if this host is the partition's primary, else forward
        ``request()`` (the checked arguments need no second parse when they stay here)."""
        try:
            host = self.primary_of(partition)
        except errors.NodeDBError as e:
            return defer.fail(e)
        if host == self.host_id:
            return run(*arguments)
        return self._forward(host, request())

    def _forward(self, host, request):
        """Send the client *request* to *host*, which runs it (``query.forward``)."""
        return self.call_host(host, "query.forward", {"request": request}, request["op"] in _WRITES)

    # -- calling other hosts, directly or through a relay ------------------------------------

    def call_host(self, host, op, arguments, write, timeout=None):
        """Call the peer operation *op* on *host*: over this host's own connection to it, or,
        when this host cannot reach it, through another host that relays the call once
        (``query.relay``; the rules are in :mod:`nodedb.query.relay`).

        :param write: True if the call may change state. It then goes through a relay only
            while no earlier attempt can have reached *host*, and fails with Timeout (the
            outcome unknown) once one may have; a read tries every way while time lasts.
        :param timeout: seconds for the whole call, every attempt included (by default the
            router's ``timeout``).
        :return: a Deferred of the reply. An error *host* answered passes through unchanged
            (``remote``); otherwise the call fails with Timeout (a write that may have been
            applied) or Unavailable (nothing was applied: it may be sent again).
        """
        timeout = self.timeout if timeout is None else timeout
        return defer.ensureDeferred(self._call_host(host, op, arguments, write, timeout))

    async def _call_host(self, host, op, arguments, write, timeout):
        deadline = self.clock.seconds() + timeout
        address = self.address_of(host)
        why = f"the address of host {host} is not known"
        relays = self.relays(host) if address is None or not self.reachable(host) else []
        if address is not None and not relays:
            try:
                return await self.transport.call(address, op, arguments, timeout)
            except errors.NodeDBError as e:
                outcome = relay.classify(e)
                if outcome == relay.FINAL:
                    raise
                if outcome == relay.UNKNOWN and write:
                    raise _outcome_unknown(host) from None
                why = str(e)
            relays = self.relays(host)
        for via in relays[: relay.MAX_RELAYS]:
            remaining = deadline - self.clock.seconds()
            if remaining < relay.MIN_ATTEMPT:
                break
            via_address = self.address_of(via)
            if via_address is None:
                continue
            self.relayed += 1
            self._log.debug("calling {op} on {host} through {via}", op=op, host=host, via=via)
            arguments_through = {"to": host, "call": op, "args": arguments, "timeout": remaining * relay.RELAY_SHARE}
            try:
                reply = await self.transport.call(via_address, "query.relay", arguments_through, remaining)
            except errors.NodeDBError as e:
                # The relay's own refusal (it answered before calling anyone) sent nothing on.
                outcome, detail = (relay.UNSENT if e.remote else relay.classify(e)), str(e)
                if outcome == relay.FINAL:
                    raise
            else:
                outcome, detail = relay.read_relay_reply(reply)
                if outcome == relay.FINAL:
                    if isinstance(detail, errors.NodeDBError):
                        raise detail  # the target's own answer, remote
                    return detail
            if outcome == relay.UNKNOWN and write:
                raise _outcome_unknown(host)
            why = f"through {via}: {detail}"
        raise errors.Unavailable(f"cannot reach host {host} ({why})")

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

    def _serve_relay(self, to, call, arguments, timeout):
        """Pass a call on to its target, once, over this host's own connection: never
        through another relay, so that relayed calls cannot loop. The reply tells the
        target's answer apart from this host's failure to get one
        (:func:`nodedb.query.relay.relay_reply`)."""
        if call == "query.relay":
            raise errors.InvalidRequest("query.relay: a relayed call is not relayed again")
        if to == self.host_id:
            return {relay.UNSENT: "the relay is the target itself"}
        address = self.address_of(to)
        if address is None:
            return {relay.UNSENT: f"the address of host {to} is not known here"}
        if not self.transport.reachable(address):
            return {relay.UNSENT: f"host {to} is not reachable from here either"}
        self.relays_served += 1
        d = self.transport.call(address, call, arguments, min(timeout, _MAX_RELAY_TIMEOUT))
        return d.addCallbacks(lambda value: {"ok": value}, self._relay_failed)

    def _relay_failed(self, failure):
        if not failure.check(errors.NodeDBError):
            self._log.failure("relaying a call failed", failure)
        return relay.relay_reply(failure.value)


def _outcome_unknown(host):
    return errors.Timeout(f"host {host} did not answer in time; the write may or may not be applied")


def _transaction_request(operations):
    return {"op": "transaction", "ops": to_wire(operations)}


def _request(op, **arguments):
    """The forwarded request of *op* with the keyword *arguments* of its handler."""
    return {"op": op, **_FORWARDED[op].to_wire(**arguments)}
