"""LogSync: ships each partition's commit log from its primary to its followers.

On the primary, every local commit is followed by a wait until a majority of the partition's
replica set has the entries durably (:meth:`LogSyncService.acknowledge`); reads wait for a
read barrier (:meth:`LogSyncService.read_barrier`: a majority confirmed, after the read
arrived, that no newer epoch exists, and everything the primary holds is committed). Entries
travel in one ``logsync.append`` stream per follower host, carrying every partition that host
follows, so a busy pair of hosts batches naturally. A follower whose log diverged, or is
behind what the primary still keeps, gets a full resync in pages.

Failover support: ``logsync.promise`` fences replicas at a new epoch and reports how complete
each copy is; :meth:`LogSyncService.elect` runs it for the Voting leader.

This module is the Twisted service: timers, the handlers of the three messages, and the
storage calls of a follower. The decisions are pure, each in its own module (no reactor, time
passed in): :mod:`~nodedb.logsync.state` (a partition's replication progress),
:mod:`~nodedb.logsync.lead` (the primary's lifecycle, waiting writes and reads, handoff),
:mod:`~nodedb.logsync.pipeline` (the message window per follower host),
:mod:`~nodedb.logsync.resync` (full resync pages), :mod:`~nodedb.logsync.election`
(failover) and :mod:`~nodedb.logsync.follower` (copies this host holds). The primary's side of
the I/O is :class:`nodedb.logsync.primary.Primaries`; the rules a follower applies are in
:func:`nodedb.storage.apply.apply_replication`.
"""

from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from nodedb.interfaces import ILogSync
from nodedb.logsync import election
from nodedb.logsync.follower import Copies, Following, unchanged_state
from nodedb.logsync.messages import parse_append, parse_handoff, parse_promise
from nodedb.logsync.primary import Primaries
from nodedb.storage import Reset


@dataclass(frozen=True)
class LogSyncTiming:
    """Replication settings; documented in docs/replication.md."""

    #: Seconds between probes of idle followers (they carry the truncation point and keep
    #: read barriers and lagging followers moving).
    heartbeat: float = 0.25
    #: Seconds a replication message may take.
    call_timeout: float = 5.0
    #: Seconds a write waits for a majority before it fails with Timeout (outcome unknown).
    write_timeout: float = 10.0
    #: Seconds a read waits for its barrier before it fails with Unavailable.
    read_timeout: float = 10.0
    #: Messages on their way to one follower host at a time (pipelining: a follower's disk
    #: is busy with one batch while the next travels).
    pipeline: int = 4
    #: Entries that make a message worth sending while another is still on its way.
    pipeline_batch: int = 64
    #: Most entries per partition, and bytes in all, of one message.
    batch_entries: int = 2048
    batch_bytes: int = 1024 * 1024
    #: Elements per page of a full resync.
    resync_page: int = 1000
    #: Seconds between log truncations; the log keeps at most this many entries even when a
    #: replica lags (that replica then gets a full resync).
    truncate_every: float = 5.0
    max_log_entries: int = 1_000_000
    #: A copy of a partition this host is no longer a replica of is dropped after this many
    #: seconds (the delay rides out a partition map that is still being replayed at restart).
    drop_after: float = 60.0
    #: A primary fenced by an election that did not finish asks the leader again this often.
    election_retry: float = 2.0
    #: Seconds a planned handoff may hold writes back while the new primary catches up.
    handoff_timeout: float = 3.0


