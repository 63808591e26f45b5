"""Assembly of one node: the only place where the services are built and wired together."""

import secrets
import time

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

import nodedb
from nodedb.config import DEFAULT_PARTITIONS, ConfigError
from nodedb.ids import IdAllocator, IdLayout
from nodedb.metrics import NodeMetrics
from nodedb.query.api import RequestAPI
from nodedb.query.local import LocalQuery
from nodedb.wire.tcp import TCPTransport

#: Meta keys written once, when a cluster is bootstrapped.
_CLUSTER_KEYS = ("host_id", "cluster_id", "partitions", "replicas", "partition_bits", "created")


def partition_ranges(partitions):
    """``[[first, last], ...]`` covering the sorted partition numbers *partitions*."""
    ranges = []
    for partition in partitions:
        if ranges and ranges[-1][1] == partition - 1:
            ranges[-1][1] = partition
        else:
            ranges.append([partition, partition])
    return ranges


class NodeService(MultiService):
    """A running node: storage, the request port, and the admin site.

    Build it with :func:`make_node`. ``startService`` cannot wait, so readiness (storage open,
    cluster identity loaded, ports bound) is reported by :meth:`when_ready`.
    """

    _log = Logger()

    def __init__(self, config, reactor, storage, metrics):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.storage = storage
        self.metrics = metrics
        self.started = None
        self.identity = None
        self.ids = None
        self.query = None
        self.api = None
        self.transport = None
        self.port = None
        self._outcome = None
        self._waiting = []

    def when_ready(self):
        """:return: a Deferred that fires with this node once it serves requests, or fails
        with the reason it could not start."""
        d = defer.Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            self._fire(d, self._outcome)
        return d

    def startService(self):
        super().startService()
        self.started = self.reactor.seconds()
        defer.ensureDeferred(self._start()).addBoth(self._notify)

    def _notify(self, outcome):
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire(d, outcome)
        return None if isinstance(outcome, Failure) else outcome

    @staticmethod
    def _fire(d, outcome):
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)

    async def _start(self):
        await self.storage.open()
        if self.metrics is not None:
            self.metrics.watch_storage(self.storage)
            if hasattr(self.storage, "on_batch"):
                self.storage.on_batch = self.metrics.observe_batch
        self.identity = await self._load_identity()
        if self.identity["partition_bits"] != self.storage.layout.partition_bits:
            raise ConfigError(f"this store uses {self.identity['partition_bits']}-bit partition numbers; expected 16")
        held = range(self.identity["partitions"])
        self.ids = IdAllocator(self.storage.layout, {p: self.storage.partition_state(p).max_sequence for p in held})
        self.query = LocalQuery(
            self.storage, self.ids, self.reactor, self.status, max_document_size=self.config.max_document_size
        )
        self.api = RequestAPI(self.query, self.hello, self.reactor, self.metrics)
        self.transport = TCPTransport(
            self.reactor, self.config.listen, self.identity["host_id"], max_frame=self.config.max_frame_size
        )
        self.transport.setName("transport")
        self.transport.serve(self.api.dispatch)
        self.transport.setServiceParent(self)
        self.port = await self.transport.listen()
        if self.config.admin is not None:
            from nodedb.admin import make_admin_site

            admin = StreamServerEndpointService(
                serverFromString(self.reactor, self.config.admin), make_admin_site(self)
            )
            admin._raiseSynchronously = True
            admin.setName("admin")
            admin.setServiceParent(self)
        self._log.info(
            "node {host_id} of cluster {cluster_id} ready at {address} with {count} partitions",
            host_id=self.identity["host_id"],
            cluster_id=self.identity["cluster_id"],
            address=self.address(),
            count=len(held),
        )
        return self

    async def _load_identity(self):
        """Read this host's identity from storage; bootstrap a new cluster on an empty store."""
        stored = {key: self.storage.get_meta(key) for key in _CLUSTER_KEYS}
        if stored["host_id"] is not None:
            if self.config.partitions not in (stored["partitions"], DEFAULT_PARTITIONS):
                self._log.warn(
                    "--partitions is read only when bootstrapping; this cluster has {partitions}",
                    partitions=stored["partitions"],
                )
            self._log.info("restarting node {host_id} from {data_dir}", host_id=stored["host_id"], data_dir=self.config.data_dir)
            return stored
        if self.config.seeds:
            raise ConfigError(
                "joining an existing cluster through --seed is not available in this version; "
                "start without --seed to bootstrap a single-node cluster"
            )
        identity = {
            "host_id": secrets.token_hex(6),
            "cluster_id": secrets.token_hex(8),
            "partitions": self.config.partitions,
            "replicas": self.config.replicas,
            "partition_bits": IdLayout().partition_bits,
            "created": time.time(),
        }
        await self.storage.set_meta(identity)
        self._log.info(
            "bootstrapped cluster {cluster_id} with {partitions} partitions; this is host {host_id}",
            cluster_id=identity["cluster_id"],
            partitions=identity["partitions"],
            host_id=identity["host_id"],
        )
        return identity

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.storage.close())
        return d

    # -- what the node says about itself ----------------------------------------------------

    def address(self):
        return self.config.advertise or _port_address(self.port) or self.config.advertised_address()

    def hello(self):
        """The ``hello`` reply: who this node is."""
        return {
            "version": 1,
            "host": self.identity["host_id"],
            "cluster": self.identity["cluster_id"],
            "max_frame": self.config.max_frame_size,
            "max_document": self.config.max_document_size,
        }

    def host_entry(self):
        stats = self.storage.stats()
        partitions = self.ids.partitions()
        last_commits = {}
        for partition in partitions:
            last = self.storage.partition_state(partition).last_commit_id
            if last:
                last_commits[str(partition)] = last
        return {
            "id": self.identity["host_id"],
            "address": self.address(),
            "status": "write",
            "partitions": partition_ranges(partitions),
            "partition_count": len(partitions),
            "free_bytes": stats["free_bytes"],
            "size_bytes": stats["size_bytes"],
            "last_commit_ids": last_commits,
            "unreliability": 0.0,
            "started": self.started,
            "version": nodedb.__version__,
        }

    def status(self):
        """The status document of ``/status`` and ``nodedb status``."""
        host = self.host_entry()
        return {
            "host": host,
            "hosts": [host],
            "cluster": {
                "id": self.identity["cluster_id"],
                "partitions": self.identity["partitions"],
                "replicas": self.identity["replicas"],
            },
        }


def _port_address(port):
    if port is None:
        return None
    address = port.getHost()
    host = getattr(address, "host", None)
    if host in (None, "", "0.0.0.0", "::"):
        return None
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def make_node(config, reactor, storage=None):
    """Build (but do not start) the node that *config* describes.

    :param storage: an :class:`~nodedb.interfaces.IStorageBackend` to use instead of the one
        ``config.storage`` names (tests pass a memory backend here).
    :raise ConfigError: if the configuration names something that does not exist.
    """
    if storage is None:
        from nodedb.plugins import find_storage_plugin

        storage = find_storage_plugin(config.storage).make_backend(config.data_dir, config, reactor)
    return NodeService(config, reactor, storage, NodeMetrics())
