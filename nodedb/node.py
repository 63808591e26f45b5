"""Assembly of one node: the only place where its services are built and connected.

``startService`` cannot wait, so a node starts in steps, and :meth:`NodeService.when_ready`
reports how that went:

1. open the store, load (or found) the host's identity and bind the peer port, whose address
   the host announces;
2. build every service, each given its collaborators in its constructor (:meth:`_build`),
   and write the identity of a cluster this start founds;
3. join the cluster through the seeds (a host with an empty store learns it there), then run
   LogSync, the transactions and Voting, wait to lead what the agreed map gives this host,
   and serve the admin site.

Reactions to the cluster's changes are subscriptions to the
:class:`~nodedb.placement.ClusterChanges` that Voting feeds.
"""

import os
import random
from functools import partial

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.gossip.service import GossipService, GossipTiming
from nodedb.identity import Identity
from nodedb.logsync.service import LogSyncService, LogSyncTiming
from nodedb.metrics import NodeMetrics
from nodedb.query.api import RequestAPI
from nodedb.query.calls import HostCalls
from nodedb.query.local import LocalQuery
from nodedb.placement import Allocation, ClusterChanges, Directory, LocalSpace, Placement
from nodedb.query.router import Router
from nodedb.query.scans import ScanSettings
from nodedb.reliability.service import Reliability, ReliabilitySettings, ReportingTransport
from nodedb.status import NodeStatus, announce_roles, first_entry, hello, measure_cpu_rating, peer_hello, port_address
from nodedb.transactions.locks import LockTable, stored_prepares
from nodedb.transactions.service import TransactionService, TransactionSettings
from nodedb.voting.persistence import RaftDisk
from nodedb.voting.policy import VotingSettings
from nodedb.voting.recovery import STILL_SERVED, Fence
from nodedb.voting.service import VotingService, VotingTiming


