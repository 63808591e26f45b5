"""Packs ``logsync.append`` messages from the store: the primary's reads, with the choices
left to the pure cores (:class:`~nodedb.logsync.state.PrimaryProgress` says what a follower
needs, :class:`~nodedb.logsync.resync.ResyncPage` cuts a page of a full resync)."""

from twisted.logger import Logger

from nodedb.logsync.resync import ResyncPage
from nodedb.logsync.state import APPEND, RESYNC_PAGE
from nodedb.storage.apply import epoch_at

#: Followers are told to drop their log in steps of this many entries.
TRUNCATE_STEP = 1024


class Packer:
    """Reads *storage* to pack messages within the limits of *timing* (a
    :class:`~nodedb.logsync.service.LogSyncTiming`)."""

    _log = Logger()

    def __init__(self, storage, timing):
        self.storage = storage
        self.timing = timing

    def pack(self, link, leads, now):
        """The parts of the next message on *link*: one for every partition of *leads*
        (``{partition: Lead}``) that its host follows and the link considers, up to about
        ``batch_bytes``; a follower with a page of its resync on its way gets nothing more.

        :return: ``(parts, sent)``, *sent* being ``[(lead, kind)]`` for the parts in order.
        """
        partitions = link.partitions()
        candidates = leads.values() if partitions is None else [leads[p] for p in partitions if p in leads]
        parts, sent, size = [], [], 0
        for lead in candidates:
            if not lead.ready or link.host not in lead.progress.progress:
                continue
            state = lead.progress.progress[link.host]
            if state.in_flight:
                continue  # one page of a resync at a time
            part, kind, part_size = self._part(lead, link.host, state, now)
            if kind == RESYNC_PAGE:
                lead.progress.page_sent(link.host)
            elif part["entries"]:
                lead.progress.sent(link.host, part["entries"][-1][0])
            parts.append(part)
            sent.append((lead, kind))
            size += part_size
            if size >= self.timing.batch_bytes:
                break
        return parts, sent

    def _part(self, lead, host, state, now):
        """One part for *host*: a page of its resync, or the entries after its ``next``."""
        partition = lead.partition
        if state.resync is None:
            prev = state.next - 1
            prev_epoch = self.epoch_at(partition, prev)
            if prev_epoch is None:
                self.start_resync(lead, host)
        if state.resync is not None:
            return self._page(lead, state.resync, now)
        entries = []
        if state.next <= lead.progress.last:
            entries = self.whole_commits(partition, prev)
        part = {
            "p": partition,
            "e": lead.epoch,
            "prev": [prev, prev_epoch],
            "entries": [entry.to_wire() for entry in entries],
            # In steps, so that a follower drops its log a chunk at a time, not a few
            # entries with every message.
            "trunc": lead.progress.fully_replicated() // TRUNCATE_STEP * TRUNCATE_STEP,
            "last": lead.progress.last,
            "start": lead.start,
        }
        return part, APPEND, 64 + sum(len(entry.data) + 48 for entry in entries)

    def whole_commits(self, partition, prev):
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

    def _page(self, lead, resync, now):
        layout = self.storage.layout
        partition = lead.partition
        page = ResyncPage(
            resync, layout.first_id(partition), layout.last_id(partition), self.timing.resync_page, self.timing.batch_bytes // 2
        )
        while (scan := page.scan()) is not None:
            page.took(self.storage.scan(*scan))
        part, size = page.part(partition, lead.epoch, now)
        return part, RESYNC_PAGE, size

    def start_resync(self, lead, host):
        """Copy the whole partition to *host* afresh, as of our last commit."""
        stored = self.storage.partition_state(lead.partition)
        lead.progress.appended(stored.last_commit_id)
        self._log.info("partition {p}: follower {host} gets a full resync as of commit {base}",
                       p=lead.partition, host=host, base=stored.last_commit_id)
        lead.progress.start_resync(host, stored.last_commit_id, stored.last_epoch, self.storage.record_types())

    def epoch_at(self, partition, commit_id):
        """The epoch of our entry *commit_id*, or None when our log no longer reaches back
        there (a follower that stands there needs a full resync)."""
        stored = self.storage.partition_state(partition)
        if commit_id < stored.truncated:
            return None
        return epoch_at(stored, commit_id, self._log_epoch)

    def _log_epoch(self, partition, commit_id):
        entries = self.storage.read_log(partition, commit_id - 1, 1)
        return entries[0].epoch if entries and entries[0].commit_id == commit_id else None
