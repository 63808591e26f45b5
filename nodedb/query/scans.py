"""Distributed scans: every partition at once, merged in id order, paged with cursors.

The host that receives a client's ``scan`` coordinates it. Ids are split into partitions by
their high bits, so all of partition *p*'s ids lie below partition *p+1*'s: merging the
partitions in id order is a k-way merge of disjoint ranges, and an item may be returned once
every partition before its own is finished.

- **State per partition, calls per host.** :class:`ScanMerge` (pure: no clock, no I/O) keeps
  for each partition how far it has been examined (``position``) and the matching items
  fetched but not yet returned. A round of fetching groups the partitions that need more by
  their current primary and sends each such host **one batch** (``query.forward`` with a
  ``scan`` carrying ``parts``), so there is one stream per primary host over its partitions,
  and at most one batch per host in flight. The host scans the listed partitions in order
  where the data is (filter included) and answers, per partition reached, the matches and the
  last id it examined, so a filter that matches little still moves the merge on. Grouping by
  host keeps the number of calls down to the number of hosts, while keeping the state per
  partition makes failover simple: a failed batch leaves its partitions where they were, and
  the next round sends each to whichever host leads it then.
- **Bounded fetching.** A partition is asked for more only while the items buffered in it
  and in the partitions before it are fewer than the page's limit (and its bytes), and a batch
  asks for at most that many. The first round asks every primary host at once, so the first
  page comes as fast as the slowest partition it needs; a scan holds at most about
  ``(hosts + 1) * limit`` items, and each batch examines at most
  :attr:`ScanSettings.batch_examine` elements, so a remote host is never held long.
- **Pages and cursors.** A page is answered once ``limit`` items (or
  :data:`~nodedb.query.local.MAX_PAGE_BYTES` of them) can be returned in order, the scan is
  finished, or the batches of this page examined
  :data:`~nodedb.query.local.MAX_EXAMINED_PER_PAGE` elements and the scan moved on. The cursor
  carries the last id covered plus this host's id, a nonce of this process run and a cursor
  number; the rest (buffers and positions) is kept here as the cursor's state, and after
  answering, the next page's batches are fetched in the background.
- **State is a cache.** A cursor presented to another host, or here after a restart, resumes
  from its last id. Here, a cursor whose state was dropped after
  :attr:`ScanSettings.idle_timeout` idle seconds, or evicted to stay under
  :attr:`ScanSettings.max_cursors`, fails with :class:`~nodedb.errors.CursorExpired`.
- **Failover.** A batch that fails with Unavailable or Timeout (its host is gone, no longer
  the primary, or cannot be reached) is re-planned from its partitions' positions to their
  current primaries after a short backoff, so no item is skipped or repeated. A page that
  cannot finish within :attr:`ScanSettings.page_timeout` fails with Unavailable (its state is
  kept: the same cursor asks again). Any other error of a batch fails the page.
"""

import itertools
import os
from collections import OrderedDict, deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.ids import MAX_ID
from nodedb.query.cursor import encode_cursor, read_cursor
from nodedb.query.filters import compile_where
from nodedb.query.local import MAX_EXAMINED_PER_PAGE, MAX_PAGE_BYTES, MAX_PAGE_SIZE
from nodedb.wire.requests import TYPE
from nodedb.wire.schema import Field, Kind, Schema, integer

#: Seconds a cursor's state is kept after its last page was answered.
DEFAULT_IDLE_TIMEOUT = 60.0
#: Cursors with state kept per host; past this, the idlest one is dropped.
DEFAULT_MAX_CURSORS = 1000


@dataclass(frozen=True)
class ScanSettings:
    """Tunables of distributed scans (documented in docs/query.md)."""

    #: Seconds a cursor's state is kept after its page was answered.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Cursors whose state this host keeps at most.
    max_cursors: int = DEFAULT_MAX_CURSORS
    #: Seconds a page may wait for partitions without a reachable primary before it fails
    #: with Unavailable.
    page_timeout: float = 8.0
    #: Elements one batch examines at most on its host.
    batch_examine: int = 10_000
    #: Partitions one batch lists at most.
    batch_parts: int = 256
    #: A page stops once its batches examined this many elements (and the scan moved on).
    page_examine: int = MAX_EXAMINED_PER_PAGE
    #: A page stops once its documents add up to this many encoded bytes.
    page_bytes: int = MAX_PAGE_BYTES
    #: First and longest pause before a failed batch's partitions are asked again.
    retry_first: float = 0.05
    retry_max: float = 0.5


