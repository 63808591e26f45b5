"""Element ids: the partition number in the high bits, a per-partition sequence in the low bits.

An id therefore names its partition, and the partition map names the hosts: routing needs no
per-element lookup. The primary of a partition hands out the next sequence number locally; the
sequence high-water mark is written in the same storage transaction as the element, so an id
that was ever acknowledged is never handed out again, whatever happens to the process.
"""

import itertools

from zope.interface import implementer

from nodedb.errors import InvalidRequest, Unavailable
from nodedb.interfaces import IIdAllocator

ID_BITS = 64
DEFAULT_PARTITION_BITS = 16
MAX_ID = (1 << ID_BITS) - 1
#: Consecutive inserts (without ``near``) that go to the same partition.
INSERTS_PER_TURN = 1000


class IdLayout:
    """How a 64-bit id splits into partition number and sequence."""

    def __init__(self, partition_bits=DEFAULT_PARTITION_BITS):
        if not 1 <= partition_bits <= 32:
            raise ValueError("partition_bits must be between 1 and 32")
        self.partition_bits = partition_bits
        self.sequence_bits = ID_BITS - partition_bits
        self.max_partitions = 1 << partition_bits
        self.max_sequence = (1 << self.sequence_bits) - 1

    def make(self, partition, sequence):
        """The id of *sequence* in *partition*."""
        return (partition << self.sequence_bits) | sequence

    def partition_of(self, element_id):
        """The partition that holds *element_id*."""
        return element_id >> self.sequence_bits

    def sequence_of(self, element_id):
        return element_id & self.max_sequence

    def first_id(self, partition):
        """The smallest id that can live in *partition* (sequence 0 is never used)."""
        return self.make(partition, 0)

    def last_id(self, partition):
        return self.make(partition, self.max_sequence)


def check_element_id(value):
    """*value* as an element id, or InvalidRequest."""
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise InvalidRequest("an element id is an unsigned 64-bit integer")
    return value


@implementer(IIdAllocator)
class IdAllocator:
    """Hands out ids in the partitions this host is primary for.

    Inserts without ``near`` stay in one partition for a turn of :data:`INSERTS_PER_TURN`
    inserts, then move to the next local partition: data spreads evenly over time, while
    writes that arrive together touch few B-tree pages (a synced transaction that writes one
    partition costs about half as much as one that writes many). ``near`` pins the new
    element to the partition of an existing one.
    """

    def __init__(self, layout, high_water_marks, inserts_per_turn=None, limits=None):
        """
        :param layout: the cluster's :class:`IdLayout`.
        :param high_water_marks: ``{partition: last sequence ever used}`` for every partition
            this host may allocate in (read from storage at start-up).
        :param limits: ``{partition: (first, last)}`` sequence range allowed in each partition
            (the identifier range of its current epoch); the whole sequence space by default.
        """
        self.layout = layout
        self._turn = inserts_per_turn or INSERTS_PER_TURN
        self._current = None
        self._left_in_turn = 0
        self._limits = {}
        self._last = {}
        self._rotation = None
        self.set_partitions(high_water_marks, limits)

    def set_partitions(self, high_water_marks, limits=None):
        """Allocate in these partitions from now on (the partition map changed).

        A partition already held keeps its own high-water mark when that is higher: ids handed
        out for writes still on their way to storage are not in *high_water_marks* yet.
        """
        limits = limits or {}
        self._limits = {p: limits.get(p, (1, self.layout.max_sequence)) for p in high_water_marks}
        self._last = {
            p: max(last, self._last.get(p, 0), self._limits[p][0] - 1) for p, last in high_water_marks.items()
        }
        self._rotation = itertools.cycle(sorted(self._last)) if self._last else None
        if self._current not in self._last:
            self._left_in_turn = 0

    def partitions(self):
        return sorted(self._last)

    def choose_partition(self, near=None):
        if near is not None:
            partition = self.layout.partition_of(check_element_id(near))
            if partition not in self._last:
                raise Unavailable(f"partition {partition} is not held by this host")
            return partition
        if self._left_in_turn <= 0:
            if self._rotation is None:
                raise Unavailable("this host holds no partition to insert into")
            self._current = next(self._rotation)
            self._left_in_turn = self._turn
        self._left_in_turn -= 1
        return self._current

    def allocate(self, partition):
        last = self._last.get(partition)
        if last is None:
            raise Unavailable(f"partition {partition} is not held by this host")
        first, final = self._limits[partition]
        sequence = self._next_sequence(last, first, final)
        if sequence > final:
            raise Unavailable(f"partition {partition} has used its whole id range for this epoch")
        self._last[partition] = sequence
        return self.layout.make(partition, sequence)

    def _next_sequence(self, last, first, final):
        """The sequence to hand out after *last* in the range ``[first, final]``."""
        return last + 1


#: Where the time of :class:`TimeOrderedIdAllocator` starts: 2020-01-01T00:00:00Z.
TIME_ORIGIN = 1_577_836_800
#: Sequence numbers per second of time: an epoch's range of 2^36 lasts 2^32 s, until 2156.
TICKS_PER_SECOND = 16


def time_floor(first, when):
    """The smallest sequence a :class:`TimeOrderedIdAllocator` gives an element created at
    or after *when* (seconds since 1970) in the range that starts at *first*: scanning from
    there finds every such element (and perhaps some made just before, under load)."""
    return first + max(0, int((when - TIME_ORIGIN) * TICKS_PER_SECOND))


def created_by(first, sequence):
    """The time (seconds since 1970) by which the element of *sequence*, in the range that
    starts at *first*, had been created: its creation time is no later than this."""
    return TIME_ORIGIN + (sequence - first + 1) / TICKS_PER_SECOND


@implementer(IIdAllocator)
class TimeOrderedIdAllocator(IdAllocator):
    """Ids that follow the clock: each sequence is at least :func:`time_floor` of now.

    A sequence is the larger of the last one plus one and the time floor, so ids keep every
    promise of :class:`IdAllocator` (new, growing, within the range, never below a stored
    high-water mark) and also say when their element was made: every element created after
    a time has an id at or above that time's floor, so "what was inserted since T" is a scan
    from :func:`time_floor`, with no index. The time costs id space: 16 sequences a second of
    wall time, which leaves an epoch's 2^36 ids enough for 136 years from 2020. Inserts that
    come faster than 16 a second run ahead of the clock, and the ids are then sequential
    until the clock catches up; a clock set backwards only makes ids sequential, and one set
    beyond the range's end is ignored.

    :param clock: anything with ``seconds()`` (the reactor).
    """

    def __init__(self, layout, high_water_marks, clock, inserts_per_turn=None, limits=None):
        self.clock = clock
        super().__init__(layout, high_water_marks, inserts_per_turn, limits)

    def _next_sequence(self, last, first, final):
        floor = time_floor(first, self.clock.seconds())
        return max(last + 1, floor if floor <= final else 0)
