"""``twistd nodedb``: the command-line options and the service they make.

Everything here also works from a ``.tac`` file: build a :class:`nodedb.config.NodeConfig`
and call :func:`nodedb.node.make_node` (see tac/nodedb.tac).
"""

import os
import sys

from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from nodedb import config as _config
from nodedb.config import ConfigError, NodeConfig

#: Seconds a thread may hold the GIL while another waits (Python's default is 5 ms).
GIL_SWITCH_INTERVAL = 0.0005


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


_positive_int.coerceDoc = "A positive integer."


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one nodedb node. With an empty --data directory and no --seed, the node "
        "bootstraps a new single-node cluster; with a directory that already holds a node, "
        "it restarts that node."
    )

    optParameters = [
        ["data", "d", None, "Directory for this node's data (required)."],
        ["listen", "l", _config.DEFAULT_LISTEN, "Twisted server endpoint for peers and clients."],
        ["advertise", None, None, "HOST:PORT other hosts and clients use to reach this node."],
        ["admin", None, _config.DEFAULT_ADMIN, "Twisted server endpoint of the admin HTTP site, or 'none'."],
        ["replicas", None, _config.DEFAULT_REPLICAS, "Replication factor (read only when bootstrapping).", _positive_int],
        ["partitions", None, _config.DEFAULT_PARTITIONS, "Number of partitions (read only when bootstrapping).", _positive_int],
        [
            "bootstrap-expect",
            None,
            1,
            "Hosts to wait for before forming a new cluster (read only when bootstrapping); give the same N to every host.",
            _positive_int,
        ],
        ["storage", None, "lmdb", "Storage backend plugin: lmdb, memory, or an installed plugin's name."],
        ["max-document-size", None, 1024 * 1024, "Largest document accepted, in encoded bytes.", _positive_int],
        ["max-frame-size", None, 4 * 1024 * 1024, "Largest wire frame accepted, in bytes.", _positive_int],
        ["map-size", None, 64 * 1024**3, "LMDB map size in bytes: the most the store can grow to.", _positive_int],
        ["max-types", None, 1000, "Most record types one store can hold (LMDB sub-databases).", _positive_int],
        ["peer-timeout", None, 2.0, "Seconds a call to another host may take before it counts as a timeout.", float],
        ["peer-retries", None, 1, "More tries of an idempotent call to another host after a timeout.", int],
        ["heartbeat-interval", None, 1.0, "Seconds between heartbeats to each connected host.", float],
        ["remove-after", None, 600.0, "Seconds a host may stay unavailable before it loses its partitions.", float],
        ["scan-idle-timeout", None, 60.0, "Seconds a scan cursor's state is kept after its last page.", float],
        ["max-in-flight", None, 256, "Requests of one client connection served at once; past it the node stops reading from it.", _positive_int],
        ["max-peer-in-flight", None, 4096, "The same for a connection from another host of the cluster.", _positive_int],
        ["max-connections-per-address", None, 64, "Connections open at once from one IP address; more are closed at once.", _positive_int],
        ["max-connections", None, 4096, "Connections open at once in all; more are closed at once.", _positive_int],
        ["idle-timeout", None, 300.0, "Seconds a connection may send nothing (and wait for nothing) before it is closed.", float],
        ["handshake-timeout", None, 10.0, "Seconds a new connection has to send its hello.", float],
        ["frame-timeout", None, 30.0, "Seconds a frame may take to arrive once its first bytes have.", float],
        ["tls", None, None, "TLS directory (ca.pem, cert.pem, key.pem from 'nodedb ca issue'): TLS on every connection."],
    ]
    optFlags = [
        ["insecure", None, "Allow plaintext on non-loopback addresses (no TLS)."],
        ["no-client-cert", None, "With --tls, do not require clients to present a certificate."],
    ]

    def __init__(self):
        super().__init__()
        self["seeds"] = []

    def opt_seed(self, address):
        """HOST:PORT of a node to join through (repeatable)."""
        self["seeds"].append(address)

    def postOptions(self):
        if not self["data"]:
            raise usage.UsageError("--data DIR is required")
        try:
            self.config = NodeConfig(
                data_dir=os.path.abspath(self["data"]),
                listen=self["listen"],
                advertise=self["advertise"],
                seeds=list(self["seeds"]),
                admin=None if self["admin"] in (None, "none") else self["admin"],
                replicas=self["replicas"],
                partitions=self["partitions"],
                bootstrap_expect=self["bootstrap-expect"],
                insecure=bool(self["insecure"]),
                storage=self["storage"],
                max_document_size=self["max-document-size"],
                max_frame_size=self["max-frame-size"],
                map_size=self["map-size"],
                max_types=self["max-types"],
                peer_timeout=self["peer-timeout"],
                peer_retries=self["peer-retries"],
                heartbeat_interval=self["heartbeat-interval"],
                remove_after=self["remove-after"],
                scan_idle_timeout=self["scan-idle-timeout"],
                tls=os.path.abspath(self["tls"]) if self["tls"] else None,
                client_cert=not self["no-client-cert"],
                max_in_flight=self["max-in-flight"],
                max_peer_in_flight=self["max-peer-in-flight"],
                max_connections_per_address=self["max-connections-per-address"],
                max_connections=self["max-connections"],
                idle_timeout=self["idle-timeout"],
                handshake_timeout=self["handshake-timeout"],
                frame_timeout=self["frame-timeout"],
            )
            # An unknown backend is a command-line mistake: report it here, where twistd
            # prints it as one, rather than as a traceback from makeService.
            from nodedb.plugins import find_storage_plugin

            find_storage_plugin(self.config.storage)
        except ConfigError as e:
            # A setting that cannot work is one line, not twistd's whole usage text.
            raise SystemExit(f"twistd nodedb: {e}") from None


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
