# nodedb.tac: one nodedb node, built in Python instead of from twistd options.
#
# With no environment variables set, this builds the same service as
#
#     twistd -n nodedb --data ./data
#
# Run it in the foreground with
#
#     twistd -n --pidfile= -y tac/nodedb.tac
#
# (from a source checkout, put the checkout on the path first: PYTHONPATH=. twistd ...).
# Copy this file and change the NodeConfig below to suit; every field of NodeConfig is one
# `twistd nodedb` option (see docs/running.md). The environment variables are only here so
# that the example can be tried without editing it:
#
#     NODEDB_DATA       data directory              (default ./data)
#     NODEDB_LISTEN     request endpoint            (default tcp:7400:interface=127.0.0.1)
#     NODEDB_ADMIN      admin HTTP endpoint, 'none' (default tcp:7480:interface=127.0.0.1)
#     NODEDB_JSON_LOG   write the log as JSON, one event a line, to this file ('-' for
#                       standard output) instead of twistd's text log

import os
import sys

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver

from nodedb import config
from nodedb.node import make_node

admin = os.environ.get("NODEDB_ADMIN", config.DEFAULT_ADMIN)

node_config = config.NodeConfig(
    # Relative paths are taken from the directory twistd runs in.
    data_dir=os.path.abspath(os.environ.get("NODEDB_DATA", "data")),
    listen=os.environ.get("NODEDB_LISTEN", config.DEFAULT_LISTEN),
    admin=None if admin == "none" else admin,
    # The other fields keep their defaults. Each is a `twistd nodedb` option, named as the
    # field with dashes (but seeds is --seed, client_cert=False is --no-client-cert);
    # docs/running.md and `twistd nodedb --help` give the defaults, such as storage="lmdb",
    # transport="tcp", id_allocator="sequential" and replicas=3.
)
# NodeConfig checks itself when it is built and raises nodedb.config.ConfigError, with a
# message naming the setting, if it cannot work (for example a non-loopback --listen without
# insecure=True). twistd then prints "Failed to load application: <message>" and exits with
# status 1.

application = service.Application("nodedb")

json_log = os.environ.get("NODEDB_JSON_LOG")
if json_log:
    # twistd uses an ILogObserver that the application carries instead of its own text log.
    # recordSeparator="" gives JSON Lines; the default ("\x1e") gives RFC 7464 JSON text
    # sequences. Both can be read back with twisted.logger.eventsFromJSONLogFile.
    out = sys.stdout if json_log == "-" else open(json_log, "a", encoding="utf-8")
    application.setComponent(ILogObserver, jsonFileLogObserver(out, recordSeparator=""))

node = make_node(node_config, reactor)
node.setServiceParent(application)

_log = Logger(namespace="nodedb.tac")


def _give_up(failure):
    # The node could not start (port in use, unreadable store, ...): say why, then stop
    # twistd with exit status 1, as `twistd nodedb` does. callWhenRunning, because twistd
    # starts the services before the reactor runs, and a failure can come that early.
    _log.critical("nodedb could not start: {reason}", reason=failure.getErrorMessage())
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.callWhenRunning(reactor.stop)


node.when_ready().addErrback(_give_up)