class NodeService(MultiService):
    """A running node: storage, the request port, gossip, replication, voting, the admin site.

    Build it with :func:`make_node`. The services it runs are its attributes (``gossip``,
    ``logsync``, ``transactions``, ``voting``: None until they run; a host still joining its
    cluster runs no Voting yet).
    """

    _log = Logger()

    def __init__(
        self, config, reactor, storage, metrics, transport_factory, id_allocator_factory, rng, timings, cpu_rating
    ):
        super().__init__()
        self.config, self.reactor, self.storage, self.metrics = config, reactor, storage, metrics
        self.rng = rng  # ids and gossip choices come from here; the simulator seeds it so runs replay
        self._transport_factory, self._id_allocator_factory = transport_factory, id_allocator_factory
        self._timings, self._cpu_rating = timings, cpu_rating
        self.started = self.identity = self.transport = self.port = None
        # Built in step 2; the services among them are set once they run.
        self.reliability = self.fence = self.ids = self.local = self.placement = self.calls = self.query = None
        self.api = self._status = self.gossip = self.logsync = self.transactions = self.voting = None
        self._outcome, self._waiting = None, []

    def when_ready(self):
        """:return: a Deferred that fires with this node once it serves requests, or fails
        with the reason it could not start."""
        d = defer.Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            _fire(d, self._outcome)
        return d

    def startService(self):
        super().startService()
        self.started = self.reactor.seconds()
        defer.ensureDeferred(self._start()).addBoth(self._notify)

    def _notify(self, outcome):
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            _fire(d, outcome)
        return None if isinstance(outcome, Failure) else outcome

    async def _start(self):
        await self.storage.open()
        self.metrics.watch_storage(self.storage)
        if hasattr(self.storage, "observe_batches"):  # a store that commits in batches
            self.storage.observe_batches(self.metrics.observe_batch)
        self.identity = await Identity.load(self.storage, self.config, self.rng, self.reactor)
        if self._cpu_rating is None:
            self._cpu_rating = measure_cpu_rating()
        self.transport = self._transport_factory(lambda: peer_hello(self.identity, self.address()), self._heartbeat)
        self.transport.setName("transport")
        if getattr(self.transport, "guard", None) is not None:
            self.metrics.watch_connections(self.transport.guard)
        self.transport.setServiceParent(self)
        self.port = await self.transport.listen()
        # The port's connections are read on a later turn of the reactor, so every request
        # finds the services built (gossip's entry needs the address the port got).
        gossip, logsync, transactions, voting = self._build()
        self.transport.serve(self.api.dispatch)
        await self.identity.save_new()
        self.gossip = gossip
        gossip.install(self.api)
        if not self.identity.joined:
            await self._join()
        elif self.config.seeds:
            joining = gossip.join(self.config.seeds)
            joining.addErrback(lambda failure: self._log.failure("joining through the seeds failed", failure))
        self._run("gossip", gossip)
        self.logsync, self.transactions, self.voting = logsync, transactions, voting
        self.query.install(self.api)
        self.calls.install(self.api)
        for name, service in (("logsync", logsync), ("transactions", transactions), ("voting", voting)):
            service.install(self.api)
            self._run(name, service)
        voting.start(self.identity.founding(self.address, self.reactor, self.placement.present_hosts))
        if self.identity.held:
            await self._leading()
        await self._serve_admin()
        self._log.info(
            "node {host_id} (generation {generation}) of cluster {cluster_id} ready at {address} "
            "holding {count} partitions",
            host_id=self.identity.host_id,
            generation=self.identity.generation,
            cluster_id=self.identity.cluster_id,
            address=self.address(),
            count=len(self.identity.held),
        )
        return self

    def _build(self):
        """Build every service with its collaborators; :return: those that run once this host
        is on the network (gossip) and once it is a member (LogSync, transactions, Voting)."""
        config, reactor, storage, identity = self.config, self.reactor, self.storage, self.identity
        host_id, layout = identity.host_id, storage.layout
        gossip_timing, voting_timing, logsync_timing = self._timings
        changes = ClusterChanges()
        settings = ReliabilitySettings(call_timeout=config.peer_timeout, retries=config.peer_retries)
        self.reliability = reliability = Reliability(reactor, settings)
        self.fence = Fence(lambda: changes.state, self._removed_by_recovery)
        watched = self.fence.watch(self.transport)  # calls that learn this host was removed
        space = LocalSpace(storage)
        gossip = GossipService(
            reactor,
            watched,
            reliability,
            first_entry(identity, self.address(), space, self._cpu_rating, layout, reactor.seconds()),
            rng=self.rng,
            timing=gossip_timing,
            local_fields=lambda: {"free_bytes": space.announced()},
            cluster=identity.describe_cluster,
        )
        # Replication, voting and routing call peers through this: their calls that time out
        # raise the peer's unreliability.
        peer_calls = ReportingTransport(watched, reliability, gossip.host_at, reactor, config.heartbeat_interval or 1.0)
        directory = Directory(host_id, changes, gossip, reliability, self.transport)
        logsync = LogSyncService(
            reactor,
            host_id,
            storage,
            peer_calls,
            directory.address_of,
            timing=logsync_timing,
            # LogSync and Voting call each other: a fenced primary asks the Voting built below.
            on_fenced=lambda partition, epoch: voting.request_election(partition, epoch),
            on_syncing=lambda partitions: gossip.update_local(syncing=tuple(partitions)),
        )
        # A member of a voting cluster allocates nothing until the agreed partition map says
        # where, and in which epoch's range; only a new (or pre-voting) cluster starts from
        # the partitions its identity records.
        held = [] if RaftDisk(storage).exists() else identity.held
        self.ids = self._id_allocator_factory(layout, {p: storage.partition_state(p).max_sequence for p in held})
        allocation = Allocation(host_id, self.ids, storage, held)
        locks = LockTable(stored_prepares(storage), reactor)
        self.local = LocalQuery(
            storage, self.ids, reactor, self.status, config.max_document_size, replication=logsync, locks=locks
        )
        self.placement = Placement(host_id, changes, gossip, reliability, logsync, allocation, space)
        self.calls = HostCalls(host_id, peer_calls, directory, reactor, timeout=config.peer_timeout * 2)
        transactions = TransactionService(
            self.local,
            host_id,
            self.placement.primary_of,
            # Every tx.* request is idempotent, so it may go through a relay after any failure.
            lambda host, op, arguments, timeout: self.calls.call_host(host, op, arguments, False, timeout),
            reactor,
            TransactionSettings(timeout=config.peer_timeout * 2, prepare_timeout=config.peer_timeout),
        )
        scan_settings = ScanSettings(idle_timeout=config.scan_idle_timeout)
        self.query = Router(self.local, host_id, self.placement, self.calls, transactions, scan_settings)
        voting = VotingService(
            reactor,
            host_id,
            peer_calls,
            storage,
            directory.address_of,
            self.placement.host_views,
            rng=self.rng,
            timing=voting_timing,
            settings=VotingSettings(remove_after=config.remove_after),
            on_change=changes.changed,
            elect=logsync.elect,
            handoff=logsync.handoff,
        )
        # When the agreed map changes: allocate ids where this host is primary, in the range of
        # the partition's epoch; take up or leave replication roles; tell the network.
        changes.subscribe(allocation.update)
        changes.subscribe(logsync.update)
        changes.subscribe(partial(announce_roles, gossip, logsync, host_id, layout))
        changes.subscribe(identity.hold)
        self._status = NodeStatus(
            identity, storage, self.ids, gossip, reliability, self.placement, voting, logsync, self.query.scans,
            self.transport, self.fence, self.started,
        )
        self.api = RequestAPI(
            self.query,
            partial(hello, identity, config),
            reactor,
            self.metrics,
            admit_peer=partial(identity.admit_peer, tls=config.tls is not None),
            admit_request=self._admit_request,
        )
        return gossip, logsync, transactions, voting

    def _run(self, name, service):
        service.setName(name)
        service.setServiceParent(self)

    async def _join(self):
        """Join the cluster of the seeds: learn its identity and the NI."""
        self._log.info("joining through {seeds}", seeds=", ".join(self.config.seeds))
        cluster = await self.gossip.join(self.config.seeds)
        await self.identity.adopt(cluster, self.reactor.seconds())
        self.gossip.update_local(cluster_id=self.identity.cluster_id)

    async def _leading(self, timeout=10.0):
        """Wait (at most *timeout* seconds) until the partitions the agreed map gives this
        host are ready to take writes, so that a node reported ready serves at once."""
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline and not self.placement.leading():
            await task.deferLater(self.reactor, 0.02, lambda: None)

    async def _serve_admin(self):
        if self.config.admin is not None:
            from nodedb.admin import AdminService

            admin = AdminService.for_node(self)
            self._run("admin", admin)
            await admin.listen()

    def stopService(self):
        if self.query is not None:
            self.query.scans.stop()
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.storage.close())
        return d

    # -- reactions that belong to the node's lifecycle ---------------------------------------

    def _heartbeat(self, address, rtt, reply):
        if self.gossip is not None:
            self.gossip.observe_heartbeat(address, rtt, reply)

    def _admit_request(self, op, channel):
        """Refuse what this host cannot serve yet (it is still joining: Voting has not
        started) or any more (it was fenced by a recovery)."""
        if self.voting is None and channel.role != "peer" and op not in STILL_SERVED:
            raise errors.Unavailable("this host is still joining its cluster: try another host, or again")
        self.fence.admit(op, channel)

    def _removed_by_recovery(self, reason):
        """A recovery removed this host (see nodedb.voting.recovery): stop serving, for good."""
        self.identity.remove(reason, self.config.data_dir)
        for service in (self.voting, self.logsync):
            if service is not None:
                service.stopService()

    # -- what the node says about itself -----------------------------------------------------

    def address(self):
        return self.config.advertise or port_address(self.port) or self.config.advertised_address()

    def status(self):
        """The status document of ``/status`` and ``nodedb status``."""
        if self.gossip is None:
            raise errors.Unavailable("the node is still starting")
        return self._status.document(member=self.voting is not None)


