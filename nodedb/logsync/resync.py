"""A full resync of one follower, page by page: pure, no I/O.

A follower whose log diverged from the primary's, or stands where the primary's log no longer
reaches, gets the partition copied whole as of the primary's commit ``base``: a first page
that resets its copy, pages of elements one record type after another, and a last page that
says the copy is done. :class:`Resync` is the cursor over the partition's elements;
:class:`ResyncPage` cuts one page from it, asking its caller for the storage scans it needs.
"""

from dataclasses import dataclass


@dataclass
class Resync:
    """A full copy of the partition to one follower, as of commit *base* (whose entry has
    *base_epoch*): pages of elements follow one record type after another."""

    base: int
    base_epoch: int
    types: tuple
    type_index: int = 0
    after: int = -1  # last element id sent of the current type
    reset_sent: bool = False
    done_sent: bool = False
    copied: int = 0
    # Where the last acknowledged page left off, to send again after a lost message.
    acked: tuple = (0, -1, False, 0)

    def checkpoint(self):
        self.acked = (self.type_index, self.after, self.reset_sent, self.copied)

    def rewind(self):
        self.type_index, self.after, self.reset_sent, self.copied = self.acked
        self.done_sent = False


class ResyncPage:
    """The next page of *resync* for the partition whose element ids run from *first_id* to
    *last_id*: at most *max_elements* elements, and no more scans once *max_bytes* of data
    are in it.

    The caller runs each scan :meth:`scan` asks for against the store and hands its result to
    :meth:`took`, until :meth:`scan` returns None; then :meth:`part` is the page to send.
    """

    def __init__(self, resync, first_id, last_id, max_elements, max_bytes):
        self.resync = resync
        self.first_id = first_id
        self.last_id = last_id
        self.max_elements = max_elements
        self.max_bytes = max_bytes
        self.elements = []
        self.size = 0
        self._scan = None

    def scan(self):
        """:return: the next scan of the store the page needs, ``(record_type, after,
        limit)``: up to *limit* elements of *record_type* with ids above *after*; or None
        when the page is complete."""
        resync = self.resync
        if resync.type_index >= len(resync.types) or len(self.elements) >= self.max_elements:
            return None
        if self._scan is not None and self.size >= self.max_bytes:
            return None
        self._scan = (
            resync.types[resync.type_index],
            max(resync.after, self.first_id - 1),
            self.max_elements - len(self.elements),
        )
        return self._scan

    def took(self, batch):
        """The store's answer to the last :meth:`scan`: ``[(element_id, data, version)]`` in
        id order (it may run past the partition's last id)."""
        record_type, _after, limit = self._scan
        resync = self.resync
        inside = [item for item in batch if item[0] <= self.last_id]
        for element_id, data, version in inside:
            self.elements.append([record_type, element_id, data, version])
            self.size += len(data) + 32
        if inside:
            resync.after = inside[-1][0]
        if len(inside) < len(batch) or len(batch) < limit:  # this type is done
            resync.type_index += 1
            resync.after = -1

    def part(self, partition, epoch, now):
        """:return: ``(part, size)``: the page as a part of a ``logsync.append`` message
        (the first one resets the follower's copy at *now*, the last one says done), and
        about how many bytes it takes."""
        resync = self.resync
        part = {"p": partition, "e": epoch}
        if not resync.reset_sent:
            part["reset"] = now
            resync.reset_sent = True
        part["load"] = self.elements
        resync.copied += len(self.elements)
        if resync.type_index >= len(resync.types):
            part["done"] = [resync.base, resync.base_epoch]
            resync.done_sent = True
        return part, self.size + 64
