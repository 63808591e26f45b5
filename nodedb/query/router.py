"""Any-host routing: every request goes to the host that can answer it.

An element id names its partition and the agreed partition map names the partition's
primary, so the receiving host either runs the request itself (it is that primary) or sends
it straight to the primary over the peer connection (``query.forward``). A forwarded request
is never forwarded again: a host that is no longer the primary answers Unavailable (nothing
applied), and the client library retries. A write whose forward is lost on the way back
fails with Timeout instead, because it may have been applied.
"""

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from nodedb import errors
from nodedb.interfaces import IQuery
from nodedb.query.api import parse_arguments, parse_transaction
from nodedb.query.cursor import decode_cursor, encode_cursor
from nodedb.query.local import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

_WRITES = frozenset({"insert", "update", "delete", "transaction"})


@implementer(IQuery)
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
    """

    _log = Logger()

    def __init__(
        self, local, host_id, cluster, transport, address_of, insert_hosts, nearest_replica, can_insert, timeout=10.0
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
        self.layout = local.storage.layout
        self._turn = itertools.count()

    def install(self, api):
        api.register("query.forward", self._serve_forward)

    # -- IQuery -----------------------------------------------------------------------------

    def insert(self, record_type, doc, near=None):
        if near is not None:
            return self._route(
                self.layout.partition_of(near),
                self.local.insert,
                (record_type, doc, near),
                lambda: _request("insert", type=record_type, doc=doc, near=near),
            )
        if self.can_insert():
            return self.local.insert(record_type, doc)
        hosts = [h for h in self.insert_hosts() if h != self.host_id]
        if not hosts:
            return defer.fail(errors.Unavailable("no host with room takes inserts now"))
        return self._forward(hosts[next(self._turn) % len(hosts)], _request("insert", type=record_type, doc=doc))

    def get(self, record_type, element_id, consistency=None):
        partition = self.layout.partition_of(element_id)

        def request():
            return _request("get", type=record_type, key=element_id, consistency=consistency)

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
            lambda: _request("update", type=record_type, key=element_id, doc=doc, if_version=if_version),
        )

    def delete(self, record_type, element_id, if_version=None):
        return self._route(
            self.layout.partition_of(element_id),
            self.local.delete,
            (record_type, element_id, if_version),
            lambda: _request("delete", type=record_type, key=element_id, if_version=if_version),
        )

    def scan(self, record_type, where=None, limit=None, cursor=None):
        limit = DEFAULT_PAGE_SIZE if limit is None else limit
        if not 1 <= limit <= MAX_PAGE_SIZE:
            return defer.fail(errors.InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}"))
        try:
            after = decode_cursor(cursor)
        except errors.NodeDBError as e:
            return defer.fail(e)
        return defer.ensureDeferred(self._scan(record_type, where, limit, after))

    async def _scan(self, record_type, where, limit, after):
        """Walk the partitions in id order, one request per run of partitions that share a
        primary, until the page is full."""
        items = []
        count = self.cluster().partitions
        partition = self.layout.partition_of(after + 1)
        while partition < count and len(items) < limit:
            host = self._primary_of(partition)
            last = partition
            while last + 1 < count and self._primary_of(last + 1) == host:
                last += 1
            until = self.layout.last_id(last)
            cursor = encode_cursor(after) if after >= 0 else None
            request = _request("scan", type=record_type, where=where, limit=limit - len(items), cursor=cursor, until=until)
            if host == self.host_id:
                page = await defer.maybeDeferred(self.local.scan, record_type, where, limit - len(items), cursor, until)
            else:
                page = await self._forward(host, request)
            items.extend(page["items"])
            if page["cursor"] is not None:
                return {"items": items, "cursor": page["cursor"]}
            after, partition = until, last + 1
        return {"items": items, "cursor": encode_cursor(after) if partition < count else None}

    def transaction(self, operations):
        partitions = set()
        for operation in operations:
            key = operation.get("id", operation.get("near"))
            if key is not None:
                partitions.add(self.layout.partition_of(key))
        try:
            hosts = {self._primary_of(p) for p in partitions}
        except errors.NodeDBError as e:
            return defer.fail(e)
        if len(hosts) > 1:
            return defer.fail(
                errors.InvalidRequest(
                    "this transaction spans partitions led by different hosts; "
                    "for now a transaction must stay within one primary host's partitions"
                )
            )
        host = hosts.pop() if hosts else None
        if host is None:
            if self.can_insert():
                return self.local.transaction(operations)
            candidates = [h for h in self.insert_hosts() if h != self.host_id]
            if not candidates:
                return defer.fail(errors.Unavailable("no host with room takes inserts now"))
            host = candidates[next(self._turn) % len(candidates)]
        if host == self.host_id:
            return self.local.transaction(operations)
        wire = []
        for operation in operations:
            item = {name: value for name, value in operation.items() if name != "id" and value is not None}
            if "id" in operation:
                item["key"] = operation["id"]
            wire.append(item)
        return self._forward(host, {"op": "transaction", "ops": wire})

    def status(self):
        return self.local.status()

    # -- routing ----------------------------------------------------------------------------

    def _primary_of(self, partition):
        assignment = self.cluster().assignments.get(partition)
        if assignment is None or assignment.primary is None:
            raise errors.Unavailable(f"partition {partition} has no primary now")
        return assignment.primary

    def _route(self, partition, run, arguments, request):
        """``run(*arguments)`` here if this host is the partition's primary, else forward
        ``request()`` (the checked arguments need no second parse when they stay here)."""
        try:
            host = self._primary_of(partition)
        except errors.NodeDBError as e:
            return defer.fail(e)
        if host == self.host_id:
            return run(*arguments)
        return self._forward(host, request())

    def _forward(self, host, request):
        address = self.address_of(host)
        if address is None:
            return defer.fail(errors.Unavailable(f"the address of host {host} is not known"))
        d = self.transport.call(address, "query.forward", {"request": request}, self.timeout)
        return d.addErrback(self._forward_failed, request["op"] in _WRITES)

    @staticmethod
    def _forward_failed(failure, write):
        error = failure.value
        if getattr(error, "remote", False):
            return failure  # the primary's own answer
        if isinstance(error, (errors.ConnectionLost, errors.Timeout)) and write:
            raise errors.Timeout("the primary did not answer in time; the write may or may not be applied")
        if isinstance(error, errors.NodeDBError):
            raise errors.Unavailable(f"cannot reach the partition's host: {error}")
        return failure

    # -- serving forwarded requests ---------------------------------------------------------

    def _serve_forward(self, request):
        inner = request.get("request")
        if type(inner) is not dict:
            raise errors.InvalidRequest("query.forward: request is a map")
        return self._run_local(inner)

    def _run_local(self, request):
        """Run *request* here, as the partition's primary (or replica), never forwarding."""
        op = request.get("op")
        local = self.local
        if op == "transaction":
            return local.transaction(parse_transaction(request.get("ops")))
        if op == "scan":
            until = request.get("until")
            if type(until) is not int:
                raise errors.InvalidRequest("query.forward: a scan needs until")
            a = parse_arguments("scan", request, ignore=frozenset({"op", "until"}))
            return local.scan(a["type"], a.get("where"), a.get("limit"), a.get("cursor"), until)
        if op not in ("insert", "get", "update", "delete"):
            raise errors.InvalidRequest(f"query.forward: cannot forward {op!r}")
        a = parse_arguments(op, request, ignore=frozenset({"op"}))
        if op == "insert":
            return local.insert(a["type"], a["doc"], a.get("near"))
        if op == "get":
            return local.get(a["type"], a["key"], a.get("consistency"))
        if op == "update":
            return local.update(a["type"], a["key"], a["doc"], a.get("if_version"))
        return local.delete(a["type"], a["key"], a.get("if_version"))


def _request(op, **arguments):
    return {"op": op, **{name: value for name, value in arguments.items() if value is not None}}