def _fire(d, outcome):
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def make_node(
    config,
    reactor,
    storage=None,
    transport_factory=None,
    rng=None,
    gossip_timing=None,
    cpu_rating=None,
    voting_timing=None,
    logsync_timing=None,
):
    """Build (but do not start) the node that *config* describes.

    :param storage: an :class:`~nodedb.interfaces.IStorageBackend` to use instead of the one
        ``config.storage`` names (tests pass a memory backend here).
    :param transport_factory: ``transport_factory(hello, on_heartbeat)`` -> an
        :class:`~nodedb.interfaces.IPeerTransport` service, instead of the one
        ``config.transport`` names (the simulator passes one on its in-memory network).
    :param rng: the ``random.Random`` for ids, gossip and coordinates (seeded in the simulator).
    :param gossip_timing: a :class:`~nodedb.gossip.service.GossipTiming`.
    :param cpu_rating: this host's CPU rating, instead of measuring it.
    :param voting_timing: a :class:`~nodedb.voting.service.VotingTiming`.
    :param logsync_timing: a :class:`~nodedb.logsync.service.LogSyncTiming`.
    :raise ConfigError: if the configuration names something that does not exist.
    """
    from nodedb.interfaces import IIdAllocatorPlugin, IPeerTransportPlugin, IStorageBackendPlugin
    from nodedb.plugins import find_plugin

    if storage is None:
        storage = find_plugin(IStorageBackendPlugin, config.storage).make_backend(config.data_dir, config, reactor)
    if transport_factory is None:
        plugin = find_plugin(IPeerTransportPlugin, config.transport)
        transport_factory = partial(plugin.make_transport, config, reactor, heartbeat_op="gossip.ping")
    allocators = find_plugin(IIdAllocatorPlugin, config.id_allocator)
    id_allocator_factory = partial(allocators.make_allocator, options=config, clock=reactor)
    timings = (
        gossip_timing or GossipTiming(),
        voting_timing or VotingTiming(),
        logsync_timing or LogSyncTiming(call_timeout=config.peer_timeout),
    )
    rng = rng or random.Random(os.urandom(16))
    return NodeService(
        config, reactor, storage, NodeMetrics(), transport_factory, id_allocator_factory, rng, timings, cpu_rating
    )