@dataclass
class Batch:
    """One call to *host*: ``parts`` is ``[(partition, after), ...]`` in partition order."""

    host: str
    parts: list
    limit: int


class _Part:
    """One partition of a scan: examined up to ``position``; matches buffered, not returned."""

    __slots__ = ("partition", "position", "end", "buffer", "size", "inflight", "retry_at", "pause", "error")

    def __init__(self, partition, position, end):
        self.partition = partition
        self.position = position
        self.end = end
        self.buffer = deque()  # (item, encoded size)
        self.size = 0
        self.inflight = False
        self.retry_at = 0.0
        self.pause = 0.0
        self.error = None

    @property
    def done(self):
        return self.position >= self.end


class ScanMerge:
    """The merge state of one scan on its coordinator (see the module docstring).

    Pure: time comes in as ``now``, and I/O is left to the caller, which sends the batches
    :meth:`plan` returns and hands each outcome to :meth:`apply` or :meth:`failed`.

    :param layout: the cluster's :class:`~nodedb.ids.IdLayout`.
    :param partitions: the number of partitions.
    :param after: the last id already covered (-1 to start at the beginning).
    """

    def __init__(self, layout, partitions, after, settings=ScanSettings()):
        self.settings = settings
        #: The last id covered by the pages answered so far.
        self.after = after
        #: Elements examined by the batches applied since the last page was taken.
        self.examined = 0
        first = layout.partition_of(after + 1) if after < MAX_ID else partitions
        self._parts = [
            _Part(p, after if p == first else layout.first_id(p) - 1, layout.last_id(p)) for p in range(first, partitions)
        ]
        self._by_partition = {part.partition: part for part in self._parts}
        self._head = 0  # the first partition not finished and returned

    @property
    def finished(self):
        """Every partition is examined to its end and every item returned."""
        return self._head >= len(self._parts)

    def _ahead(self):
        return itertools.islice(self._parts, self._head, None)

    def buffered(self):
        """Items fetched and not returned yet."""
        return sum(len(part.buffer) for part in self._ahead())

    def ready(self, want=None):
        """``(count, size, complete)``: the items that can be returned now in id order (counted
        up to *want*), their encoded size, and whether they are all that is left."""
        count = size = 0
        for part in self._ahead():
            count += len(part.buffer)
            size += part.size
            if not part.done or (want is not None and count >= want):
                return count, size, False
        return count, size, True

    def frontier(self):
        """The last id covered if every ready item were returned (None when finished)."""
        for part in self._ahead():
            if not part.done:
                return part.position
        return None

    def blocker(self):
        """``(partition, reason)`` of the first partition a page waits for, or None."""
        for part in self._ahead():
            if not part.done:
                return part.partition, part.error
        return None

    def plan(self, want, primary_of, now, busy=()):
        """The batches to send now so that *want* items can be returned, and marks their
        partitions in flight. A partition is asked for more while fewer than *want* items (and
        fewer than the page's bytes) are buffered up to and including it, unless it is done,
        in flight, waiting to retry, or its host has a batch in flight (*busy*). A partition
        without a primary waits to retry.

        :param primary_of: ``primary_of(partition)`` -> host id, or None.
        """
        batches = {}
        count = size = 0
        for part in self._ahead():
            count += len(part.buffer)
            size += part.size
            if count >= want or size >= self.settings.page_bytes:
                break
            if part.done or part.inflight or part.retry_at > now:
                continue
            host = primary_of(part.partition)
            if host is None:
                self._back_off(part, now, f"partition {part.partition} has no primary now")
                continue
            if host in busy:
                continue
            batch = batches.get(host)
            if batch is None:
                batch = batches[host] = Batch(host, [], min(want - count, MAX_PAGE_SIZE))
            if len(batch.parts) < self.settings.batch_parts:
                batch.parts.append((part.partition, part.position))
                part.inflight = True
        return list(batches.values())

    def next_retry(self, now):
        """When the next partition waiting to retry may be asked again, or None."""
        times = [p.retry_at for p in self._ahead() if not p.done and not p.inflight and p.retry_at > now]
        return min(times, default=None)

    def apply(self, batch, reply):
        """Merge the answer to *batch*.

        :raise NodeDBError: if *reply* is malformed (the batch's partitions are released and
            stay where they were).
        """
        try:
            examined, answered = self._check(batch, reply)
        finally:
            self.release(batch)
        for partition, position, items, sizes in answered:
            part = self._by_partition[partition]
            part.buffer.extend(zip(items, sizes))
            part.size += sum(sizes)
            part.position = position
            part.pause = 0.0
            part.error = None
        self.examined += examined

    def _check(self, batch, reply):
        malformed = errors.NodeDBError(f"malformed scan batch reply from host {batch.host}")
        if type(reply) is not dict or type(reply.get("parts")) is not list or type(reply.get("examined")) is not int:
            raise malformed
        if len(reply["parts"]) > len(batch.parts):
            raise malformed
        answered = []
        for (partition, after), answer in zip(batch.parts, reply["parts"]):
            if type(answer) is not list or len(answer) != 4:
                raise malformed
            number, position, items, sizes = answer
            part = self._by_partition[partition]
            if number != partition or type(position) is not int or not after <= position <= part.end:
                raise malformed
            if part.position != after:
                raise malformed
            if type(items) is not list or type(sizes) is not list or len(items) != len(sizes):
                raise malformed
            last = after
            for item, size in zip(items, sizes):
                if type(item) is not list or len(item) != 3 or type(item[0]) is not int or type(size) is not int:
                    raise malformed
                if not last < item[0] <= position:
                    raise malformed
                last = item[0]
            answered.append((partition, position, items, sizes))
        return reply["examined"], answered

    def release(self, batch):
        """*batch* is over: its partitions may be asked again."""
        for partition, _after in batch.parts:
            self._by_partition[partition].inflight = False

    def failed(self, batch, now, reason):
        """*batch* failed in a way worth retrying: its partitions stay where they were and
        are asked again, of their primary then, after a backoff."""
        self.release(batch)
        for partition, _after in batch.parts:
            self._back_off(self._by_partition[partition], now, reason)

    def _back_off(self, part, now, reason):
        part.pause = min(max(self.settings.retry_first, part.pause * 2), self.settings.retry_max)
        part.retry_at = now + part.pause
        part.error = reason

    def take(self, limit):
        """Return the next page: up to *limit* items in id order, or fewer once they add up to
        the page's bytes (at least one).

        :return: ``(items, after, finished)``: the items, the last id the page covers, and
            whether the scan is over.
        """
        items, size, full = [], 0, False
        while self._head < len(self._parts):
            part = self._parts[self._head]
            while part.buffer:
                if len(items) >= limit or size >= self.settings.page_bytes:
                    full = True
                    break
                item, item_size = part.buffer.popleft()
                part.size -= item_size
                items.append(item)
                size += item_size
                self.after = item[0]
            if full or not part.done:
                if not full:
                    self.after = max(self.after, part.position)
                break
            self._head += 1
        self.examined = 0
        return items, self.after, self.finished