@implementer(ILogSync)
class LogSyncService(Service):
    """
    :param clock: an ``IReactorTime``.
    :param host_id: this host's id.
    :param storage: the :class:`~nodedb.interfaces.IStorageBackend`.
    :param transport: the :class:`~nodedb.interfaces.IPeerTransport`.
    :param address_of: ``address_of(host_id)`` -> ``"host:port"`` or None.
    :param on_fenced: ``on_fenced(partition, epoch)`` when a replica refused this host as
        primary because it promised a newer epoch (an election started and did not finish).
    :param on_syncing: ``on_syncing(partitions)`` when the set of partitions this host
        follows but has not caught up on changes (it announces them ``inactive``).
    """

    _log = Logger()

    def __init__(self, clock, host_id, storage, transport, address_of, timing=None, on_fenced=None, on_syncing=None):
        self.clock = clock
        self.host_id = host_id
        self.storage = storage
        self.transport = transport
        self.address_of = address_of
        self.timing = timing or LogSyncTiming()
        self.on_syncing = on_syncing
        self.partitions = 1 << storage.layout.partition_bits
        self.primaries = Primaries(clock, storage, transport, address_of, self.timing, on_fenced)
        self._following = Following()
        self._copies = Copies(self.timing.drop_after)
        self._heartbeat = LoopingCall(self.primaries.beat)
        self._heartbeat.clock = clock
        self._truncation = LoopingCall(self._truncate)
        self._truncation.clock = clock

    def install(self, api):
        api.register("logsync.append", self._serve_append)
        api.register("logsync.promise", self._serve_promise)
        api.register("logsync.handoff", self._serve_handoff)

    def startService(self):
        super().startService()
        self.primaries.start()
        self._heartbeat.start(self.timing.heartbeat, now=False)
        self._truncation.start(self.timing.truncate_every, now=False)

    def stopService(self):
        super().stopService()
        for loop in (self._heartbeat, self._truncation):
            if loop.running:
                loop.stop()
        self.primaries.stop()

    def update(self, state):
        """The agreed partition map changed: take up, keep or leave each role."""
        leading = {}
        following = {}
        for partition, assignment in state.assignments.items():
            if assignment.primary == self.host_id:
                leading[partition] = assignment
            elif self.host_id in assignment.replicas:
                following[partition] = assignment.epoch
        self.primaries.step_down_from(leading)
        self._following.assign(following)
        self._note_syncing()
        if state.cluster_id is not None:
            if self._copies.known is None:  # once: every copy this store holds from before
                self._copies.found(p for p in range(state.partitions) if self._has_copy(p))
            self._copies.assigned(set(leading) | set(following))
        self.primaries.take_up(leading)

    # -- what the query layer asks (the primary's side: nodedb.logsync.primary) ------------

    def is_primary(self, partition):
        return self.primaries.is_primary(partition)

    def epochs(self, partitions):
        """``{partition: epoch}`` to commit with; :raise Unavailable: if this host is not
        the ready primary of one of them, or is handing it over (nothing was applied: safe to
        retry)."""
        return self.primaries.epochs(partitions)

    def begin(self, partitions):
        """:meth:`epochs` for a local commit about to start: until :meth:`landed` (or
        :meth:`acknowledge` with these epochs) says it is over, a handoff of these partitions
        waits for it."""
        return self.primaries.begin(partitions)

    def landed(self, epochs):
        """The local commit that :meth:`begin` returned *epochs* for is over (it failed, or
        :meth:`acknowledge` follows)."""
        self.primaries.landed(epochs)

    def acknowledge(self, results, epochs=None):
        """The local commit of ``[(element_id, version), ...]`` is durable (*epochs*: what
        :meth:`begin` returned for it).

        :return: None if a majority already has it (a replica set of one), else a Deferred
            that fires once a majority of each partition's replica set has it.
        """
        return self.primaries.acknowledge(results, epochs)

    def read_barrier(self, partitions):
        """Call after reading *partitions* locally: the read may be answered once this fires.

        :return: None if what was read may be answered now, else a Deferred that fires once a
            majority confirmed (after the call) that no newer primary exists, and everything
            the store held at the call is committed.

        :raise Unavailable: if this host is not their ready primary.
        """
        return self.primaries.read_barrier(partitions)

    def handoff(self, partition, epoch, follower):
        """Stop taking writes in *partition* (as its primary at *epoch*) until *follower*
        holds everything, so that an election at the next epoch can pick it.

        :return: a Deferred that fires with ``{"last": commit id}`` once *follower* has it
            all, or fails with Unavailable (after ``handoff_timeout``, and writes resume).
        """
        return self.primaries.handoff(partition, epoch, follower)

    def _serve_handoff(self, request):
        return self.handoff(*parse_handoff(request))

    # -- the follower's side ----------------------------------------------------------------

    def _serve_append(self, request):
        parts, parsed = parse_append(request, self.partitions, self.storage.layout)
        quick = [unchanged_state(units, self.storage.partition_state) for _partition, units in parsed]
        units = [unit for (_partition, part_units), state in zip(parsed, quick) if state is None for unit in part_units]
        if not units:
            return defer.succeed(self._appended([], parts, parsed, quick))
        return self.storage.replicate(units).addCallback(self._appended, parts, parsed, quick)

    def _appended(self, results, parts, parsed, quick):
        answers = []
        index = 0
        for part, (partition, part_units), known in zip(parts, parsed, quick):
            if known is not None:
                accepted, state = True, known
            else:
                outcomes = results[index : index + len(part_units)]
                index += len(part_units)
                accepted = all(ok for ok, _state in outcomes)
                state = outcomes[-1][1]
            self._following.answered(partition, accepted, state, part.get("last"))
            answers.append([accepted, state.last_commit_id, state.last_epoch, state.epoch, state.syncing])
        self._note_syncing()
        return {"parts": answers}

    def _serve_promise(self, request):
        units = parse_promise(request, self.partitions)
        return self.storage.replicate(units).addCallback(self._promised)

    def _promised(self, results):
        answers = []
        for accepted, state in results:
            self.primaries.fence_older(state.partition, state.epoch)
            answers.append([accepted, state.followed, state.last_commit_id, state.syncing])
        return {"parts": answers}

    def syncing(self):
        """The partitions this host follows whose copy is not caught up (``inactive``)."""
        return self._following.syncing()

    def _note_syncing(self):
        syncing = self._following.news()
        if syncing is not None and self.on_syncing is not None:
            self.on_syncing(syncing)

    # -- failover ---------------------------------------------------------------------------

    def elect(self, requests, skip=(), prefer=None):
        """Fence the replicas of each partition at a new epoch and pick its next primary.

        :param requests: ``{partition: (new_epoch, replicas)}``.
        :param skip: hosts not to ask (known to be down: waiting for them would only delay
            the answer).
        :param prefer: ``{partition: host}`` to pick when it is among the most complete.
        :return: a Deferred that fires with ``{partition: host}`` for the partitions where
            a majority of the replicas answered (see :func:`nodedb.logsync.election.tally`).
        """
        calls, asked = [], []
        for host, parts in election.promise_requests(requests, skip):
            if host == self.host_id:
                d = defer.maybeDeferred(self._serve_promise, {"parts": parts})
            else:
                address = self.address_of(host)
                if address is None:
                    continue
                d = self.transport.call(address, "logsync.promise", {"parts": parts}, self.timing.call_timeout)
            calls.append(d)
            asked.append((host, parts))
        d = defer.DeferredList(calls, consumeErrors=True)
        d.addCallback(self._tally, asked, requests, prefer or {})
        return d

    @staticmethod
    def _tally(outcomes, asked, requests, prefer):
        replies = [(host, parts, reply if ok else None) for (ok, reply), (host, parts) in zip(outcomes, asked)]
        return election.tally(replies, requests, prefer)

    # -- housekeeping -----------------------------------------------------------------------

    def _truncate(self):
        units = self.primaries.truncations()
        now = self.clock.seconds()
        for partition in self._copies.due(now):
            self._log.info("dropping this host's copy of partition {p}: it is no longer one of its replicas", p=partition)
            units.append(Reset(partition, self.storage.partition_state(partition).epoch, now))
        if units:
            self.storage.replicate(units).addErrback(self.primaries.storage_failed)

    def _has_copy(self, partition):
        state = self.storage.partition_state(partition)
        return bool(state.last_commit_id or state.syncing)

    def status(self):
        primaries = self.primaries.status()
        return {
            "primary": primaries["primary"],
            "following": len(self._following.epochs),
            "inactive": self.syncing(),
            "resyncs": primaries["resyncs"],
        }
