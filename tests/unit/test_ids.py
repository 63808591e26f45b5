"""Element ids: the layout of the 64 bits, and the allocator that hands them out."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from nodedb.errors import InvalidRequest, Unavailable
from nodedb.ids import INSERTS_PER_TURN, MAX_ID, IdAllocator, IdLayout, check_element_id
from nodedb.interfaces import IIdAllocator


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
    layout = IdLayout()

    def test_provides_the_interface(self):
        assert verifyObject(IIdAllocator, IdAllocator(self.layout, {0: 0}))

    def test_partitions_are_sorted(self):
        assert IdAllocator(self.layout, {5: 0, 1: 3, 3: 0}).partitions() == [1, 3, 5]

    def test_allocate_continues_after_the_high_water_mark(self):
        ids = IdAllocator(self.layout, {2: 41, 3: 0})
        assert ids.allocate(2) == self.layout.make(2, 42)
        assert ids.allocate(2) == self.layout.make(2, 43)
        assert ids.allocate(3) == self.layout.make(3, 1), "sequence 0 is never handed out"

    def test_never_repeats(self):
        ids = IdAllocator(self.layout, {0: 0, 1: 10, 2: 5}, inserts_per_turn=3)
        seen = [ids.allocate(ids.choose_partition()) for _ in range(300)]
        assert len(set(seen)) == len(seen)
        for partition in (0, 1, 2):
            mine = [i for i in seen if self.layout.partition_of(i) == partition]
            assert mine == sorted(mine), "ids in a partition only ever grow"

    def test_near_pins_the_partition(self):
        ids = IdAllocator(self.layout, {0: 0, 7: 0, 9: 0})
        other = self.layout.make(7, 12345)
        for _ in range(5):
            assert ids.choose_partition(near=other) == 7
        assert self.layout.partition_of(ids.allocate(ids.choose_partition(near=other))) == 7

    def test_near_does_not_use_up_the_turn(self):
        ids = IdAllocator(self.layout, {0: 0, 1: 0}, inserts_per_turn=2)
        first = ids.choose_partition()
        ids.choose_partition(near=self.layout.make(1 - first, 1))
        assert ids.choose_partition() == first

    def test_near_in_a_partition_not_held_is_unavailable(self):
        ids = IdAllocator(self.layout, {0: 0})
        with pytest.raises(Unavailable, match="partition 4 is not held"):
            ids.choose_partition(near=self.layout.make(4, 1))

    @pytest.mark.parametrize("near", [-1, MAX_ID + 1, "12", 1.5, True])
    def test_near_must_be_an_id(self, near):
        with pytest.raises(InvalidRequest):
            IdAllocator(self.layout, {0: 0}).choose_partition(near=near)

    def test_partitions_take_turns(self):
        ids = IdAllocator(self.layout, {4: 0, 2: 0, 9: 0}, inserts_per_turn=3)
        chosen = [ids.choose_partition() for _ in range(12)]
        assert chosen == [2, 2, 2, 4, 4, 4, 9, 9, 9, 2, 2, 2]

    def test_default_turn_length(self):
        ids = IdAllocator(self.layout, {0: 0, 1: 0})
        chosen = [ids.choose_partition() for _ in range(INSERTS_PER_TURN + 1)]
        assert chosen == [0] * INSERTS_PER_TURN + [1]

    def test_no_partition_held_is_unavailable(self):
        ids = IdAllocator(self.layout, {})
        assert ids.partitions() == []
        with pytest.raises(Unavailable, match="holds no partition"):
            ids.choose_partition()

    def test_allocating_in_a_partition_not_held_is_unavailable(self):
        with pytest.raises(Unavailable, match="partition 8 is not held"):
            IdAllocator(self.layout, {0: 0}).allocate(8)

    def test_an_exhausted_partition_is_unavailable(self):
        layout = IdLayout(partition_bits=32)
        ids = IdAllocator(layout, {1: layout.max_sequence - 2})
        assert ids.allocate(1) == layout.make(1, layout.max_sequence - 1)
        assert ids.allocate(1) == layout.last_id(1)
        with pytest.raises(Unavailable, match="used its whole id range"):
            ids.allocate(1)
        with pytest.raises(Unavailable):
            ids.allocate(1)

    def test_the_high_water_marks_are_copied(self):
        marks = {0: 5}
        ids = IdAllocator(self.layout, marks)
        ids.allocate(0)
        assert marks == {0: 5}


def test_a_new_partition_map_never_lowers_a_high_water_mark():
    allocator = IdAllocator(IdLayout(), {0: 0, 1: 0})
    handed_out = [allocator.allocate(0) for _ in range(5)]  # not stored yet: storage still says 0
    allocator.set_partitions({0: 0, 1: 0})
    assert allocator.allocate(0) > max(handed_out)