class Scan:
    """One scan on its coordinator: its :class:`ScanMerge`, the batches in flight (one per
    host at most), and the page request waiting for them (one at most).

    :param fetch: ``fetch(host, request)`` -> the host's answer to a batch request (a value or
        a Deferred).
    :param primary_of: ``primary_of(partition)`` -> host id, or None.
    """

    _log = Logger()

    def __init__(self, merge, record_type, where, fetch, primary_of, clock, settings, counts=None):
        self.merge = merge
        self.record_type = record_type
        self.where = where
        self._fetch = fetch
        self._primary_of = primary_of
        self.clock = clock
        self.settings = settings
        self.closed = False
        #: The failure that ended this scan (a batch's error not worth retrying), or None.
        self.broken = None
        #: Counters shared with the :class:`ScanService` (``replanned``: failed batches whose
        #: partitions were asked again).
        self.counts = {} if counts is None else counts
        self._want = 1
        self._busy = {}  # host -> Batch in flight
        self._waiter = None  # (Deferred, DelayedCall of the page's deadline)
        self._timer = None
        self._pumping = self._again = False

    def matches(self, record_type, where, after):
        """Whether this state serves the scan of *record_type* with *where* after *after*."""
        return (
            not self.closed
            and self.broken is None
            and (record_type, where, after) == (self.record_type, self.where, self.merge.after)
        )

    def page(self, limit):
        """:return: a Deferred of ``(items, after, finished)`` (see :meth:`ScanMerge.take`),
        fired once a page is ready; it fails with Unavailable if a partition the page needs
        had no reachable primary for :attr:`ScanSettings.page_timeout` seconds, or with the
        error of a batch that is not worth retrying."""
        if self.broken is not None:
            return defer.fail(self.broken)
        if self._waiter is not None:
            return defer.fail(errors.InvalidRequest("this scan is already serving a page"))
        d = defer.Deferred()
        self._want = limit
        self._waiter = (d, self.clock.callLater(self.settings.page_timeout, self._timed_out))
        self._pump()
        return d

    def prefetch(self):
        """Fetch the next page's batches in the background (for the last page's limit)."""
        self._pump()

    def close(self):
        """Drop this scan: batches still in flight are ignored when they land."""
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiter is not None:
            d, deadline = self._waiter
            self._waiter = None
            deadline.cancel()
            d.errback(errors.Unavailable("the scan was stopped"))

    # -- the loop ---------------------------------------------------------------------------

    def _pump(self):
        """Answer the waiting page if it is ready, else send the batches that are due (one
        pass at a time: a batch answered at once asks for another pass, not a nested one)."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again and not self.closed and self.broken is None:
                self._again = False
                self._pass()
        finally:
            self._pumping = False

    def _answerable(self):
        merge, settings = self.merge, self.settings
        count, size, complete = merge.ready(self._want)
        if complete or count >= self._want or size >= settings.page_bytes:
            return True
        if merge.examined < settings.page_examine:
            return False
        return count > 0 or merge.frontier() > merge.after

    def _pass(self):
        if self._answerable():
            if self._waiter is not None:
                d, deadline = self._waiter
                self._waiter = None
                deadline.cancel()
                d.callback(self.merge.take(self._want))
            return
        if self._waiter is None and self.merge.examined >= self.settings.page_examine:
            return  # enough read ahead for a page that may never be asked for
        now = self.clock.seconds()
        for batch in self.merge.plan(self._want, self._primary_of, now, self._busy):
            self._send(batch)
        if self._waiter is not None:
            self._schedule_retry(now)

    def _schedule_retry(self, now):
        when = self.merge.next_retry(now)
        if when is None:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(when - now, self._retry_due)

    def _retry_due(self):
        self._timer = None
        self._pump()

    def _send(self, batch):
        self._busy[batch.host] = batch
        request = {
            "op": "scan",
            "type": self.record_type,
            "parts": [[partition, after] for partition, after in batch.parts],
            "limit": batch.limit,
            "examine": self.settings.batch_examine,
        }
        if self.where is not None:
            request["where"] = self.where
        d = defer.maybeDeferred(self._fetch, batch.host, request)
        d.addCallbacks(self._landed, self._failed, (batch,), None, (batch,))
        d.addErrback(self._bug)

    def _bug(self, failure):
        self._log.failure("scan: handling a batch's answer failed", failure)

    def _landed(self, reply, batch):
        self._busy.pop(batch.host, None)
        if self.closed:
            return
        try:
            self.merge.apply(batch, reply)
        except errors.NodeDBError:
            self._break(Failure())
            return
        self._pump()

    def _failed(self, failure, batch):
        self._busy.pop(batch.host, None)
        if self.closed:
            return
        if failure.check(errors.Unavailable, errors.Timeout):
            self.counts["replanned"] = self.counts.get("replanned", 0) + 1
            self.merge.failed(batch, self.clock.seconds(), str(failure.value))
            self._log.debug(
                "scan: a batch to host {host} failed ({error}); partitions {partitions} are asked again "
                "of their primary after a pause",
                host=batch.host,
                error=str(failure.value),
                partitions=[p for p, _after in batch.parts],
            )
            self._pump()
            return
        self.merge.release(batch)
        if not failure.check(errors.NodeDBError):
            self._log.failure("scan: a batch to host {host} failed", failure, host=batch.host)
        self._break(failure)

    def _break(self, failure):
        self.broken = failure
        if self._waiter is not None:
            d, deadline = self._waiter
            self._waiter = None
            deadline.cancel()
            d.errback(failure)

    def _timed_out(self):
        d, _deadline = self._waiter
        self._waiter = None
        blocker = self.merge.blocker()
        partition, reason = blocker if blocker is not None else (None, None)
        d.errback(
            errors.Unavailable(
                f"scan: partition {partition} could not be read for {self.settings.page_timeout:g} s "
                f"({reason or 'no answer yet'}); ask again with the same cursor"
            )
        )


class ScanService:
    """The scans this host coordinates, and the state it keeps for their cursors.

    :param host_id: this host's id (named in the cursors it issues).
    :param layout: the cluster's :class:`~nodedb.ids.IdLayout`.
    :param partitions: ``partitions()`` -> the number of partitions.
    :param primary_of: ``primary_of(partition)`` -> the host id of its primary, or None.
    :param fetch: ``fetch(host, request)`` -> the answer of *host* (this one included) to a
        batch request (a value or a Deferred).
    :param clock: an ``IReactorTime`` for idle times, deadlines and retries.
    :param run: a nonce of this process run (random by default).
    """

    _log = Logger()

    def __init__(self, host_id, layout, partitions, primary_of, fetch, clock, run=None, settings=ScanSettings()):
        self.host_id = host_id
        self.layout = layout
        self.partitions = partitions
        self.primary_of = primary_of
        self.fetch = fetch
        self.clock = clock
        self.run = os.urandom(8) if run is None else run
        self.settings = settings
        self._idle = OrderedDict()  # cursor number -> (Scan, DelayedCall of its expiry), idlest first
        self._busy = {}  # cursor number -> Scan serving a page
        self._next = 1
        self.counts = {"pages": 0, "resumed": 0, "expired": 0, "evicted": 0, "refused": 0, "replanned": 0}

    def status(self):
        """Counters and the number of cursors kept, for ``/status``."""
        return {"cursors": len(self._idle), "serving": len(self._busy), **self.counts}

    def page(self, record_type, where, limit, cursor):
        """:return: a Deferred of the page ``{"items": [[id, doc, version], ...], "cursor":
        text or None}`` of the scan of *record_type* with *where* that resumes at *cursor*."""
        try:
            compile_where(where)
            scan, number = self._scan_for(record_type, where, read_cursor(cursor))
        except errors.NodeDBError as e:
            return defer.fail(e)
        if number is not None:
            self._busy[number] = scan
        d = scan.page(limit)
        return d.addCallbacks(self._answered, self._unanswered, (scan, number), None, (scan, number))

    def stop(self):
        """Drop every kept cursor (the node is stopping)."""
        for scan, expiry in self._idle.values():
            expiry.cancel()
            scan.close()
        self._idle.clear()
        for scan in list(self._busy.values()):
            scan.close()

    def _scan_for(self, record_type, where, token):
        """The scan state to serve the page after *token*, and its cursor number (None for a
        new state, which gets a number once it answers)."""
        if token is None:
            return self._new(record_type, where, -1), None
        if token.host == self.host_id and token.run == self.run:
            if token.number >= self._next:
                raise errors.InvalidRequest("malformed cursor")
            kept = self._idle.get(token.number)
            if kept is not None and kept[0].matches(record_type, where, token.after):
                scan, expiry = self._idle.pop(token.number)
                expiry.cancel()
                return scan, token.number
            if kept is None and token.number not in self._busy:
                self.counts["refused"] += 1
                raise errors.CursorExpired(
                    f"this scan's cursor expired: its state is kept for {self.settings.idle_timeout:g} s "
                    f"after a page (and for at most {self.settings.max_cursors} cursors per host); "
                    "start the scan again"
                )
            # The same cursor is serving a page, or asks again for an earlier page (its answer
            # was lost): serve this one from its own position.
        self.counts["resumed"] += 1
        return self._new(record_type, where, token.after), None

    def _new(self, record_type, where, after):
        merge = ScanMerge(self.layout, self.partitions(), after, self.settings)
        return Scan(merge, record_type, where, self.fetch, self.primary_of, self.clock, self.settings, self.counts)

    def _answered(self, page, scan, number):
        items, after, finished = page
        self._busy.pop(number, None)
        self.counts["pages"] += 1
        if finished:
            scan.close()
            return {"items": items, "cursor": None}
        if number is None:
            number, self._next = self._next, self._next + 1
        self._keep(number, scan)
        scan.prefetch()
        return {"items": items, "cursor": encode_cursor(after, self.host_id, self.run, number)}

    def _unanswered(self, failure, scan, number):
        self._busy.pop(number, None)
        if number is not None and scan.broken is None and not scan.closed:
            self._keep(number, scan)  # the client asks again with the same cursor
        else:
            scan.close()
        return failure

    def _keep(self, number, scan):
        expiry = self.clock.callLater(self.settings.idle_timeout, self._expire, number)
        self._idle[number] = (scan, expiry)
        while len(self._idle) > self.settings.max_cursors:
            evicted, (old, old_expiry) = self._idle.popitem(last=False)
            old_expiry.cancel()
            old.close()
            self.counts["evicted"] += 1
            self._log.info(
                "scan cursor {number} dropped: more than {limit} cursors are kept", number=evicted, limit=self.settings.max_cursors
            )

    def _expire(self, number):
        scan, _expiry = self._idle.pop(number)
        scan.close()
        self.counts["expired"] += 1
        self._log.debug("scan cursor {number} expired after {idle} s idle", number=number, idle=self.settings.idle_timeout)


def batch_schema(layout, partitions):
    """The schema of a batch request (``query.forward`` with ``op: scan`` and ``parts``),
    whose arguments are those of :meth:`~nodedb.query.local.LocalQuery.scan_parts`.

    :param layout: the :class:`~nodedb.ids.IdLayout` the parts' positions lie in.
    :param partitions: ``partitions()`` -> how many partitions the cluster has now.
    """

    def check_parts(parts):
        count = partitions()
        if type(parts) is not list or not 0 < len(parts) <= count:
            raise errors.InvalidRequest("query.forward: a scan batch's parts is a non-empty list")
        checked, previous = [], -1
        for part in parts:
            if type(part) is not list or len(part) != 2 or type(part[0]) is not int or type(part[1]) is not int:
                raise errors.InvalidRequest("query.forward: each part of a scan batch is [partition, after]")
            partition, after = part
            if not previous < partition < count:
                raise errors.InvalidRequest("query.forward: a scan batch lists known partitions in increasing order")
            if not layout.first_id(partition) - 1 <= after < layout.last_id(partition):
                raise errors.InvalidRequest(f"query.forward: after is outside partition {partition}")
            checked.append((partition, after))
            previous = partition
        return checked

    return Schema(
        "query.forward: a scan batch",
        (
            Field("type", TYPE, required=True, check_missing=True, argument="record_type"),
            Field("where", _FILTER),
            Field("limit", _BATCH_LIMIT, required=True, check_missing=True),
            Field("examine", _BATCH_EXAMINE, required=True, check_missing=True),
            Field("parts", Kind("array", check_parts), required=True, check_missing=True),
        ),
    )


def _check_filter(where):
    compile_where(where)
    return where


_FILTER = Kind("map", _check_filter)
_BATCH_LIMIT = integer(f"query.forward: a scan batch's limit is between 1 and {MAX_PAGE_SIZE}", low=1, high=MAX_PAGE_SIZE)
_BATCH_EXAMINE = integer(
    f"query.forward: a scan batch examines between 1 and {MAX_EXAMINED_PER_PAGE}", low=1, high=MAX_EXAMINED_PER_PAGE
)
