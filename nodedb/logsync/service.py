"""LogSync: ships each partition's commit log from its primary to its followers.

On the primary, every local commit is followed by a wait until a majority of the partition's
replica set has the entries durably (:meth:`LogSyncService.acknowledge`); reads wait for a
read barrier (:meth:`LogSyncService.read_barrier`: a majority confirmed, after the read
arrived, that no newer epoch exists, and everything the primary holds is committed). Entries
travel in one ``logsync.append`` message per follower host at a time, carrying every
partition that host follows, so a busy pair of hosts batches naturally. A follower whose log
diverged, or is behind what the primary still keeps, gets a full resync in pages.

Failover support: ``logsync.promise`` fences replicas at a new epoch and reports how complete
each copy is; :meth:`LogSyncService.elect` runs it for the Voting leader.

The rules a follower applies are in :func:`nodedb.storage.apply.apply_replication`; the
primary's bookkeeping is the pure :class:`nodedb.logsync.state.PrimaryProgress`.
"""

import bisect
import itertools
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nodedb import errors
from nodedb.ids import IdLayout, check_element_id
from nodedb.interfaces import ILogSync
from nodedb.logsync.state import PrimaryProgress, choose_primary, majority
from nodedb.storage import MORE, Append, LogEntry, Load, Promise, Reset, Truncate
from nodedb.storage.apply import epoch_at
from nodedb import codec


_LAYOUT = IdLayout()
#: Followers are told to drop their log in steps of this many entries.
TRUNCATE_STEP = 1024


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


class _Primary:
    """This host's role as primary of one partition at one epoch."""

    def __init__(self, partition, epoch, followers):
        self.partition = partition
        self.epoch = epoch
        self.followers = tuple(followers)
        self.progress = None  # a PrimaryProgress once the lead promise is durable
        self.start = 0  # our last commit id when we took up the epoch
        self.fenced = False
        self.asked = 0.0  # when we last asked for the election that fenced us
        self.handoff = None  # (follower, deadline, Deferred) while handing the partition over
        self.landing = 0  # local commits begun (begin()) and not over yet
        self.writes = []  # sorted [(commit_id, serial, deadline, Deferred)]
        self.reads = []  # [(sent, last, deadline, Deferred)]

    @property
    def ready(self):
        return self.progress is not None and not self.fenced


class _Link:
    """The stream of append messages to one follower host."""

    def __init__(self, host):
        self.host = host
        self.sequence = 0  # of the last message sent
        self.in_flight = 0  # messages sent and not answered yet
        self.force = True  # probe every partition, even those with nothing new
        self.wanted = set()  # partitions with something to ship, or a read waiting on them
        self.urgent = set()  # of those, the ones that may not wait for a fuller message


def _int(value, name):
    if type(value) is not int or value < 0 or value >= 1 << 64:
        raise errors.InvalidRequest(f"logsync: {name} must be a non-negative integer")
    return value


def _element_of(partition, element_id, layout):
    check_element_id(element_id)
    if layout.partition_of(element_id) != partition:
        raise errors.InvalidRequest(f"logsync: element {element_id} is not in partition {partition}")
    return element_id


def _entry(partition, value, layout):
    if type(value) is not list or len(value) != 7:
        raise errors.InvalidRequest("logsync: malformed log entry")
    commit_id, epoch, timestamp, change, record_type, element_id, data = value
    _int(commit_id, "commit id")
    _int(epoch, "epoch")
    codec.check_stored_type(record_type)
    _element_of(partition, element_id, layout)
    if type(timestamp) not in (int, float) or type(change) is not int or change & ~MORE not in (0, 1, 2) or type(data) is not bytes:
        raise errors.InvalidRequest("logsync: malformed log entry")
    return LogEntry.from_wire(partition, value)


def _element(partition, value, layout):
    if type(value) is not list or len(value) != 4:
        raise errors.InvalidRequest("logsync: malformed element")
    record_type, element_id, data, version = value
    codec.check_stored_type(record_type)
    _element_of(partition, element_id, layout)
    _int(version, "version")
    if type(data) is not bytes:
        raise errors.InvalidRequest("logsync: malformed element")
    return (record_type, element_id, data, version)


def _pair(value, name):
    if type(value) is not list or len(value) != 2:
        raise errors.InvalidRequest(f"logsync: {name} is [commit id, epoch]")
    return (_int(value[0], name), _int(value[1], name))


