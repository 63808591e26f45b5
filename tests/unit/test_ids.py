"""Element ids: the layout of the 64 bits, and what the shipped allocators do beyond the
contract that tests/contract/test_id_allocators.py runs against both."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from nodedb.errors import InvalidRequest, Unavailable
from nodedb.ids import (
    INSERTS_PER_TURN,
    MAX_ID,
    TICKS_PER_SECOND,
    TIME_ORIGIN,
    IdAllocator,
    IdLayout,
    TimeOrderedIdAllocator,
    check_element_id,
    created_by,
    time_floor,
)
from nodedb.voting.state import sequence_range


class TestIdLayout:
    def test_default_is_16_bits_of_partition_and_48_of_sequence(self):
        layout = IdLayout()
        assert (layout.partition_bits, layout.sequence_bits) == (16, 48)
        assert layout.max_partitions == 65536
        assert layout.max_sequence == 2**48 - 1
        assert layout.make(1, 0) == 2**48
        assert layout.make(0xABCD, 0x123456789ABC) == 0xABCD123456789ABC
        assert layout.make(65535, 2**48 - 1) == MAX_ID

    def test_first_and_last_id_bound_a_partition(self):
        layout = IdLayout()
        assert layout.first_id(3) == 3 << 48
        assert layout.last_id(3) == (4 << 48) - 1
        assert layout.partition_of(layout.last_id(3)) == 3
        assert layout.partition_of(layout.last_id(3) + 1) == 4

    @pytest.mark.parametrize("bits", [0, 33, -1])
    def test_partition_bits_are_bounded(self, bits):
        with pytest.raises(ValueError):
            IdLayout(bits)

    @given(st.integers(1, 32).flatmap(lambda bits: st.tuples(st.just(bits), st.integers(0, 2**bits - 1), st.integers(0, 2 ** (64 - bits) - 1))))
    def test_round_trip(self, case):
        bits, partition, sequence = case
        layout = IdLayout(bits)
        element_id = layout.make(partition, sequence)
        assert 0 <= element_id <= MAX_ID
        assert layout.partition_of(element_id) == partition
        assert layout.sequence_of(element_id) == sequence

    @given(st.integers(0, MAX_ID), st.integers(0, MAX_ID))
    def test_ids_order_by_partition_then_sequence(self, a, b):
        layout = IdLayout()
        key = lambda i: (layout.partition_of(i), layout.sequence_of(i))  # noqa: E731
        assert (a < b) == (key(a) < key(b))


class TestCheckElementId:
    @pytest.mark.parametrize("value", [0, 1, MAX_ID])
    def test_accepts_unsigned_64_bit_integers(self, value):
        assert check_element_id(value) == value

    @pytest.mark.parametrize("value", [-1, MAX_ID + 1, True, 1.0, "1", None, b"\x01"])
    def test_refuses_anything_else(self, value):
        with pytest.raises(InvalidRequest, match="unsigned 64-bit"):
            check_element_id(value)


class TestIdAllocator:
    """Sequential ids, partitions in turns."""

    layout = IdLayout()

    def test_allocate_continues_after_the_high_water_mark(self):
        ids = IdAllocator(self.layout, {2: 41, 3: 0})
        assert ids.allocate(2) == self.layout.make(2, 42)
        assert ids.allocate(2) == self.layout.make(2, 43)
        assert ids.allocate(3) == self.layout.make(3, 1), "sequence 0 is never handed out"

    def test_near_does_not_use_up_the_turn(self):
        ids = IdAllocator(self.layout, {0: 0, 1: 0}, inserts_per_turn=2)
        first = ids.choose_partition()
        ids.choose_partition(near=self.layout.make(1 - first, 1))
        assert ids.choose_partition() == first

    def test_partitions_take_turns(self):
        ids = IdAllocator(self.layout, {4: 0, 2: 0, 9: 0}, inserts_per_turn=3)
        chosen = [ids.choose_partition() for _ in range(12)]
        assert chosen == [2, 2, 2, 4, 4, 4, 9, 9, 9, 2, 2, 2]

    def test_default_turn_length(self):
        ids = IdAllocator(self.layout, {0: 0, 1: 0})
        chosen = [ids.choose_partition() for _ in range(INSERTS_PER_TURN + 1)]
        assert chosen == [0] * INSERTS_PER_TURN + [1]

    def test_an_exhausted_partition_is_unavailable(self):
        layout = IdLayout(partition_bits=32)
        ids = IdAllocator(layout, {1: layout.max_sequence - 2})
        assert ids.allocate(1) == layout.make(1, layout.max_sequence - 1)
        assert ids.allocate(1) == layout.last_id(1)
        with pytest.raises(Unavailable, match="used its whole id range"):
            ids.allocate(1)
        with pytest.raises(Unavailable):
            ids.allocate(1)


class TestTimeOrderedIdAllocator:
    layout = IdLayout()

    def make(self, high_water_marks, at=100.0, **options):
        """An allocator whose clock reads *at* seconds after the time origin."""
        clock = Clock()
        clock.advance(TIME_ORIGIN + at)
        return TimeOrderedIdAllocator(self.layout, high_water_marks, clock, **options), clock

    def sequence(self, element_id):
        return self.layout.sequence_of(element_id)

    def test_ids_follow_the_clock(self):
        ids, clock = self.make({0: 0}, at=100.0)
        assert self.sequence(ids.allocate(0)) == 1 + 100 * TICKS_PER_SECOND
        clock.advance(1.0)
        assert self.sequence(ids.allocate(0)) == 1 + 101 * TICKS_PER_SECOND
        clock.advance(1 / TICKS_PER_SECOND)
        assert self.sequence(ids.allocate(0)) == 1 + 101 * TICKS_PER_SECOND + 1

    def test_inserts_faster_than_the_clock_run_on_one_by_one(self):
        ids, clock = self.make({0: 0}, at=100.0)
        sequences = [self.sequence(ids.allocate(0)) for _ in range(50)]
        assert sequences == list(range(1 + 1600, 1 + 1650))
        clock.advance(1.0)  # the clock has not caught up with the ids: they go on from the last
        assert self.sequence(ids.allocate(0)) == 1651

    def test_a_clock_that_goes_back_never_repeats_an_id(self):
        ids, clock = self.make({0: 0}, at=100.0)
        first = ids.allocate(0)
        clock.advance(-50.0)
        assert ids.allocate(0) == first + 1

    def test_a_high_water_mark_ahead_of_the_clock_wins(self):
        ids, _clock = self.make({0: 10**6}, at=100.0)
        assert self.sequence(ids.allocate(0)) == 10**6 + 1

    def test_ids_follow_the_clock_within_the_range_of_the_epoch(self):
        ids, _clock = self.make({}, at=100.0)
        first, _last = sequence_range(3)
        ids.set_partitions({5: 0}, {5: sequence_range(3)})
        assert self.sequence(ids.allocate(5)) == first + 100 * TICKS_PER_SECOND

    def test_a_clock_beyond_the_end_of_the_range_is_ignored(self):
        ids, _clock = self.make({}, at=10**6)  # 16 million ticks: past a range of 1000 sequences
        ids.set_partitions({5: 0}, {5: (1000, 1999)})
        assert [self.sequence(ids.allocate(5)) for _ in range(3)] == [1000, 1001, 1002]

    def test_the_time_floor_finds_every_element_created_since(self):
        """Elements made at or after a time T have ids at or above T's floor, and each id
        tells a time by which its element existed."""
        ids, clock = self.make({}, at=0.0)
        first, _last = sequence_range(2)
        ids.set_partitions({1: 0}, {1: sequence_range(2)})
        made = []
        for step in range(200):
            clock.advance(0.013 if step % 3 else 0.2)
            burst = 1 if step % 7 else 40  # now and then, more than the clock's 16 a second
            made += [(clock.seconds(), self.sequence(ids.allocate(1))) for _ in range(burst)]
        for when, sequence in made:
            assert created_by(first, sequence) >= when
            since = [s for w, s in made if w >= when]
            assert min(since) >= time_floor(first, when)

    def test_time_floor_and_created_by_are_the_origin_at_the_start_of_the_range(self):
        assert time_floor(7, TIME_ORIGIN - 5) == 7
        assert time_floor(7, TIME_ORIGIN + 2) == 7 + 2 * TICKS_PER_SECOND
        assert created_by(7, 7 + 2 * TICKS_PER_SECOND - 1) == TIME_ORIGIN + 2

    def test_partitions_take_turns_as_with_sequential_ids(self):
        ids, _clock = self.make({4: 0, 2: 0, 9: 0}, inserts_per_turn=3)
        assert [ids.choose_partition() for _ in range(12)] == [2, 2, 2, 4, 4, 4, 9, 9, 9, 2, 2, 2]
