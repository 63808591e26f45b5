"""A cluster of real nodes in one process, on the simulated network.

Each host is the production :class:`~nodedb.node.NodeService` with a memory store and a
:class:`~nodedb.wire.transport.PeerTransport` over :class:`SimNetwork` endpoints, all on one
fake clock. Hosts can be crashed (their in-memory state is dropped; their store survives, as a
disk would) and restarted, also at a new address.

::

    cluster = SimCluster(seed=7)
    cluster.start_hosts(20)              # the first bootstraps, the others join through it
    cluster.run_until(cluster.converged, timeout=30)
"""

import random

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodedb.client._client import start_client
from nodedb.config import NodeConfig
from nodedb.gossip.service import GossipTiming
from nodedb.node import make_node
from nodedb.storage.memory import MemoryStorage, MemoryStore
from nodedb.testing.simulation import SimNetwork, replay_hint
from nodedb.voting.policy import caught_up, primary_moves, voter_count
from nodedb.wire.transport import PeerTransport


class SimHost:
    """One simulated host: its address, its surviving store and its current node (if up)."""

    def __init__(self, name, address):
        self.name = name
        self.address = address
        self.store = MemoryStore()
        self.node = None

    @property
    def host(self):
        return SimNetwork.host_of(self.address)

    @property
    def up(self):
        return self.node is not None


