"""Where nodedb looks for plugins: storage backends, peer transports and id allocators.

Like ``twisted.plugins``, this package is extended by every ``nodedb/plugins/`` directory on
``sys.path``, so a third-party package can ship ``nodedb/plugins/mybackend.py`` (without an
``__init__.py`` of its own) and ``--storage mybackend`` will find it. See docs/plugins.md.
"""

from twisted.plugin import getPlugins, pluginPackagePaths

from nodedb.config import ConfigError
from nodedb.interfaces import IIdAllocatorPlugin, IPeerTransportPlugin, IStorageBackendPlugin

__path__.extend(pluginPackagePaths(__name__))
__all__ = []

#: What each kind of plugin is called in messages.
_KINDS = {
    IStorageBackendPlugin: "storage backend",
    IPeerTransportPlugin: "transport",
    IIdAllocatorPlugin: "id allocator",
}


def plugins_of(interface):
    """:return: ``{name: plugin}`` for every plugin providing *interface* that can be found."""
    import nodedb.plugins

    return {plugin.name: plugin for plugin in sorted(getPlugins(interface, nodedb.plugins), key=lambda p: p.name)}


def find_plugin(interface, name):
    """:raise ConfigError: if no plugin of that kind and name is installed."""
    plugins = plugins_of(interface)
    if name not in plugins:
        raise ConfigError(f"unknown {_KINDS[interface]} {name!r}; installed: {', '.join(sorted(plugins))}")
    return plugins[name]


def storage_plugins():
    """:return: ``{name: plugin}`` for every storage backend plugin that can be found."""
    return plugins_of(IStorageBackendPlugin)


def find_storage_plugin(name):
    """:raise ConfigError: if no storage backend of that name is installed."""
    return find_plugin(IStorageBackendPlugin, name)


def check_plugins(config):
    """:raise ConfigError: if a plugin the *config* names is not installed."""
    find_plugin(IStorageBackendPlugin, config.storage)
    find_plugin(IPeerTransportPlugin, config.transport)
    find_plugin(IIdAllocatorPlugin, config.id_allocator)


def installed_plugins():
    """:return: ``{kind: [name, ...]}`` of every plugin that can be found, by kind."""
    return {kind: sorted(plugins_of(interface)) for interface, kind in _KINDS.items()}
