"""The behaviour every :class:`nodedb.interfaces.IIdAllocator` must show, as pytest tests.

An allocator's test module subclasses :class:`IdAllocatorContract` and says how to build one::

    from nodedb.testing.allocator_contract import IdAllocatorContract

    class TestMyAllocator(IdAllocatorContract):
        def make_allocator(self, high_water_marks):
            return MyAllocator(self.layout, high_water_marks)

The tests are synchronous: an allocator answers at once. Ids follow
:attr:`IdAllocatorContract.layout`, the default :class:`nodedb.ids.IdLayout`.

See docs/plugins.md.
"""

import pytest
from zope.interface.verify import verifyObject

from nodedb.errors import InvalidRequest, Unavailable
from nodedb.ids import MAX_ID, IdLayout
from nodedb.interfaces import IIdAllocator

#: The sequence range of epoch 1 of a partition (as nodedb.voting.state.sequence_range gives it).
EPOCH_1 = ((1 << 36) + 1, (2 << 36) - 1)


class IdAllocatorContract:
    """Tests every id allocator must pass; subclass it and define :meth:`make_allocator`."""

    layout = IdLayout()

    def make_allocator(self, high_water_marks):
        """:return: a new allocator for :attr:`layout` that allocates in the partitions of
        *high_water_marks* (``{partition: highest sequence ever used}``)."""
        raise NotImplementedError("an id allocator contract test class must define make_allocator()")

    def sequences(self, ids, partition):
        """The sequences of those *ids* that are in *partition*, in the order given."""
        return [self.layout.sequence_of(i) for i in ids if self.layout.partition_of(i) == partition]

    # -- the interface ----------------------------------------------------------------------

    def test_provides_the_interface(self):
        assert verifyObject(IIdAllocator, self.make_allocator({0: 0}))

    def test_partitions_are_sorted(self):
        assert self.make_allocator({5: 0, 1: 3, 3: 0}).partitions() == [1, 3, 5]

    # -- ids --------------------------------------------------------------------------------

    def test_ids_are_in_their_partition_above_the_high_water_mark(self):
        ids = self.make_allocator({2: 41, 3: 0})
        assert self.sequences([ids.allocate(2)], 2)[0] > 41
        assert self.sequences([ids.allocate(3)], 3)[0] >= 1, "sequence 0 is never handed out"

    def test_ids_never_repeat_and_only_grow_in_a_partition(self):
        marks = {0: 0, 1: 10, 2: 5}
        ids = self.make_allocator(marks)
        # Far more than one turn of each partition (nodedb.ids.INSERTS_PER_TURN).
        seen = [ids.allocate(ids.choose_partition()) for _ in range(5000)]
        assert len(set(seen)) == len(seen)
        for partition, mark in marks.items():
            mine = self.sequences(seen, partition)
            assert mine, f"partition {partition} was never chosen"
            assert mine == sorted(mine) and mine[0] > mark

    def test_a_restarted_allocator_never_hands_out_an_id_again(self):
        """A node that restarts passes each partition's stored max_sequence."""
        first_run = self.make_allocator({4: 0})
        before = [first_run.allocate(4) for _ in range(50)]
        restarted = self.make_allocator({4: max(self.sequences(before, 4))})
        after = [restarted.allocate(4) for _ in range(50)]
        assert min(after) > max(before)

    def test_the_high_water_marks_are_copied(self):
        marks = {0: 5}
        ids = self.make_allocator(marks)
        ids.allocate(0)
        assert marks == {0: 5}

    # -- choosing a partition ----------------------------------------------------------------

    def test_inserts_go_only_to_partitions_held(self):
        ids = self.make_allocator({4: 0, 2: 0, 9: 0})
        assert {ids.choose_partition() for _ in range(5000)} == {2, 4, 9}

    def test_near_pins_the_partition(self):
        ids = self.make_allocator({0: 0, 7: 0, 9: 0})
        other = self.layout.make(7, 12345)
        for _ in range(5):
            assert ids.choose_partition(near=other) == 7
        assert self.layout.partition_of(ids.allocate(ids.choose_partition(near=other))) == 7

    def test_near_in_a_partition_not_held_is_unavailable(self):
        with pytest.raises(Unavailable, match="partition 4 is not held"):
            self.make_allocator({0: 0}).choose_partition(near=self.layout.make(4, 1))

    @pytest.mark.parametrize("near", [-1, MAX_ID + 1, "12", 1.5, True])
    def test_near_must_be_an_id(self, near):
        with pytest.raises(InvalidRequest):
            self.make_allocator({0: 0}).choose_partition(near=near)

    def test_no_partition_held_is_unavailable(self):
        ids = self.make_allocator({})
        assert ids.partitions() == []
        with pytest.raises(Unavailable, match="holds no partition"):
            ids.choose_partition()

    def test_allocating_in_a_partition_not_held_is_unavailable(self):
        with pytest.raises(Unavailable, match="partition 8 is not held"):
            self.make_allocator({0: 0}).allocate(8)

    # -- the partition map and id ranges -----------------------------------------------------

    def test_a_new_partition_map_replaces_the_partitions(self):
        ids = self.make_allocator({0: 0, 1: 0})
        ids.set_partitions({1: 0, 6: 0})
        assert ids.partitions() == [1, 6]
        with pytest.raises(Unavailable, match="partition 0 is not held"):
            ids.allocate(0)
        assert self.layout.partition_of(ids.allocate(6)) == 6
        assert {ids.choose_partition() for _ in range(5000)} == {1, 6}

    def test_a_new_partition_map_never_lowers_a_high_water_mark(self):
        ids = self.make_allocator({0: 0, 1: 0})
        handed_out = [ids.allocate(0) for _ in range(5)]  # not stored yet: storage still says 0
        ids.set_partitions({0: 0, 1: 0})
        assert ids.allocate(0) > max(handed_out)

    def test_ids_stay_within_the_range_of_the_epoch(self):
        ids = self.make_allocator({})
        ids.set_partitions({3: 0}, {3: EPOCH_1})
        handed_out = self.sequences([ids.allocate(3) for _ in range(100)], 3)
        assert all(EPOCH_1[0] <= s <= EPOCH_1[1] for s in handed_out)

    def test_a_high_water_mark_inside_the_range_is_kept(self):
        ids = self.make_allocator({})
        ids.set_partitions({3: EPOCH_1[0] + 100}, {3: EPOCH_1})
        assert self.sequences([ids.allocate(3)], 3)[0] > EPOCH_1[0] + 100

    def allocate_all(self, ids, partition):
        """Allocate in *partition* until its range is used up (at most 10 ids).

        :return: the ids handed out.
        """
        handed_out = []
        with pytest.raises(Unavailable, match="used its whole id range"):
            for _ in range(10):
                handed_out.append(ids.allocate(partition))
        # It stays used up.
        with pytest.raises(Unavailable, match="used its whole id range"):
            ids.allocate(partition)
        return handed_out

    def test_a_used_up_range_is_unavailable(self):
        ids = self.make_allocator({})
        ids.set_partitions({3: 0}, {3: (1000, 1002)})
        handed_out = self.sequences(self.allocate_all(ids, 3), 3)
        assert handed_out and handed_out == sorted(set(handed_out))
        assert all(1000 <= s <= 1002 for s in handed_out)

    def test_a_used_up_sequence_space_is_unavailable(self):
        last = self.layout.max_sequence
        ids = self.make_allocator({1: last - 2})
        handed_out = self.allocate_all(ids, 1)
        assert handed_out and set(handed_out) <= {self.layout.make(1, last - 1), self.layout.last_id(1)}
        assert handed_out == sorted(set(handed_out))
