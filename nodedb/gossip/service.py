"""The gossip service: runs the pure :class:`~nodedb.gossip.state.Gossip` over the transport.

Every round (one second by default) it pushes rumours to a few random peers that this host
counts as available, pulls when checksums differ, refreshes its own entry when a field
changed (free space, coordinates), and feeds every call's outcome to Reliability
and every round-trip time to the Vivaldi coordinates. It serves ``gossip.push``,
``gossip.sync`` and ``gossip.join`` to peers.
"""

import random
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import classImplements, implementer

from nodedb import errors
from nodedb.gossip.state import EntryError, Gossip, GossipSettings, HostEntry, NetworkInformation, check_entries
from nodedb.interfaces import IGossip, INetworkInformation
from nodedb.topology.vivaldi import Coordinate, displacement, update

# Declared here rather than in the pure module, which imports nothing but the standard library.
classImplements(NetworkInformation, INetworkInformation)

#: Calls that count against a peer's reliability when they fail.
_PEER_FAILURES = (errors.Timeout, errors.Unavailable)


@dataclass(frozen=True)
class GossipTiming:
    """How often things happen; documented in docs/network.md."""

    round_interval: float = 1.0
    #: Coordinates are re-announced when they moved by more than this (seconds of latency),
    #: and at most once per ``coordinate_interval``: every announcement is a rumour that
    #: every host has to hear.
    coordinate_slack: float = 0.002
    coordinate_interval: float = 30.0
    #: Seconds between attempts to join through the seeds.
    join_retry: float = 2.0


#: Fields of this host's own entry whose change is pushed at once (see ``_push_soon``).
_TOLD_AT_ONCE = frozenset({"status", "partitions", "syncing", "cluster_id"})


