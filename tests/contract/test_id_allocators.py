"""The id allocator contract run against the allocators nodedb ships, built by their plugins
as a node builds them."""

from twisted.internet.task import Clock

from nodedb.config import NodeConfig
from nodedb.ids import IdAllocator, TimeOrderedIdAllocator
from nodedb.interfaces import IIdAllocatorPlugin
from nodedb.plugins import find_plugin
from nodedb.testing.allocator_contract import IdAllocatorContract


def from_plugin(name, layout, high_water_marks, clock):
    options = NodeConfig(data_dir="/nonexistent", id_allocator=name)
    return find_plugin(IIdAllocatorPlugin, name).make_allocator(layout, high_water_marks, options, clock)


class TestSequentialIdAllocator(IdAllocatorContract):
    def make_allocator(self, high_water_marks):
        allocator = from_plugin("sequential", self.layout, high_water_marks, Clock())
        assert type(allocator) is IdAllocator
        return allocator


class TestTimeOrderedIdAllocator(IdAllocatorContract):
    def make_allocator(self, high_water_marks):
        clock = Clock()
        clock.advance(1_700_000_000)  # November 2023
        allocator = from_plugin("time", self.layout, high_water_marks, clock)
        assert type(allocator) is TimeOrderedIdAllocator
        return allocator