def parse_part(part, max_partition, layout=_LAYOUT):
    """The storage units of one part of a ``logsync.append`` message (checked field by
    field: a peer's bytes never reach storage unchecked; every element must belong to the
    part's partition under *layout*)."""
    if type(part) is not dict:
        raise errors.InvalidRequest("logsync: a part is a map")
    partition = _int(part.get("p"), "partition")
    if partition >= max_partition:
        raise errors.InvalidRequest("logsync: no such partition")
    epoch = _int(part.get("e"), "epoch")
    units = []
    if "reset" in part:
        mtime = part["reset"]
        if type(mtime) not in (int, float):
            raise errors.InvalidRequest("logsync: reset is a time")
        units.append(Reset(partition, epoch, float(mtime)))
    if "load" in part:
        elements = part["load"]
        if type(elements) is not list:
            raise errors.InvalidRequest("logsync: load is a list")
        done = part.get("done")
        loaded = [_element(partition, e, layout) for e in elements]
        units.append(Load(partition, epoch, loaded, None if done is None else _pair(done, "done")))
    if "prev" in part:
        entries = part.get("entries", [])
        if type(entries) is not list:
            raise errors.InvalidRequest("logsync: entries is a list")
        truncate = _int(part.get("trunc", 0), "trunc")
        start = _int(part.get("start", 0), "start")
        entries = [_entry(partition, e, layout) for e in entries]
        units.append(Append(partition, epoch, _pair(part["prev"], "prev"), entries, truncate, start))
    if not units:
        raise errors.InvalidRequest("logsync: a part carries prev, reset or load")
    return partition, units


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
        self.on_fenced = on_fenced
        self.on_syncing = on_syncing
        self._announced = None  # the syncing partitions last reported
        self._copies = None  # partitions this store may hold data of
        self._held = set()  # partitions the agreed map gives this host
        self._orphans = {}  # partition -> since when this host holds a copy it should not
        self.partitions = 1 << storage.layout.partition_bits
        self._primaries = {}  # partition -> _Primary
        self._following = {}  # partition -> epoch of the assignment this host follows
        self._caught_up = set()  # followed partitions whose copy reached the primary's end
        self._links = {}  # follower host -> _Link
        self._serial = itertools.count()
        self._pumping = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._truncation = LoopingCall(self._truncate)
        self._truncation.clock = clock

    def install(self, api):
        api.register("logsync.append", self._serve_append)
        api.register("logsync.promise", self._serve_promise)
        api.register("logsync.handoff", self._serve_handoff)

    def startService(self):
        super().startService()
        self._heartbeat.start(self.timing.heartbeat, now=False)
        self._truncation.start(self.timing.truncate_every, now=False)

    def stopService(self):
        super().stopService()
        for loop in (self._heartbeat, self._truncation):
            if loop.running:
                loop.stop()
        for partition in list(self._primaries):
            self._step_down(partition, errors.Timeout("the node stopped before the write was acknowledged; "
                                                      "it may or may not be applied"))

    # -- roles ------------------------------------------------------------------------------

    def update(self, state):
        """The agreed partition map changed: take up, keep or leave each role."""
        wanted = {}
        following = {}
        for partition, assignment in state.assignments.items():
            if assignment.primary == self.host_id:
                wanted[partition] = assignment
            elif self.host_id in assignment.replicas:
                following[partition] = assignment.epoch
        for partition in list(self._primaries):
            assignment = wanted.get(partition)
            if assignment is None or assignment.epoch != self._primaries[partition].epoch:
                self._step_down(partition)
        for partition in list(self._caught_up):
            if following.get(partition) != self._following.get(partition):
                self._caught_up.discard(partition)
        self._following = following
        self._note_syncing()
        if state.cluster_id is not None:
            held = set(wanted) | set(following)
            if self._copies is None:  # once: every copy this store holds from before
                self._copies = {p for p in range(state.partitions) if self._has_copy(p)}
            self._copies |= held
            self._held = held
        new = []
        for partition, assignment in wanted.items():
            primary = self._primaries.get(partition)
            if primary is None:
                primary = self._primaries[partition] = _Primary(partition, assignment.epoch, assignment.replicas[1:])
                new.append(primary)
            elif primary.followers != assignment.replicas[1:]:
                self._change_followers(primary, assignment.replicas[1:])
        if new:
            units = [Promise(p.partition, p.epoch, lead=True) for p in new]
            self.storage.replicate(units).addCallbacks(self._led, self._storage_failed, (new,))
        self._schedule_pump()

    def _led(self, results, primaries):
        for primary, (accepted, state) in zip(primaries, results):
            if self._primaries.get(primary.partition) is not primary:
                continue
            if not accepted:
                self._fenced(primary)
                continue
            primary.start = state.last_commit_id
            primary.progress = PrimaryProgress(primary.partition, primary.epoch, primary.followers, state.last_commit_id)
            self._want(primary, urgent=True)
            self._log.debug("primary of partition {p} at epoch {e}", p=primary.partition, e=primary.epoch)
        self._schedule_pump()

    def _change_followers(self, primary, followers):
        primary.followers = tuple(followers)
        if primary.progress is None:
            return
        old = primary.progress
        progress = PrimaryProgress(primary.partition, primary.epoch, primary.followers, old.last)
        for host in primary.followers:
            if host in old.progress:
                progress.progress[host] = old.progress[host]
        primary.progress = progress
        self._want(primary, urgent=True)
        self._check(primary)

    def _step_down(self, partition, write_error=None):
        self._fail_waiting(self._primaries.pop(partition), write_error)

    def _fail_waiting(self, primary, write_error=None):
        """Fail the writes (outcome unknown) and reads (safe to retry) still waiting on
        *primary*, which no longer leads its partition."""
        writes, primary.writes = primary.writes, []
        reads, primary.reads = primary.reads, []
        write_error = write_error or errors.Timeout(
            f"partition {primary.partition} changed primary before the write was acknowledged; "
            "it may or may not be applied"
        )
        for *_, d in writes:
            d.errback(write_error)
        for *_, d in reads:
            d.errback(errors.Unavailable(f"partition {primary.partition} changes primary; try again"))

    def _fenced(self, primary):
        if primary.fenced:
            return
        primary.fenced = True
        self._ask_election(primary)
        self._fail_waiting(primary)
        self._log.info("partition {p}: a replica promised a newer epoch than {e}; this host stops taking writes",
                       p=primary.partition, e=primary.epoch)


    def _ask_election(self, primary):
        """Ask for the election that fenced *primary* to be finished (again every
        ``election_retry`` seconds: the leader that started it may be gone)."""
        primary.asked = self.clock.seconds()
        if self.on_fenced is not None:
            self.on_fenced(primary.partition, primary.epoch)

    def _storage_failed(self, failure):
        self._log.failure("replication could not write to storage", failure)

    # -- what the query layer asks ----------------------------------------------------------

    def _ready(self, partition):
        primary = self._primaries.get(partition)
        if primary is None or not primary.ready:
            raise errors.Unavailable(f"this host is not the primary of partition {partition} now")
        return primary

    def is_primary(self, partition):
        primary = self._primaries.get(partition)
        return primary is not None and primary.ready

    def epochs(self, partitions):
        """``{partition: epoch}`` to commit with; :raise Unavailable: if this host is not
        the ready primary of one of them, or is handing it over (nothing was applied: safe to
        retry)."""
        epochs = {}
        for partition in partitions:
            primary = self._ready(partition)
            if primary.handoff is not None:
                raise errors.Unavailable(f"partition {partition} is moving to another host; try again")
            epochs[partition] = primary.epoch
        return epochs

    def begin(self, partitions):
        """:meth:`epochs` for a local commit about to start: until :meth:`landed` (or
        :meth:`acknowledge` with these epochs) says it is over, a handoff of these partitions
        waits for it."""
        epochs = self.epochs(partitions)
        for partition in epochs:
            self._primaries[partition].landing += 1
        return epochs

    def landed(self, epochs):
        """The local commit that :meth:`begin` returned *epochs* for is over (it failed, or
        :meth:`acknowledge` follows)."""
        for partition, epoch in epochs.items():
            primary = self._primaries.get(partition)
            if primary is not None and primary.epoch == epoch and primary.landing > 0:
                primary.landing -= 1
                if primary.handoff is not None and primary.progress is not None:
                    self._check(primary)

    def acknowledge(self, results, epochs=None):
        """The local commit of ``[(element_id, version), ...]`` is durable (*epochs*: what
        :meth:`begin` returned for it).

        :return: None if a majority already has it (a replica set of one), else a Deferred
            that fires once a majority of each partition's replica set has it.
        """
        newest = {}
        layout = self.storage.layout
        for element_id, version in results:
            partition = layout.partition_of(element_id)
            newest[partition] = max(newest.get(partition, 0), version)
        waits = []
        deadline = self.clock.seconds() + self.timing.write_timeout
        for partition, commit_id in newest.items():
            primary = self._primaries.get(partition)
            if primary is None or primary.progress is None:
                return defer.fail(errors.Timeout(f"partition {partition} changed primary during the write; "
                                                 "it may or may not be applied"))
            progress = primary.progress
            progress.appended(commit_id)
            if not progress.progress:
                continue  # a replica set of one: nothing to ship, nothing to wait for
            self._want(primary)
            if progress.committed() >= commit_id:
                continue
            d = defer.Deferred()
            bisect.insort(primary.writes, (commit_id, next(self._serial), deadline, d))
            waits.append(d)
        if epochs:
            self.landed(epochs)
        if not waits:
            return None
        self._schedule_pump()
        return waits[0] if len(waits) == 1 else defer.gatherResults(waits, consumeErrors=True).addErrback(_first_error)

    def read_barrier(self, partitions):
        """Call after reading *partitions* locally: the read may be answered once this fires.

        :return: None if what was read may be answered now, else a Deferred that fires once a
            majority confirmed (after the call) that no newer primary exists, and everything
            the store held at the call is committed.

        :raise Unavailable: if this host is not their ready primary.
        """
        waits = []
        deadline = self.clock.seconds() + self.timing.read_timeout
        for partition in partitions:
            primary = self._ready(partition)
            progress = primary.progress
            if not progress.progress:
                continue  # a replica set of one
            sent = {}
            for host in progress.progress:
                link = self._link(host)
                sent[host] = link.sequence
                link.wanted.add(partition)
                link.urgent.add(partition)
            # Everything the store holds now (a commit is visible there a moment before its
            # Deferred tells us) must be on a majority before the read may answer.
            last = max(progress.last, self.storage.partition_state(partition).last_commit_id)
            d = defer.Deferred()
            primary.reads.append((sent, last, deadline, d))
            waits.append(d)
        if not waits:
            return None
        self._schedule_pump()
        return waits[0] if len(waits) == 1 else defer.gatherResults(waits, consumeErrors=True).addErrback(_first_error)

    def _check(self, primary):
        """Fire the writes, reads and handoff of *primary* that its progress now allows."""
        progress = primary.progress
        committed = progress.committed()
        while primary.writes and primary.writes[0][0] <= committed:
            primary.writes.pop(0)[-1].callback(None)
        if primary.handoff is not None:
            follower, _deadline, d = primary.handoff
            state = progress.progress.get(follower)
            caught_up = state is not None and state.resync is None and state.match >= progress.last
            if caught_up and not primary.writes and not primary.landing and d is not None and not d.called:
                d.callback({"last": progress.last})
        if primary.reads:
            waiting = []
            for read in primary.reads:
                sent, last, _deadline, d = read
                if last <= committed and progress.confirmed_since(sent):
                    d.callback(None)
                else:
                    waiting.append(read)
            primary.reads = waiting

    # -- shipping ---------------------------------------------------------------------------

    def _link(self, host):
        link = self._links.get(host)
        if link is None:
            link = self._links[host] = _Link(host)
        return link

    def _schedule_pump(self):
        if self._pumping is None and self.running:
            self._pumping = self.clock.callLater(0, self._pump)

    def _pump(self):
        """Send to every follower host that has something to send, as long as its window of
        ``pipeline`` messages is not full. New entries alone wait for a message while another
        is on its way, until there are ``pipeline_batch`` of them: fewer, fuller messages cost
        less CPU on both ends; reads, handoffs and probes go at once."""
        self._pumping = None
        for link in list(self._links.values()):
            if link.in_flight >= self.timing.pipeline or not (link.force or link.wanted):
                continue
            if link.in_flight and not link.force and not link.urgent and self._backlog(link) < self.timing.pipeline_batch:
                continue
            self._send(link)

    def _backlog(self, link):
        """How many entries wait to be shipped to *link*'s host."""
        waiting = 0
        for partition in link.wanted:
            primary = self._primaries.get(partition)
            if primary is not None and primary.ready:
                state = primary.progress.progress.get(link.host)
                if state is not None:
                    waiting += max(0, primary.progress.last - state.next + 1)
        return waiting

    def _want(self, primary, hosts=None, urgent=False):
        """Ship *primary*'s partition to *hosts* (its followers by default) soon (*urgent*:
        without waiting for a fuller message)."""
        for host in primary.progress.progress if hosts is None else hosts:
            link = self._link(host)
            link.wanted.add(primary.partition)
            if urgent:
                link.urgent.add(primary.partition)
        self._schedule_pump()

    def _send(self, link):
        """One ``logsync.append`` to *link*'s host: every partition it follows on a heartbeat
        (``force``), else those with something to ship or a read waiting."""
        if link.force:
            candidates = self._primaries.values()
        else:
            candidates = [self._primaries[p] for p in sorted(link.wanted) if p in self._primaries]
        parts, sent, size = [], [], 0
        for primary in candidates:
            if not primary.ready or link.host not in primary.progress.progress:
                continue
            state = primary.progress.progress[link.host]
            if state.in_flight:
                continue  # one page of a resync at a time
            part, kind, part_size = self._part(primary, link.host, state)
            if kind == "resync":
                state.in_flight = True
            elif part["entries"]:
                primary.progress.sent(link.host, part["entries"][-1][0])
            parts.append(part)
            sent.append((primary, kind))
            size += part_size
            if size >= self.timing.batch_bytes:
                break
        if not parts:
            link.force = False
            link.wanted.clear()
            link.urgent.clear()
            return
        address = self.address_of(link.host)
        if address is None:
            return
        link.force = False
        link.wanted.difference_update(primary.partition for primary, _kind in sent)
        link.urgent.intersection_update(link.wanted)
        link.in_flight += 1
        link.sequence += 1
        sequence = link.sequence
        d = self.transport.call(address, "logsync.append", {"parts": parts}, self.timing.call_timeout)
        d.addCallbacks(self._replied, self._lost, (link, sequence, sent), None, (link, sent))

    def _part(self, primary, host, state):
        """One part for *host*: a page of its resync, or the entries after its ``next``."""
        partition = primary.partition
        stored = self.storage.partition_state(partition)
        if state.resync is None:
            prev = state.next - 1
            prev_epoch = self._epoch_at(partition, prev, stored)
            if prev_epoch is None:
                self._start_resync(primary, host)
        if state.resync is not None:
            return self._resync_part(primary, state.resync)
        entries = []
        if state.next <= primary.progress.last:
            entries = self._whole_commits(partition, prev)
        part = {
            "p": partition,
            "e": primary.epoch,
            "prev": [prev, prev_epoch],
            "entries": [entry.to_wire() for entry in entries],
            # In steps, so that a follower drops its log a chunk at a time, not a few
            # entries with every message.
            "trunc": primary.progress.fully_replicated() // TRUNCATE_STEP * TRUNCATE_STEP,
            "last": primary.progress.last,
            "start": primary.start,
        }
        return part, "append", 64 + sum(len(entry.data) + 48 for entry in entries)

    def _whole_commits(self, partition, prev):
        """Up to ``batch_entries`` log entries after *prev*, cut at the end of a commit (a
        transaction's entries travel together, however many there are), so that no copy,
        and no primary a failover picks, ever holds part of a commit."""
        entries = self.storage.read_log(partition, prev, self.timing.batch_entries)
        if not entries or not entries[-1].more:
            return entries
        end = len(entries)
        while end and entries[end - 1].more:
            end -= 1
        if end:
            return entries[:end]
        while entries[-1].more:  # one commit longer than a batch
            more = self.storage.read_log(partition, entries[-1].commit_id, self.timing.batch_entries)
            if not more:
                return []  # storage commits are atomic: cannot happen
            entries.extend(more)
        end = next(i for i, entry in enumerate(entries) if not entry.more)
        return entries[: end + 1]

    def _resync_part(self, primary, resync):
        partition = primary.partition
        layout = self.storage.layout
        part = {"p": partition, "e": primary.epoch}
        if not resync.reset_sent:
            part["reset"] = self.clock.seconds()
            resync.reset_sent = True
        elements, size = [], 0
        while resync.type_index < len(resync.types) and len(elements) < self.timing.resync_page:
            record_type = resync.types[resync.type_index]
            after = max(resync.after, layout.first_id(partition) - 1)
            wanted = self.timing.resync_page - len(elements)
            batch = self.storage.scan(record_type, after, wanted)
            inside = [item for item in batch if item[0] <= layout.last_id(partition)]
            for element_id, data, version in inside:
                elements.append([record_type, element_id, data, version])
                size += len(data) + 32
            if inside:
                resync.after = inside[-1][0]
            if len(inside) < len(batch) or len(batch) < wanted:
                resync.type_index += 1
                resync.after = -1
            if size >= self.timing.batch_bytes // 2:
                break
        part["load"] = elements
        resync.copied += len(elements)
        if resync.type_index >= len(resync.types):
            part["done"] = [resync.base, resync.base_epoch]
            resync.done_sent = True
        return part, "resync", size + 64

    def _start_resync(self, primary, host):
        stored = self.storage.partition_state(primary.partition)
        primary.progress.appended(stored.last_commit_id)
        self._log.info("partition {p}: follower {host} gets a full resync as of commit {base}",
                       p=primary.partition, host=host, base=stored.last_commit_id)
        primary.progress.start_resync(host, stored.last_commit_id, stored.last_epoch, self.storage.record_types())

    def _log_epoch(self, partition, commit_id):
        entries = self.storage.read_log(partition, commit_id - 1, 1)
        return entries[0].epoch if entries and entries[0].commit_id == commit_id else None

    def _replied(self, reply, link, sequence, sent):
        link.in_flight -= 1
        answers = reply.get("parts") if type(reply) is dict else None
        if type(answers) is not list or len(answers) != len(sent):
            self._log.warn("malformed logsync.append reply from {host}", host=link.host)
            self._schedule_pump()
            return
        for (primary, kind), answer in zip(sent, answers):
            if self._primaries.get(primary.partition) is not primary or not primary.ready:
                continue
            try:
                accepted, last, last_epoch, epoch, syncing = answer
            except (TypeError, ValueError):
                continue
            self._answer(primary, link.host, kind, sequence, bool(accepted), last, last_epoch, epoch, bool(syncing))
            state = primary.progress.progress.get(link.host) if primary.ready else None
            if state is not None and (state.resync is not None or state.next <= primary.progress.last):
                link.wanted.add(primary.partition)  # more to ship
        self._schedule_pump()

    def _answer(self, primary, host, kind, sequence, accepted, last, last_epoch, epoch, syncing):
        progress = primary.progress
        state = progress.progress.get(host)
        if state is None:
            return
        if type(epoch) is int and epoch > primary.epoch:
            self._fenced(primary)
            return
        if kind == "resync":
            state.in_flight = False
            if accepted and state.resync is not None:
                if state.resync.done_sent:
                    progress.resynced(host)
                    self._log.info("partition {p}: full resync of {host} done", p=primary.partition, host=host)
                else:
                    state.resync.checkpoint()
                progress.accepted(host, last, sequence)
            elif not accepted:
                self._start_resync(primary, host)  # start over from a fresh reset
        elif accepted:
            progress.accepted(host, last, sequence)
        elif syncing:
            self._start_resync(primary, host)  # an interrupted resync: start it again
        elif type(last) is int and type(last_epoch) is int:
            if progress.position(host, last, last_epoch, lambda c: self._epoch_at(primary.partition, c)):
                self._start_resync(primary, host)  # diverged
        self._check(primary)

    def _epoch_at(self, partition, commit_id, stored=None):
        """The epoch of our entry *commit_id*, or None when our log no longer reaches back
        there (a follower that stands there needs a full resync)."""
        stored = stored or self.storage.partition_state(partition)
        if commit_id < stored.truncated:
            return None
        return epoch_at(stored, commit_id, self._log_epoch)

    def _lost(self, failure, link, sent):
        link.in_flight -= 1
        for primary, kind in sent:
            state = primary.progress.progress.get(link.host) if primary.progress else None
            if state is None:
                continue
            if kind == "resync":
                state.in_flight = False
                if state.resync is not None:
                    state.resync.rewind()
            else:
                primary.progress.lost(link.host)
        # Sent again at the next heartbeat, not at once: the follower may be down.

    def _beat(self):
        now = self.clock.seconds()
        self._expire_handoffs(now)
        for link in self._links.values():
            link.force = True
        for primary in self._primaries.values():
            if primary.fenced and now - primary.asked >= self.timing.election_retry:
                self._ask_election(primary)
            for queue, error in (
                (primary.writes, errors.Timeout("not acknowledged by a majority of the replicas in time; "
                                                "the write may or may not be applied")),
                (primary.reads, errors.Unavailable("the partition's replicas did not confirm the read in time")),
            ):
                late = [item for item in queue if item[2] <= now]
                if late:
                    queue[:] = [item for item in queue if item[2] > now]
                    for *_, d in late:
                        d.errback(error)
        self._schedule_pump()

    def _truncate(self):
        units = []
        for primary in self._primaries.values():
            if not primary.ready:
                continue
            stored = self.storage.partition_state(primary.partition)
            upto = max(primary.progress.fully_replicated(), primary.progress.last - self.timing.max_log_entries)
            if upto > stored.truncated:
                units.append(Truncate(primary.partition, upto))
        units.extend(self._drop_orphans())
        if units:
            self.storage.replicate(units).addErrback(self._storage_failed)

    def _has_copy(self, partition):
        state = self.storage.partition_state(partition)
        return bool(state.last_commit_id or state.syncing)

    def _drop_orphans(self):
        """Reset units for the copies of partitions this host has not been a replica of for
        ``drop_after`` seconds (moved elsewhere, or this host was removed and re-accepted)."""
        if self._copies is None:
            return []
        now = self.clock.seconds()
        units = []
        for partition in sorted(self._copies - self._held):
            since = self._orphans.setdefault(partition, now)
            if now - since >= self.timing.drop_after:
                state = self.storage.partition_state(partition)
                self._log.info("dropping this host's copy of partition {p}: it is no longer one of its replicas",
                               p=partition)
                units.append(Reset(partition, state.epoch, now))
                self._copies.discard(partition)
                del self._orphans[partition]
        for partition in list(self._orphans):
            if partition in self._held:
                del self._orphans[partition]
        return units

    # -- the follower's side ----------------------------------------------------------------

    def _serve_append(self, request):
        parts = request.get("parts")
        if type(parts) is not list or not parts:
            raise errors.InvalidRequest("logsync.append: parts is a non-empty list")
        parsed = [parse_part(part, self.partitions, self.storage.layout) for part in parts]
        # A probe that changes nothing here (the usual heartbeat, or a read barrier's) is
        # answered from the stored state, without a synced write.
        quick = [self._unchanged_by(units) for _partition, units in parsed]
        units = [unit for (_partition, part_units), state in zip(parsed, quick) if state is None for unit in part_units]
        if not units:
            return defer.succeed(self._appended([], parts, parsed, quick))
        return self.storage.replicate(units).addCallback(self._appended, parts, parsed, quick)

    def _unchanged_by(self, units):
        """The partition's state if *units* is a probe it would accept without any change,
        else None (then storage decides)."""
        if len(units) != 1 or type(units[0]) is not Append or units[0].entries:
            return None
        unit = units[0]
        state = self.storage.partition_state(unit.partition)
        if (
            unit.epoch == state.epoch
            and not state.syncing
            and tuple(unit.prev) == (state.last_commit_id, state.last_epoch)
            and (state.followed == unit.epoch or state.last_commit_id < unit.start)
            and min(unit.truncate, state.last_commit_id) <= state.truncated
        ):
            return state
        return None

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
            primary_last = part.get("last")
            if accepted and not state.syncing and type(primary_last) is int and state.last_commit_id >= primary_last:
                self._caught_up.add(partition)
            elif not accepted or state.syncing:
                self._caught_up.discard(partition)
            answers.append([accepted, state.last_commit_id, state.last_epoch, state.epoch, state.syncing])
        self._note_syncing()
        return {"parts": answers}

    def _serve_promise(self, request):
        parts = request.get("parts")
        if type(parts) is not list or not parts:
            raise errors.InvalidRequest("logsync.promise: parts is a non-empty list")
        units = []
        for part in parts:
            partition, epoch = _pair(part, "a promise")
            if partition >= self.partitions:
                raise errors.InvalidRequest("logsync.promise: no such partition")
            units.append(Promise(partition, epoch))
        return self.storage.replicate(units).addCallback(self._promised)

    def _promised(self, results):
        answers = []
        for accepted, state in results:
            primary = self._primaries.get(state.partition)
            if primary is not None and state.epoch > primary.epoch:
                self._fenced(primary)
            answers.append([accepted, state.followed, state.last_commit_id, state.syncing])
        return {"parts": answers}

    def syncing(self):
        """The partitions this host follows whose copy is not caught up (``inactive``)."""
        return sorted(p for p in self._following if p not in self._caught_up)

    def _note_syncing(self):
        syncing = self.syncing()
        if syncing != self._announced:
            self._announced = syncing
            if self.on_syncing is not None:
                self.on_syncing(syncing)

    # -- failover ---------------------------------------------------------------------------

    def elect(self, requests, skip=(), prefer=None):
        """Fence the replicas of each partition at a new epoch and pick its next primary.

        :param requests: ``{partition: (new_epoch, replicas)}``.
        :param skip: hosts not to ask (known to be down: waiting for them would only delay
            the answer).
        :param prefer: ``{partition: host}`` to pick when it is among the most complete.
        :return: a Deferred that fires with ``{partition: host}`` for the partitions where
            a majority of the replicas answered (see :func:`nodedb.logsync.state.majority`).
        """
        by_host = {}
        for partition, (epoch, replicas) in requests.items():
            for host in replicas:
                by_host.setdefault(host, []).append([partition, epoch])
        calls, hosts = [], []
        for host, parts in sorted(by_host.items()):
            if host in skip:
                continue
            if host == self.host_id:
                d = defer.maybeDeferred(self._serve_promise, {"parts": parts})
            else:
                address = self.address_of(host)
                if address is None:
                    continue
                d = self.transport.call(address, "logsync.promise", {"parts": parts}, self.timing.call_timeout)
            calls.append(d)
            hosts.append((host, parts))
        d = defer.DeferredList(calls, consumeErrors=True)
        d.addCallback(self._tally, hosts, requests, prefer or {})
        return d

    def _tally(self, outcomes, hosts, requests, prefer):
        answers = {partition: {} for partition in requests}
        for (ok, reply), (host, parts) in zip(outcomes, hosts):
            if not ok or type(reply) is not dict or type(reply.get("parts")) is not list:
                continue
            for (partition, _epoch), answer in zip(parts, reply["parts"]):
                if type(answer) is list and len(answer) == 4 and answer[0] is True:
                    answers[partition][host] = (answer[1], answer[2], bool(answer[3]))
        chosen = {}
        for partition, (_epoch, replicas) in requests.items():
            if len(answers[partition]) >= majority(len(replicas)):
                host = choose_primary(answers[partition], prefer.get(partition))
                if host is not None:
                    chosen[partition] = host
        return chosen

    # -- planned moves ----------------------------------------------------------------------

    def handoff(self, partition, epoch, follower):
        """Stop taking writes in *partition* (as its primary at *epoch*) until *follower*
        holds everything, so that an election at the next epoch can pick it.

        :return: a Deferred that fires with ``{"last": commit id}`` once *follower* has it
            all, or fails with Unavailable (after ``handoff_timeout``, and writes resume).
        """
        primary = self._primaries.get(partition)
        if primary is None or not primary.ready or primary.epoch != epoch or follower not in primary.followers:
            return defer.fail(errors.Unavailable(f"not the primary of partition {partition} at epoch {epoch}"))
        if primary.handoff is not None:
            return defer.fail(errors.Unavailable(f"partition {partition} is already being handed over"))
        d = defer.Deferred()
        primary.handoff = (follower, self.clock.seconds() + self.timing.handoff_timeout, d)
        self._want(primary, [follower], urgent=True)
        self._log.info("handing partition {p} over to {host}", p=partition, host=follower)

        def finished(result):
            if primary.handoff is not None and primary.handoff[2] is d:
                if isinstance(result, Failure):
                    primary.handoff = None  # writes resume
                else:
                    # Writes stay refused until the map moves on (or the election fails).
                    primary.handoff = (follower, self.clock.seconds() + self.timing.handoff_timeout, None)
            return result

        d.addBoth(finished)
        self._check(primary)
        self._schedule_pump()
        return d

    def _serve_handoff(self, request):
        try:
            partition = _int(request["p"], "partition")
            epoch = _int(request["e"], "epoch")
            follower = request["to"]
        except KeyError:
            raise errors.InvalidRequest("logsync.handoff: p, e and to are required") from None
        if type(follower) is not str:
            raise errors.InvalidRequest("logsync.handoff: to is a host id")
        return self.handoff(partition, epoch, follower)

    def _expire_handoffs(self, now):
        for primary in self._primaries.values():
            if primary.handoff is not None and primary.handoff[1] <= now:
                _follower, _deadline, d = primary.handoff
                primary.handoff = None
                if d is not None and not d.called:
                    d.errback(errors.Unavailable(f"partition {primary.partition}: the follower did not catch up in time"))

    # -- status -----------------------------------------------------------------------------

    def status(self):
        primaries = {}
        for partition, primary in sorted(self._primaries.items()):
            entry = {"epoch": primary.epoch, "ready": primary.ready, "fenced": primary.fenced}
            if primary.progress is not None:
                progress = primary.progress
                entry.update(
                    last=progress.last,
                    committed=progress.committed(),
                    followers={
                        host: {
                            "match": state.match,
                            "resync": None
                            if state.resync is None
                            else {"base": state.resync.base, "copied": state.resync.copied},
                        }
                        for host, state in progress.progress.items()
                    },
                )
            primaries[str(partition)] = entry
        return {
            "primary": primaries,
            "following": len(self._following),
            "inactive": self.syncing(),
            "resyncs": sum(
                1
                for primary in self._primaries.values()
                if primary.progress is not None
                for state in primary.progress.progress.values()
                if state.resync is not None
            ),
        }


def _first_error(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure
