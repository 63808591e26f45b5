"""Assembly of one node: the only place where the services are built and wired together."""

import math
import os
import random
import time
from functools import partial

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

import nodedb
from nodedb import errors
from nodedb.config import DEFAULT_PARTITIONS, ConfigError
from nodedb.gossip.service import GossipService, GossipTiming
from nodedb.gossip.state import HostEntry
from nodedb.health import cluster_health
from nodedb.logsync.service import LogSyncService, LogSyncTiming
from nodedb.metrics import NodeMetrics
from nodedb.query.api import RequestAPI
from nodedb.query.local import LocalQuery
from nodedb.query.router import Router
from nodedb.query.scans import ScanSettings
from nodedb.query.relay import rank_relays
from nodedb.security.tls import check_peer_identity
from nodedb.reliability.service import Reliability, ReliabilitySettings, ReportingTransport
from nodedb.transactions.service import TransactionService, TransactionSettings
from nodedb.topology.vivaldi import direction, distance
from nodedb.voting.formation import bootstrap_decision
from nodedb.voting.persistence import RaftDisk
from nodedb.voting.policy import HostView, VotingSettings
from nodedb.voting.recovery import STILL_SERVED, Fence
from nodedb.voting.service import VotingService, VotingTiming
from nodedb.voting.state import sequence_range
from nodedb.wire.channel import PROTOCOL_VERSION

#: Meta keys that describe the cluster and this host's place in it.
_IDENTITY_KEYS = ("host_id", "cluster_id", "partitions", "replicas", "partition_bits", "created", "held", "expect")
#: Free space is announced in steps of this many bytes, so that the NI does not change with
#: every write.
_FREE_SPACE_STEP = 64 * 1024 * 1024


def partition_ranges(partitions):
    """``[[first, last], ...]`` covering the sorted partition numbers *partitions*."""
    ranges = []
    for partition in partitions:
        if ranges and ranges[-1][1] == partition - 1:
            ranges[-1][1] = partition
        else:
            ranges.append([partition, partition])
    return ranges


def measure_cpu_rating():
    """A rough CPU rating for placement: cores times single-core speed (1.0 is a core that
    runs the reference loop in 10 ms)."""
    start = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i * i
    elapsed = max(time.perf_counter() - start, 1e-6)
    return round((os.cpu_count() or 1) * 0.010 / elapsed, 2)