@implementer(IGossip)
class GossipService(Service):
    """
    :param clock: the reactor or the simulator's Clock.
    :param transport: the :class:`~nodedb.interfaces.IPeerTransport`.
    :param reliability: the :class:`~nodedb.reliability.service.Reliability`.
    :param local: this host's first :class:`HostEntry`.
    :param local_fields: ``local_fields()`` -> the fields of the own entry that may change
        (free space, status...), read every round.
    :param cluster: ``cluster()`` -> what a joining host learns about the cluster.
    """

    _log = Logger()

    def __init__(
        self,
        clock,
        transport,
        reliability,
        local,
        rng=None,
        settings=GossipSettings(),
        timing=GossipTiming(),
        local_fields=None,
        cluster=None,
    ):
        self.clock = clock
        self.transport = transport
        self.reliability = reliability
        self.rng = rng or random.Random()
        self.timing = timing
        self.state = Gossip(local, self.rng, settings, on_change=self._changed)
        self._local_fields = local_fields or dict
        self._cluster = cluster or dict
        self._last_coordinate = clock.seconds()
        self._coordinate = local.coordinate
        self._by_address = {}
        self._loop = LoopingCall(self.round)
        self._loop.clock = clock
        self.rounds = 0

    # -- IGossip ----------------------------------------------------------------------------

    @property
    def ni(self):
        return self.state.ni

    def local_entry(self):
        return self.state.local

    def update_local(self, **fields):
        entry = self.state.update_local(self.clock.seconds(), **fields)
        if self.running and _TOLD_AT_ONCE & fields.keys():
            self._push_soon()
        return entry

    def _push_soon(self):
        """Push this host's entry to a few peers now rather than at the next round: what it
        holds and has caught up on is what the Voting leader admits it by and what health
        counts copies by. Between rounds, rumours keep their decay."""
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(0, self._push_now)

    _soon = None

    def _push_now(self):
        peers = [h for h in self.state.peers() if self.reliability.is_available(h)]
        message = self.state.push_message()
        for host_id in self.rng.sample(peers, min(self.state.settings.fanout, len(peers))):
            self._push(host_id, message)

    def hosts(self):
        others = sorted((e for h, e in self.state.ni.entries.items() if h != self.state.host_id), key=lambda e: e.host_id)
        return [self.state.local, *others]

    def install(self, api):
        """Serve the gossip operations through *api* (a :class:`RequestAPI`)."""
        api.register("gossip.push", self._serve_push)
        api.register("gossip.sync", self._serve_sync)
        api.register("gossip.join", self._serve_join)
        api.register("gossip.ping", self._serve_ping)

    # -- lifecycle --------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop.start(self.timing.round_interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()

    # -- rounds -----------------------------------------------------------------------------

    def round(self):
        self.rounds += 1
        self.reliability.check()
        self._refresh_local()
        unavailable = {h for h in self.state.peers() if not self.reliability.is_available(h)}
        for host_id, message in self.state.round(exclude=unavailable):
            self._push(host_id, message)
        # Unavailable hosts are still probed, one a round, so that their return is noticed.
        if unavailable:
            probe = self.rng.choice(sorted(unavailable))
            self._push(probe, self.state.push_message())

    def _refresh_local(self):
        now = self.clock.seconds()
        local = self.state.local
        fields = {k: v for k, v in self._local_fields().items() if getattr(local, k) != v}
        if (
            now - self._last_coordinate >= self.timing.coordinate_interval
            and displacement(local.coordinate, self._coordinate) > self.timing.coordinate_slack
        ):
            fields["coordinate"] = self._coordinate
            self._last_coordinate = now
        if fields:
            self.state.update_local(now, **fields)

    def _call(self, host_id, op, arguments, retries=0):
        """Call a peer with the reliability settings' timeout, recording every outcome;
        an idempotent call may be tried *retries* more times."""
        entry = self.state.ni.entries[host_id]
        d = self.transport.call(entry.address, op, arguments, self.reliability.settings.call_timeout)

        def succeeded(reply):
            self.reliability.record_success(host_id, None)
            return reply

        def failed(reason):
            if not reason.check(*_PEER_FAILURES):
                return reason
            self.reliability.record_timeout(host_id)
            if retries > 0 and self.running:
                return self._call(host_id, op, arguments, retries - 1)
            return reason

        return d.addCallbacks(succeeded, failed)

    def _push(self, host_id, message):
        d = self._call(host_id, "gossip.push", message)
        d.addCallback(self._after_push, host_id)
        d.addErrback(self._peer_failed, host_id, "gossip.push")

    def _after_push(self, reply, host_id):
        sync = self.state.plan_sync(reply)
        if sync is None:
            return None
        d = self._call(host_id, "gossip.sync", sync, retries=self.reliability.settings.retries)
        return d.addCallback(lambda answer: self.state.merge_entries(check_entries(answer.get("entries")), decay=1))

    def _peer_failed(self, reason, host_id, op):
        if reason.check(*_PEER_FAILURES):
            self._log.debug("{op} to {host_id} failed: {reason}", op=op, host_id=host_id, reason=reason.getErrorMessage())
        elif reason.check(EntryError, errors.NodeDBError):
            self._log.warn("{op} to {host_id}: {reason}", op=op, host_id=host_id, reason=reason.getErrorMessage())
        else:
            self._log.failure("{op} to {host_id} failed", reason, op=op, host_id=host_id)

    def _changed(self, entry, previous):
        if previous is not None:
            self._by_address.pop(previous.address, None)
            if previous.address != entry.address:
                self.transport.forget(previous.address)  # the host moved: stop calling the old one
            if entry.generation > previous.generation:
                self._log.info(
                    "host {host_id} restarted (generation {generation}) at {address}",
                    host_id=entry.host_id,
                    generation=entry.generation,
                    address=entry.address,
                )
        else:
            self._log.info("host {host_id} at {address} joined the network", host_id=entry.host_id, address=entry.address)
        self._by_address[entry.address] = entry
        self.reliability.new_generation(entry.host_id, entry.generation)

    def host_at(self, address):
        """:return: the id of the host the NI places at *address*, or None."""
        entry = self._by_address.get(address)
        return entry.host_id if entry is not None else None

    # -- topology ---------------------------------------------------------------------------

    def observe_heartbeat(self, address, rtt, reply):
        """A ``gossip.ping`` to *address* took *rtt* seconds and answered *reply* (both None:
        it was missed). The reply carries the peer's current coordinate, which Vivaldi needs:
        the one in the NI is only re-announced now and then."""
        entry = self._by_address.get(address)
        if entry is None:
            return
        if rtt is None:
            self.reliability.record_timeout(entry.host_id)
            return
        self.reliability.record_success(entry.host_id, rtt)
        try:
            remote = Coordinate.from_wire(reply.get("coord") if type(reply) is dict else None)
        except ValueError:
            remote = entry.coordinate
        self._coordinate = update(self._coordinate, remote, rtt, self.rng)

    @property
    def coordinate(self):
        return self._coordinate

    # -- serving peers ----------------------------------------------------------------------

    def _serve_ping(self, request):
        return {"coord": self._coordinate.to_wire()}

    def _serve_push(self, request):
        try:
            return self.state.receive_push(request)
        except EntryError as e:
            raise errors.InvalidRequest(f"gossip.push: {e}") from None

    def _serve_sync(self, request):
        try:
            return self.state.receive_sync(request)
        except EntryError as e:
            raise errors.InvalidRequest(f"gossip.sync: {e}") from None

    def _serve_join(self, request):
        try:
            entry = HostEntry.from_wire(request.get("entry"))
        except EntryError as e:
            raise errors.InvalidRequest(f"gossip.join: {e}") from None
        if entry.host_id == self.state.host_id:
            raise errors.InvalidRequest("gossip.join: that host id is this host's")
        self.state.merge_entries([entry])
        return {"entries": [e.to_wire() for e in self.state.ni.entries.values()], "cluster": self._cluster()}

    # -- joining ----------------------------------------------------------------------------

    def join(self, seeds):
        """Ask each seed in turn for the NI until one answers; retry until one does.

        :return: a Deferred that fires with the cluster description the seed gave.
        """
        return defer.ensureDeferred(self._join(list(seeds)))

    async def _join(self, seeds):
        attempt = 0
        while True:
            for seed in seeds:
                try:
                    reply = await self.transport.call(
                        seed, "gossip.join", {"entry": self.state.local.to_wire()}, self.reliability.settings.call_timeout
                    )
                    entries = check_entries(reply.get("entries") if type(reply) is dict else None)
                except (errors.NodeDBError, EntryError) as e:
                    self._log.warn("seed {seed} did not answer the join: {error}", seed=seed, error=str(e))
                    continue
                cluster = reply.get("cluster") or {}
                if type(cluster) is dict and "id" in cluster and cluster["id"] is None:
                    # A seed that is still joining itself names no cluster yet (hosts started
                    # at once, each through the one before): ask again later.
                    self._log.info("seed {seed} has not joined a cluster yet", seed=seed)
                    continue
                self.state.merge_entries(entries, decay=0)
                self._log.info("joined through {seed}: {count} hosts known", seed=seed, count=self.state.ni.size)
                known = {e.address for e in self.state.ni.entries.values()}
                for other in seeds:
                    if other not in known:
                        self.transport.forget(other)
                return cluster
            attempt += 1
            await deferLater(self.clock, min(30.0, self.timing.join_retry * attempt), lambda: None)
