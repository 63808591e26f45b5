"""The storage backends, transports and id allocators that ship with nodedb, offered as
plugins like any other. Each imports its implementation only when it is used."""

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from nodedb.config import ConfigError
from nodedb.interfaces import IIdAllocatorPlugin, IPeerTransportPlugin, IStorageBackendPlugin


@implementer(IPlugin, IStorageBackendPlugin)
class _LMDBPlugin:
    name = "lmdb"

    def make_backend(self, data_dir, options, reactor):
        from nodedb.storage.lmdb import LMDBStorage

        return LMDBStorage(
            os.path.join(data_dir, "lmdb"), reactor, map_size=options.map_size, max_types=options.max_types
        )


@implementer(IPlugin, IStorageBackendPlugin)
class _MemoryPlugin:
    name = "memory"

    def make_backend(self, data_dir, options, reactor):
        from nodedb.storage.memory import MemoryStorage

        return MemoryStorage()


def _transport_options(options, on_heartbeat, heartbeat_op):
    """The :class:`~nodedb.wire.transport.PeerTransport` settings every shipped transport
    takes from the node's options."""
    from nodedb.wire.limits import Limits

    return dict(
        max_frame=options.max_frame_size,
        heartbeat_interval=options.heartbeat_interval,
        on_heartbeat=on_heartbeat,
        heartbeat_op=heartbeat_op,
        limits=Limits.from_config(options),
    )


@implementer(IPlugin, IPeerTransportPlugin)
class _TCPPlugin:
    name = "tcp"

    def make_transport(self, options, reactor, hello, on_heartbeat, heartbeat_op):
        from nodedb.wire.transport import tcp_transport

        return tcp_transport(
            reactor,
            options.listen,
            hello,
            tls=options.tls_context(),
            client_cert=options.client_cert,
            **_transport_options(options, on_heartbeat, heartbeat_op),
        )


@implementer(IPlugin, IPeerTransportPlugin)
class _UnixPlugin:
    name = "unix"

    def make_transport(self, options, reactor, hello, on_heartbeat, heartbeat_op):
        from nodedb.wire.transport import unix_transport

        if options.socket_dir is None:
            raise ConfigError("--transport unix needs --socket-dir")
        if options.tls is not None:
            raise ConfigError("--transport unix takes no --tls: its sockets never leave the machine")
        return unix_transport(
            reactor,
            options.socket_dir,
            options.advertised_address(),
            hello,
            **_transport_options(options, on_heartbeat, heartbeat_op),
        )


@implementer(IPlugin, IIdAllocatorPlugin)
class _SequentialPlugin:
    name = "sequential"

    def make_allocator(self, layout, high_water_marks, options, clock):
        from nodedb.ids import IdAllocator

        return IdAllocator(layout, high_water_marks)


@implementer(IPlugin, IIdAllocatorPlugin)
class _TimeOrderedPlugin:
    name = "time"

    def make_allocator(self, layout, high_water_marks, options, clock):
        from nodedb.ids import TimeOrderedIdAllocator

        return TimeOrderedIdAllocator(layout, high_water_marks, clock)


lmdb_backend = _LMDBPlugin()
memory_backend = _MemoryPlugin()
tcp_transport = _TCPPlugin()
unix_transport = _UnixPlugin()
sequential_ids = _SequentialPlugin()
time_ordered_ids = _TimeOrderedPlugin()
