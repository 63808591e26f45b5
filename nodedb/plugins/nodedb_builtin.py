"""The storage backends that ship with nodedb, offered as plugins like any other."""

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from nodedb.interfaces import IStorageBackendPlugin


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


lmdb_backend = _LMDBPlugin()
memory_backend = _MemoryPlugin()