class NodeService(MultiService):
    """A running node: storage, the request port, gossip, reliability, the admin site.

    Build it with :func:`make_node`. ``startService`` cannot wait, so readiness (storage open,
    identity loaded, ports bound, cluster joined) is reported by :meth:`when_ready`.
    """

    _log = Logger()

    def __init__(
        self,
        config,
        reactor,
        storage,
        metrics,
        transport_factory=None,
        rng=None,
        gossip_timing=None,
        cpu_rating=None,
        voting_timing=None,
        logsync_timing=None,
        id_allocator_factory=None,
    ):
        super().__init__()
        self.logsync_timing = logsync_timing or LogSyncTiming(call_timeout=config.peer_timeout)
        self.config = config
        self.reactor = reactor
        self.storage = storage
        self.metrics = metrics
        # Ids and gossip choices come from here; the simulator seeds it so runs replay.
        self.rng = rng or random.Random(os.urandom(16))
        self.gossip_timing = gossip_timing or GossipTiming()
        self.voting_timing = voting_timing or VotingTiming()
        self._transport_factory = transport_factory
        self._id_allocator_factory = id_allocator_factory
        self.started = None
        self.identity = None
        self.generation = None
        self.ids = None
        self.query = None
        self.api = None
        self.transport = None
        #: The transport as replication, voting and routing call peers through it: their
        #: calls that time out raise the peer's unreliability.
        self.peer_calls = None
        self.reliability = None
        self.gossip = None
        self.voting = None
        self.logsync = None
        self.local = None
        self.port = None
        self.cpu_rating = cpu_rating
        self._outcome = None
        self._waiting = []
        self._unsaved_identity = False
        self._primaries = None  # {partition: epoch} this host allocates in, as last applied
        self._local_free = None  # free bytes of the store, as of the last gossip round
        self._allocating = False

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
        self.generation = (self.storage.get_meta("generation") or 0) + 1
        await self.storage.set_meta({"generation": self.generation})
        if self.cpu_rating is None:
            self.cpu_rating = measure_cpu_rating()
        self._build_query()
        self.reliability = Reliability(
            self.reactor,
            ReliabilitySettings(call_timeout=self.config.peer_timeout, retries=self.config.peer_retries),
        )
        self.transport = self._transport_factory(self._peer_hello, self._heartbeat)
        watched = self.fence.watch(self.transport)  # calls that learn this host was removed
        self.transport.setName("transport")
        self.transport.serve(self.api.dispatch)
        if self.metrics is not None and getattr(self.transport, "guard", None) is not None:
            self.metrics.watch_connections(self.transport.guard)
        self.transport.setServiceParent(self)
        self.port = await self.transport.listen()
        await self._save_new_identity()
        self.gossip = GossipService(
            self.reactor,
            watched,
            self.reliability,
            self._first_entry(),
            rng=self.rng,
            timing=self.gossip_timing,
            local_fields=self._changing_fields,
            cluster=self._cluster_description,
        )
        self.gossip.install(self.api)
        self.peer_calls = ReportingTransport(
            watched, self.reliability, self.gossip.host_at, self.reactor, burst_gap=self.config.heartbeat_interval or 1.0
        )
        if self.identity["cluster_id"] is None:
            await self._join()
        elif self.config.seeds:
            self.gossip.join(self.config.seeds).addErrback(self._log_join_failure)
        self.gossip.setName("gossip")
        self.gossip.setServiceParent(self)
        self._start_logsync()
        self._start_voting()
        if self.identity["held"]:
            await self._leading()
        self._start_admin()
        self._log.info(
            "node {host_id} (generation {generation}) of cluster {cluster_id} ready at {address} "
            "holding {count} partitions",
            host_id=self.identity["host_id"],
            generation=self.generation,
            cluster_id=self.identity["cluster_id"],
            address=self.address(),
            count=len(self.identity["held"]),
        )
        return self

    def _start_logsync(self):
        self.logsync = LogSyncService(
            self.reactor,
            self.identity["host_id"],
            self.storage,
            self.peer_calls,
            self._address_of,
            timing=self.logsync_timing,
            on_fenced=self._fenced,
            on_syncing=self._syncing_changed,
        )
        self.logsync.install(self.api)
        self.query.transport = self.peer_calls
        self.query.install(self.api)
        self.local.replication = self.logsync
        self.logsync.setName("logsync")
        self.logsync.setServiceParent(self)
        self.transactions = TransactionService(
            self.local,
            self.identity["host_id"],
            self.query.primary_of,
            # Every tx.* request is idempotent, so it may go through a relay after any failure.
            lambda host, op, arguments, timeout: self.query.call_host(host, op, arguments, False, timeout),
            self.reactor,
            TransactionSettings(timeout=self.config.peer_timeout * 2, prepare_timeout=self.config.peer_timeout),
        )
        self.transactions.install(self.api)
        self.query.transactions = self.transactions
        self.transactions.setName("transactions")
        self.transactions.setServiceParent(self)

    async def _leading(self, timeout=10.0):
        """Wait (at most *timeout* seconds) until the partitions the agreed map gives this
        host are ready to take writes, so that a node reported ready serves at once."""
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            state = self.voting.state
            if state.cluster_id is not None and all(
                self.logsync.is_primary(p) for p in state.primary_partitions(self.identity["host_id"])
            ):
                return
            await task.deferLater(self.reactor, 0.02, lambda: None)

    def _fenced(self, partition, epoch):
        if self.voting is not None:
            self.voting.request_election(partition, epoch)

    def _removed_by_recovery(self, reason):
        """A recovery removed this host (see nodedb.voting.recovery): stop serving, for good."""
        self._log.warn("{reason} (data directory {data_dir}); this host stops serving", reason=reason,
                           data_dir=self.config.data_dir)
        self.storage.set_meta({"fenced": reason}).addErrback(
            lambda failure: self._log.failure("could not record that this host was fenced", failure)
        )
        for service in (self.voting, self.logsync):
            if service is not None:
                service.stopService()

    def _syncing_changed(self, partitions):
        self.gossip.update_local(syncing=tuple(partitions))

    def _start_voting(self):
        self.voting = VotingService(
            self.reactor,
            self.identity["host_id"],
            self.peer_calls,
            self.storage,
            address_of=self._address_of,
            views=self._host_views,
            rng=self.rng,
            timing=self.voting_timing,
            settings=VotingSettings(remove_after=self.config.remove_after),
            on_change=self._cluster_changed,
            elect=self.logsync.elect,
            handoff=self.logsync.handoff,
        )
        self.voting.install(self.api)
        self.voting.setName("voting")
        self.voting.setServiceParent(self)
        # The founder (or a host from before voting existed) founds the group; its first
        # decision records the cluster as it is, once the hosts it expects are present.
        expect = self.identity["expect"]
        if expect is None:
            expect = 1 if self.identity["held"] else 0
        bootstrap = None
        if expect:
            bootstrap = lambda: bootstrap_decision(  # noqa: E731
                self.identity, self.address(), self.reactor.seconds(), self._present_hosts(), expect
            )
        self.voting.start(bootstrap)

    def _present_hosts(self):
        """``{host id: address}`` of the hosts of this cluster that this one sees now (a
        joiner names no cluster until the next gossip round after its join: it counts)."""
        cluster = self.identity["cluster_id"]
        return {
            h: e.address
            for h, e in self.gossip.ni.entries.items()
            if e.cluster_id in (cluster, "") and self.reliability.is_available(h)
        }

    def _address_of(self, host_id):
        entry = self.gossip.ni.entries.get(host_id)
        if entry is not None:
            return entry.address
        member = self.voting.state.members.get(host_id)
        return member["address"] if member else None

    def _host_views(self):
        views = {}
        for host_id, entry in self.gossip.ni.entries.items():
            health = self.reliability.describe(host_id)
            own = host_id == self.identity["host_id"]
            views[host_id] = HostView(
                host_id=host_id,
                address=entry.address,
                cluster_id=entry.cluster_id,
                available=own or health["available"],
                unavailable_since=None if own or health["available"] else health["since"],
                free_bytes=entry.free_bytes,
                cpu_rating=entry.cpu_rating,
                coordinate=self.gossip.coordinate if own else entry.coordinate,
                partitions=frozenset(entry.partitions),
                syncing=frozenset(entry.syncing),
            )
        return views

    def _cluster_changed(self, state):
        """Committed decisions changed the partition map: allocate ids where this host is
        primary, in the range of the partition's epoch, and tell the network."""
        host_id = self.identity["host_id"]
        primaries = state.primary_partitions(host_id)
        held = sorted(primaries)
        if primaries != self._primaries:
            self._primaries = primaries
            self.ids.set_partitions(
                {p: self.storage.partition_state(p).max_sequence for p in held},
                {p: sequence_range(epoch) for p, epoch in primaries.items()},
            )
            self._allocating = bool(held)
        self.logsync.update(state)
        layout = self.storage.layout
        ranges = tuple(
            (layout.make(p, sequence_range(e)[0]), layout.make(p, sequence_range(e)[1])) for p, e in sorted(primaries.items())
        )
        self.gossip.update_local(
            status=("write" if held else "read") if state.admitted(host_id) else "proposal",
            partitions=tuple(state.replica_partitions(host_id)),
            ranges=ranges,
            syncing=tuple(self.logsync.syncing()),
        )
        if held != self.identity["held"]:
            self.identity["held"] = held
            self.storage.set_meta({"held": held})

    # -- routing ----------------------------------------------------------------------------

    def _has_room(self, free_bytes):
        return free_bytes >= VotingSettings.min_free_bytes

    def _can_insert(self):
        if self._local_free is None:
            self._free_space()
        return self._allocating and self._has_room(self._local_free)

    def _insert_hosts(self):
        """Hosts that are primary of some partition, reachable, with room for new elements."""
        primaries = {a.primary for a in self.voting.state.assignments.values() if a.primary is not None}
        hosts = []
        for host_id in sorted(primaries):
            entry = self.gossip.ni.entries.get(host_id)
            if entry is not None and self._has_room(entry.free_bytes) and self.reliability.is_available(host_id):
                hosts.append(host_id)
        return hosts

    def _nearest_replica(self, partition):
        """The closest host with a current copy of *partition* (this one when it has one)."""
        assignment = self.voting.state.assignments.get(partition)
        if assignment is None or not assignment.replicas:
            raise errors.Unavailable(f"partition {partition} has no replica now")
        own = self.identity["host_id"]
        if own in assignment.replicas and partition not in self.logsync.syncing():
            return own
        me = self.gossip.coordinate
        best = None
        for host_id in assignment.replicas:
            entry = self.gossip.ni.entries.get(host_id)
            if entry is None or partition in entry.syncing or not self.reliability.is_available(host_id):
                continue
            rank = distance(me, entry.coordinate)
            if best is None or rank < best[0]:
                best = (rank, host_id)
        return best[1] if best is not None else assignment.primary

    def _reachable(self, host_id):
        """Whether this host can call *host_id* directly now: its connection is not known to
        be down and the host is available from here."""
        address = self._address_of(host_id)
        return address is not None and self.transport.reachable(address) and self.reliability.is_available(host_id)

    def _relays(self, target):
        """Hosts this one reaches that could relay a call to *target*, best first."""
        own = self.identity["host_id"]
        state = self.voting.state
        candidates = [h for h in state.members if h not in (own, target) and self._reachable(h)]
        return rank_relays(target, candidates, state.assignments, self.reliability.score)

    def _log_join_failure(self, failure):
        self._log.failure("joining through the seeds failed", failure)

    def _build_query(self):
        if self.identity["partition_bits"] != self.storage.layout.partition_bits:
            raise ConfigError(f"this store uses {self.identity['partition_bits']}-bit partition numbers; expected 16")
        # A member of a voting cluster allocates nothing until the agreed partition map says
        # where, and in which epoch's range; only a new (or pre-voting) cluster starts from
        # the partitions its identity records.
        held = [] if RaftDisk(self.storage).exists() else self.identity["held"]
        marks = {p: self.storage.partition_state(p).max_sequence for p in held}
        self.ids = self._id_allocator_factory(self.storage.layout, marks)
        self._allocating = bool(held)  # whether this host leads a partition to insert into
        self.local = LocalQuery(
            self.storage, self.ids, self.reactor, self.status, max_document_size=self.config.max_document_size
        )
        self.query = Router(
            self.local,
            self.identity["host_id"],
            cluster=lambda: self.voting.state,
            transport=None,  # set once the transport exists
            address_of=self._address_of,
            insert_hosts=self._insert_hosts,
            nearest_replica=self._nearest_replica,
            can_insert=self._can_insert,
            timeout=self.config.peer_timeout * 2,
            reachable=self._reachable,
            relays=self._relays,
            scan_settings=ScanSettings(idle_timeout=self.config.scan_idle_timeout),
        )
        self.fence = Fence(lambda: self.voting.state if self.voting else None, self._removed_by_recovery)
        self.api = RequestAPI(
            self.query, self.hello, self.reactor, self.metrics, admit_peer=self._admit_peer, admit_request=self._admit_request
        )

    def _start_admin(self):
        if self.config.admin is None:
            return
        from nodedb.admin import make_admin_site

        endpoint = serverFromString(self.reactor, self.config.admin)
        tls = self.config.tls_context()
        if tls is not None:
            endpoint = tls.wrap_server(endpoint, self.config.client_cert)
        admin = StreamServerEndpointService(endpoint, make_admin_site(self))
        admin._raiseSynchronously = True
        admin.setName("admin")
        admin.setServiceParent(self)

    async def _load_identity(self):
        """Read this host's identity from storage; bootstrap a new cluster on an empty store
        without seeds; prepare to join when there are seeds."""
        stored = {key: self.storage.get_meta(key) for key in _IDENTITY_KEYS}
        if self.storage.get_meta("fenced"):
            raise ConfigError(f"{self.storage.get_meta('fenced')}; this host does not start on its old data")
        if stored["host_id"] is not None and stored["cluster_id"] is not None:
            if self.config.partitions not in (stored["partitions"], DEFAULT_PARTITIONS):
                self._log.warn(
                    "--partitions is read only when bootstrapping; this cluster has {partitions}",
                    partitions=stored["partitions"],
                )
            if stored["held"] is None:  # written before hosts held partitions selectively
                stored["held"] = list(range(stored["partitions"]))
            self._log.info("restarting node {host_id} from {data_dir}", host_id=stored["host_id"], data_dir=self.config.data_dir)
            return stored
        host_id = stored["host_id"] or f"{self.rng.getrandbits(48):012x}"
        if self.config.seeds:
            await self.storage.set_meta({"host_id": host_id})
            return {**stored, "host_id": host_id, "held": [], "expect": 0, "partition_bits": self.storage.layout.partition_bits}
        expect = self.config.bootstrap_expect
        identity = {
            "host_id": host_id,
            "cluster_id": f"{self.rng.getrandbits(64):016x}",
            "partitions": self.config.partitions,
            "replicas": self.config.replicas,
            "partition_bits": self.storage.layout.partition_bits,
            "created": self.reactor.seconds(),
            # Founding alone, the host holds every partition from the start; waiting for
            # --bootstrap-expect hosts, it holds what the founding decision gives it.
            "held": list(range(self.config.partitions)) if expect <= 1 else [],
            "expect": expect,
        }
        # Written only once the node listens (see _start): a start that fails creates nothing.
        self._unsaved_identity = True
        return identity

    async def _save_new_identity(self):
        if not self._unsaved_identity:
            return
        await self.storage.set_meta(self.identity)
        self._unsaved_identity = False
        self._log.info(
            "bootstrapped cluster {cluster_id} with {partitions} partitions; this is host {host_id}"
            "{waiting}",
            cluster_id=self.identity["cluster_id"],
            partitions=self.identity["partitions"],
            host_id=self.identity["host_id"],
            waiting=f"; it forms once {self.identity['expect']} hosts are present (--bootstrap-expect)"
            if self.identity["expect"] > 1
            else "",
        )

    async def _join(self):
        """Join the cluster of the seeds: learn its identity and the NI."""
        self._log.info("joining through {seeds}", seeds=", ".join(self.config.seeds))
        cluster = await self.gossip.join(self.config.seeds)
        try:
            identity = {
                "cluster_id": _checked(cluster.get("id"), str),
                "partitions": _checked(cluster.get("partitions"), int),
                "replicas": _checked(cluster.get("replicas"), int),
                "partition_bits": _checked(cluster.get("partition_bits"), int),
                "created": self.reactor.seconds(),
                "held": [],
                "expect": 0,
            }
        except errors.InvalidRequest as e:
            raise ConfigError(f"the seed described its cluster badly: {e}") from None
        if identity["partition_bits"] != self.storage.layout.partition_bits:
            raise ConfigError("the seed's cluster uses another id layout")
        await self.storage.set_meta(identity)
        self.identity.update(identity)
        self.gossip.update_local(cluster_id=identity["cluster_id"])

    def stopService(self):
        if self.query is not None:
            self.query.scans.stop()
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.storage.close())
        return d

    # -- peers ------------------------------------------------------------------------------

    def _peer_hello(self):
        return {
            "version": PROTOCOL_VERSION,
            "role": "peer",
            "host": self.identity["host_id"],
            "cluster": self.identity["cluster_id"] or "",
            "address": self.address(),
        }

    def _admit_peer(self, request, channel):
        """The one place where a peer's handshake is judged: with TLS, its certificate must
        name the address it advertises; and it must not belong to another cluster."""
        if self.config.tls is not None:
            try:
                check_peer_identity(channel.transport, request.get("address"))
            except errors.ProtocolError as e:
                self._log.warn("refusing peer {host} at {peer}: {why}", host=request.get("host"), peer=channel.peer, why=e)
                raise
        cluster = request.get("cluster") or ""
        ours = self.identity["cluster_id"]
        if cluster and ours and cluster != ours:
            self._log.warn(
                "refusing peer {host} at {peer}: it belongs to cluster {theirs}, this is {ours}",
                host=request.get("host"),
                peer=channel.peer,
                theirs=cluster,
                ours=ours,
            )
            raise errors.ProtocolError(f"this node belongs to cluster {ours}, not {cluster}")

    def _admit_request(self, op, channel):
        """Refuse what this host cannot serve yet (it is still joining: Voting has not
        started) or any more (it was fenced by a recovery)."""
        if self.voting is None and channel.role != "peer" and op not in STILL_SERVED:
            raise errors.Unavailable("this host is still joining its cluster: try another host, or again")
        self.fence.admit(op, channel)

    def _heartbeat(self, address, rtt, reply):
        if self.gossip is not None:
            self.gossip.observe_heartbeat(address, rtt, reply)

    def _first_entry(self):
        held = self.identity["held"]
        layout = self.storage.layout
        return HostEntry(
            host_id=self.identity["host_id"],
            generation=self.generation,
            version=0,
            address=self.address(),
            status="write" if held else "proposal",
            updated=self.reactor.seconds(),
            cluster_id=self.identity["cluster_id"] or "",
            partitions=tuple(held),
            ranges=tuple((layout.first_id(p), layout.last_id(p)) for p in held),
            free_bytes=self._free_space(),
            cpu_rating=self.cpu_rating,
        )

    def _free_space(self):
        """Free space as announced (in steps); the exact figure is kept for the insert check,
        refreshed with every gossip round rather than read for every insert."""
        self._local_free = self.storage.stats()["free_bytes"]
        return self._local_free // _FREE_SPACE_STEP * _FREE_SPACE_STEP

    def _changing_fields(self):
        return {"free_bytes": self._free_space()}

    def _cluster_description(self):
        return {
            "id": self.identity["cluster_id"],
            "partitions": self.identity["partitions"],
            "replicas": self.identity["replicas"],
            "partition_bits": self.identity["partition_bits"],
        }

    # -- what the node says about itself ----------------------------------------------------

    def address(self):
        return self.config.advertise or _port_address(self.port) or self.config.advertised_address()

    def hello(self):
        """The ``hello`` reply: who this node is."""
        return {
            "version": PROTOCOL_VERSION,
            "host": self.identity["host_id"],
            "cluster": self.identity["cluster_id"],
            "max_frame": self.config.max_frame_size,
            "max_document": self.config.max_document_size,
        }

    def _describe(self, entry):
        me = self.gossip.coordinate
        own = entry.host_id == self.identity["host_id"]
        coordinate = me if own else entry.coordinate
        health = (
            {"unreliability": 0.0, "available": True, "since": self.started, "phi": 0.0, "rtt": None}
            if own
            else self.reliability.describe(entry.host_id)
        )
        return {
            "id": entry.host_id,
            "address": entry.address,
            "status": entry.status,
            "generation": entry.generation,
            "updated": entry.updated,
            "partitions": partition_ranges(entry.partitions),
            "inactive": partition_ranges(entry.syncing),
            "ranges": [list(r) for r in entry.ranges],
            "partition_count": len(entry.partitions),
            "free_bytes": entry.free_bytes,
            "cpu_rating": entry.cpu_rating,
            "coordinate": {"x": coordinate.x, "y": coordinate.y, "height": coordinate.height, "error": coordinate.error},
            "distance_ms": None if own else round(distance(me, entry.coordinate) * 1000, 3),
            "direction": None if own else round(math.degrees(direction(me, entry.coordinate)), 1),
            **health,
        }

    def host_entry(self):
        """This host as ``/status`` shows it: its NI entry plus local storage figures."""
        stats = self.storage.stats()
        last_commits = {}
        for partition in self.ids.partitions():
            last = self.storage.partition_state(partition).last_commit_id
            if last:
                last_commits[str(partition)] = last
        return {
            **self._describe(self.gossip.local_entry()),
            "free_bytes": stats["free_bytes"],
            "size_bytes": stats["size_bytes"],
            "last_commit_ids": last_commits,
            "started": self.started,
            "version": nodedb.__version__,
        }

    def status(self):
        """The status document of ``/status`` and ``nodedb status``."""
        if self.gossip is None:
            raise errors.Unavailable("the node is still starting")
        host = self.host_entry()
        others = [self._describe(entry) for entry in self.gossip.hosts()[1:]]
        ni = self.gossip.ni
        return {
            "host": host,
            "hosts": [host, *others],
            "cluster": {
                "id": self.identity["cluster_id"],
                "partitions": self.identity["partitions"],
                "replicas": self.identity["replicas"],
            },
            "ni": {"size": ni.size, "checksum": f"{ni.checksum:016x}", "rounds": self.gossip.rounds},
            "voting": self.voting.status() if self.voting is not None else None,
            "health": cluster_health(self.voting, self._host_views()) if self.voting is not None else None,
            "fenced": self.fence.reason,
            "replication": self.logsync.status() if self.logsync is not None else None,
            "scans": self.query.scans.status() if self.query is not None else None,
            "connections": self.transport.guard.status() if getattr(self.transport, "guard", None) else None,
        }


def _checked(value, kind):
    if type(value) is not kind:
        raise errors.InvalidRequest(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _port_address(port):
    if port is None:
        return None
    address = port.getHost()
    host = getattr(address, "host", None)
    if host in (None, "", "0.0.0.0", "::"):
        return None
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


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
    :param rng: the ``random.Random`` for gossip and coordinates (seeded in the simulator).
    :param gossip_timing: a :class:`~nodedb.gossip.service.GossipTiming`.
    :param cpu_rating: this host's CPU rating, instead of measuring it.
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
    return NodeService(
        config,
        reactor,
        storage,
        NodeMetrics(),
        transport_factory,
        rng,
        gossip_timing,
        cpu_rating,
        voting_timing,
        logsync_timing,
        partial(allocators.make_allocator, options=config, clock=reactor),
    )