class SimCluster:
    """Hosts on a :class:`SimNetwork`; see the module docstring.

    :param heartbeat_interval: seconds between heartbeats on peer connections (None: off).
    """

    _log = Logger()

    def __init__(
        self,
        seed,
        heartbeat_interval=1.0,
        timing=GossipTiming(),
        faults=None,
        remove_after=600.0,
        voting_timing=None,
        replicas=3,
        logsync_timing=None,
        bootstrap_expect=1,
    ):
        self.seed = seed
        self.network = SimNetwork(seed)
        if faults is not None:
            self.network.faults = faults
        self.clock = self.network.clock
        self.rng = random.Random(seed)
        self.heartbeat_interval = heartbeat_interval
        self.timing = timing
        self.remove_after = remove_after
        self.voting_timing = voting_timing
        self.replicas = replicas
        self.logsync_timing = logsync_timing
        self.bootstrap_expect = bootstrap_expect
        self.hosts = []
        self._clients = 0

    def __repr__(self):
        return f"<SimCluster {replay_hint(self.seed)}>"

    def address(self, index):
        return f"127.{index // 250}.{index % 250}.1:7400"

    def add_host(self, seeds=None):
        """Create and start a host; the first one bootstraps, later ones join through the first
        (or through *seeds*)."""
        index = len(self.hosts)
        host = SimHost(f"host{index}", self.address(index))
        self.hosts.append(host)
        if seeds is None:
            seeds = [self.hosts[0].address] if index else []
        self._boot(host, seeds)
        return host

    def start_hosts(self, count):
        return [self.add_host() for _ in range(count)]

    def _boot(self, host, seeds):
        network, address = self.network, host.address

        def transport_factory(hello, on_heartbeat):
            return PeerTransport(
                self.clock,
                network.server_endpoint(address),
                lambda peer: network.client_endpoint(address, peer),
                hello,
                heartbeat_interval=self.heartbeat_interval,
                on_heartbeat=on_heartbeat,
                rng=random.Random(self.rng.random()),
                heartbeat_op="gossip.ping",
            )

        config = NodeConfig(
            data_dir=f"/simulated/{host.name}",
            advertise=address,
            seeds=list(seeds),
            admin=None,
            remove_after=self.remove_after,
            replicas=self.replicas,
            bootstrap_expect=self.bootstrap_expect,
        )
        host.node = make_node(
            config,
            self.clock,
            storage=MemoryStorage(host.store),
            transport_factory=transport_factory,
            rng=random.Random(self.rng.random()),
            gossip_timing=self.timing,
            cpu_rating=1.0,
            voting_timing=self.voting_timing,
            logsync_timing=self.logsync_timing,
        )
        host.node.startService()

    # -- faults -----------------------------------------------------------------------------

    def crash(self, host):
        """Kill *host*: connections reset, in-memory state gone, store kept."""
        self.network.crash(host.host)
        node, host.node = host.node, None
        node.stopService()

    def restart(self, host, address=None, seeds=None):
        """Start *host* again from its store, optionally at a new *address*, joining through
        *seeds* (by default, up to three live hosts)."""
        if address is not None:
            host.address = address
        self.network.restart(host.host)
        if seeds is None:
            seeds = [h.address for h in self.hosts if h is not host and h.up][:3]
        self._boot(host, seeds)

    def client(self, hosts=None, timeout=10.0, learn_hosts=False, partition_aware=False):
        """A :class:`nodedb.client.Client` on the simulated network, connected to *hosts*
        (every host by default, tried in turn) from an address of its own; with
        *learn_hosts*, it also learns the other hosts' addresses from the cluster, as
        :func:`nodedb.client.connect` does, and with *partition_aware* as well, it sends
        requests straight to their partition's primary."""
        self._clients += 1
        source = f"10.{self._clients // 250}.{self._clients % 250}.1:5000"
        targets = hosts if hosts is not None else self.hosts
        named = [(h.address, self.network.client_endpoint(source, h.address)) for h in targets]
        endpoint_for = (lambda address: self.network.client_endpoint(source, address)) if learn_hosts else None
        return start_client(
            self.clock,
            named,
            endpoint_for,
            timeout,
            client_name="simulated",
            rng=random.Random(self.rng.random()),
            partition_aware=partition_aware,
        )

    # -- observing --------------------------------------------------------------------------

    def leader(self):
        """The live host that leads Voting (None while there is none)."""
        leaders = [
            h for h in self.live() if h.node.voting is not None and h.node.voting.leader() == h.node.identity.host_id
        ]
        return leaders[0] if len(leaders) == 1 else None

    def agreed(self):
        """Every live host has applied the same cluster state, with every host a member."""
        states = [h.node.voting.state.to_snapshot() for h in self.live() if h.node.voting is not None]
        return len(states) == len(self.live()) and all(s == states[0] for s in states)

    def admitted(self):
        """:meth:`agreed`, and every member is admitted: each live host advertises ``write``
        or ``read``, the promise that losing any one of them loses no acknowledged write."""
        statuses = (h.node.gossip.local_entry().status for h in self.live())
        return all(s in ("write", "read") for s in statuses) and self.agreed()

    def live(self):
        return [h for h in self.hosts if h.up and h.node.gossip is not None]

    def settled(self):
        """:meth:`replicated`, Voting has all the voters it will have (so that losing one
        leaves a quorum), and the primaries are spread (no planned move is due)."""
        leader = self.leader()
        if leader is None or not self.replicated():
            return False
        voting = leader.node.voting
        wanted = voter_count(len(voting.state.members), voting.settings.max_voters)
        if len(voting.voters()) != wanted or voting.changing_primaries() or not self.admitted():
            return False
        # The leader's picture has caught up too (it plans from it): no planned move is due.
        views = leader.node.placement.host_views()
        if any(caught_up(a, p, views) != len(a.replicas) for p, a in voting.state.assignments.items()):
            return False
        return not primary_moves(voting.state, views, voting.settings)

    def replicated(self, full=True):
        """Every live host agrees on the partition map, every partition has its full replica
        set of live hosts, each caught up with its primary (same last commit id). Without
        *full*, replicas that are down are left out: every partition has a live primary and
        its live replicas are caught up."""
        if not self.agreed():
            return False
        live = {h.node.identity.host_id: h for h in self.live()}
        state = self.live()[0].node.voting.state
        target = min(state.replicas, len(state.members))
        for partition, assignment in state.assignments.items():
            if full and (len(assignment.replicas) != target or not all(r in live for r in assignment.replicas)):
                return False
            if assignment.primary not in live:
                return False
            primary = live[assignment.primary].node
            if not primary.logsync.is_primary(partition):
                return False
            last = primary.storage.partition_state(partition).last_commit_id
            for replica in assignment.replicas[1:] if full else [r for r in assignment.replicas[1:] if r in live]:
                copy = live[replica].node.storage.partition_state(partition)
                if copy.syncing or copy.last_commit_id != last or partition in live[replica].node.logsync.syncing():
                    return False
        return True

    def converged(self):
        """Every live host knows every host, with the same NI checksum."""
        live = self.live()
        if len(live) != len([h for h in self.hosts if h.up]):
            return False
        first = live[0].node.gossip.ni
        same = all((h.node.gossip.ni.size, h.node.gossip.ni.checksum) == (first.size, first.checksum) for h in live)
        return same and first.size == len(self.hosts)

    def availability(self, subject_id):
        """``{observer name: available?}`` for *subject_id*, as each other live host sees it."""
        return {
            h.name: h.node.reliability.is_available(subject_id)
            for h in self.live()
            if h.node.identity.host_id != subject_id
        }

    def run(self, seconds):
        self.network.run(seconds)

    def wait(self, coroutine, timeout=30.0):
        """Run *coroutine* on the simulated clock and return its result (or raise its error)."""
        outcome = []
        defer.ensureDeferred(coroutine).addBoth(outcome.append)
        self.run_until(lambda: outcome, timeout=timeout)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def busiest_primary(self):
        """The live host the agreed map names primary of the most partitions (None if none)."""
        live = {h.node.identity.host_id: h for h in self.live()}
        if not live:
            return None
        counts = {}
        for assignment in self.live()[0].node.voting.state.assignments.values():
            if assignment.primary in live:
                counts[assignment.primary] = counts.get(assignment.primary, 0) + 1
        return live[max(counts, key=lambda h: (counts[h], h))] if counts else None

    def primary_host(self, partition):
        """The live :class:`SimHost` the agreed map names primary of *partition*."""
        primary = self.live()[0].node.voting.state.assignments[partition].primary
        return next(h for h in self.hosts if h.up and h.node.identity.host_id == primary)

    def run_until(self, condition, timeout, check_every=0.05):
        return self.network.run_until(condition, timeout, check_every)

    def stop(self):
        for host in self.hosts:
            if host.up:
                host.node.stopService()
                host.node = None
        self.network.run(1.0)
