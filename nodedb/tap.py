"""``twistd nodedb``: the command-line options and the service they make.

Everything here also works from a ``.tac`` file: build a :class:`nodedb.config.NodeConfig`
and call :func:`nodedb.node.make_node` (see tac/nodedb.tac).
"""

import os
import sys

from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from nodedb.config import SETTINGS, ConfigError, NodeConfig

#: Seconds a thread may hold the GIL while another waits (Python's default is 5 ms).
GIL_SWITCH_INTERVAL = 0.0005


def _appender(setting):
    def append(self, value):
        self[setting.option].append(setting.read(value))

    append.__doc__ = setting.help
    return append


class Options(usage.Options):
    """The options of :data:`nodedb.config.SETTINGS`, read into :attr:`config`."""

    synopsis = "[options]"
    longdesc = (
        "Run one nodedb node. With an empty --data directory and no --seed, the node "
        "bootstraps a new single-node cluster; with a directory that already holds a node, "
        "it restarts that node."
    )

    optParameters = [
        [s.option, s.short, s.default, s.help, s.read] for s in SETTINGS.values() if not s.flag and not s.repeated
    ]
    optFlags = [[s.option, s.short, s.help] for s in SETTINGS.values() if s.flag]

    def __init__(self):
        super().__init__()
        for s in SETTINGS.values():
            if s.repeated:
                self[s.option] = []

    def postOptions(self):
        if not self["data"]:
            raise usage.UsageError("--data DIR is required")
        values = {}
        for name, s in SETTINGS.items():
            value = self[s.option]
            if s.flag:
                # A flag, when given, turns its setting from the default.
                value = not s.default if value else s.default
            values[name] = value
        try:
            self.config = NodeConfig(**values)
            # An unknown plugin is a command-line mistake: report it here, where twistd
            # prints it as one, rather than as a traceback from makeService.
            from nodedb.plugins import check_plugins

            check_plugins(self.config)
        except ConfigError as e:
            # A setting that cannot work is one line, not twistd's whole usage text.
            raise SystemExit(f"twistd nodedb: {e}") from None


# twistd takes a repeatable option as a method, opt_NAME, called with each value given.
for _setting in SETTINGS.values():
    if _setting.repeated:
        setattr(Options, "opt_" + _setting.option.replace("-", "_"), _appender(_setting))


_log = Logger(namespace="nodedb.tap")


def makeService(options, reactor=None):
    """The node service for parsed *options*; a node that cannot start stops the process
    with a one-line reason and exit status 1."""
    from nodedb.node import make_node

    if reactor is None:
        from twisted.internet import reactor
    # The reactor thread and the storage writer thread hand every commit to each other; with
    # Python's default 5 ms switch interval a waiting thread can sit out most of that before
    # it gets the GIL (bench/cluster.py: about 10% more inserts and gets at 0.5 ms).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        node = make_node(options.config, reactor)
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None
    node.when_ready().addErrback(_give_up, reactor)
    return node


def _give_up(failure, reactor):
    reason = failure.value
    _log.critical("nodedb could not start: {reason}", reason=str(reason) or type(reason).__name__)
    # A bad setting, a port in use or a NodeDBError says all there is to say; anything else
    # is a bug, and its traceback goes to the log.
    if not failure.check(ConfigError, CannotListenError) and not hasattr(reason, "wire_name"):
        _log.failure("details", failure)
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    # twistd starts services before it runs the reactor, so a failure can arrive before
    # there is a running reactor to stop.
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
