"""Where nodedb looks for plugins (``IStorageBackendPlugin`` providers).

Like ``twisted.plugins``, this package is extended by every ``nodedb/plugins/`` directory on
``sys.path``, so a third-party package can ship ``nodedb/plugins/mybackend.py`` (without an
``__init__.py`` of its own) and ``--storage mybackend`` will find it. See docs/plugins.md.
"""

from twisted.plugin import getPlugins, pluginPackagePaths

from nodedb.config import ConfigError
from nodedb.interfaces import IStorageBackendPlugin

__path__.extend(pluginPackagePaths(__name__))
__all__ = []


def storage_plugins():
    """:return: ``{name: plugin}`` for every storage backend plugin that can be found."""
    import nodedb.plugins

    return {plugin.name: plugin for plugin in sorted(getPlugins(IStorageBackendPlugin, nodedb.plugins), key=lambda p: p.name)}


def find_storage_plugin(name):
    """:raise ConfigError: if no plugin of that name is installed."""
    plugins = storage_plugins()
    if name not in plugins:
        raise ConfigError(f"unknown storage backend {name!r}; installed: {', '.join(sorted(plugins))}")
    return plugins[name]
