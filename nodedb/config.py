"""A node's configuration: one checked value object, whether it comes from twistd options or a
``.tac`` file. Nothing here does I/O."""

import ipaddress
import os
from dataclasses import dataclass, field

from nodedb.errors import InvalidRequest
from nodedb.wire.address import format_address, parse_address
from nodedb.wire.limits import Limits

DEFAULT_LISTEN = "tcp:7400:interface=127.0.0.1"
DEFAULT_ADMIN = "tcp:7480:interface=127.0.0.1"
DEFAULT_PARTITIONS = 64
DEFAULT_REPLICAS = 3


class ConfigError(ValueError):
    """The configuration cannot work; the message says what to change."""


def split_endpoint(description):
    """Split a Twisted endpoint string into its type, positional and keyword arguments
    (honouring ``\\:`` escapes, as Twisted does)."""
    parts, current, chars = [], [], iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    kind, rest = parts[0].lower(), parts[1:]
    args = [part for part in rest if "=" not in part]
    kwargs = dict(part.split("=", 1) for part in rest if "=" in part)
    return kind, args, kwargs


def _is_loopback_host(host):
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_private_endpoint(description):
    """True if a server endpoint can only be reached from this host (loopback TCP or a UNIX
    socket), or is already encrypted (``ssl:``); such endpoints need no ``--insecure``."""
    kind, _args, kwargs = split_endpoint(description)
    if kind in ("unix", "ssl"):
        return True
    if kind in ("tcp", "tcp6"):
        return _is_loopback_host(kwargs.get("interface", ""))
    return False


def endpoint_address(description):
    """The ``host:port`` that a TCP server endpoint listens on, for advertising."""
    kind, args, kwargs = split_endpoint(description)
    if kind not in ("tcp", "tcp6", "ssl") or not args:
        raise ConfigError(f"cannot tell the address of {description!r}: give --advertise HOST:PORT")
    host = kwargs.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        raise ConfigError(f"{description!r} listens on every interface: give --advertise HOST:PORT")
    return format_address(host, int(args[0]))


@dataclass
class NodeConfig:
    """Everything a node is started with; see ``twistd -n nodedb --help`` for each field."""

    data_dir: str
    listen: str = DEFAULT_LISTEN
    advertise: str | None = None
    seeds: list = field(default_factory=list)
    admin: str | None = DEFAULT_ADMIN
    replicas: int = DEFAULT_REPLICAS
    partitions: int = DEFAULT_PARTITIONS
    #: Hosts the founder waits for before it forms the cluster (read only when bootstrapping).
    bootstrap_expect: int = 1
    insecure: bool = False
    storage: str = "lmdb"
    max_document_size: int = 1024 * 1024
    max_frame_size: int = 4 * 1024 * 1024
    map_size: int = 64 * 1024**3
    max_types: int = 1000
    peer_timeout: float = 2.0
    peer_retries: int = 1
    heartbeat_interval: float = 1.0
    remove_after: float = 600.0
    scan_idle_timeout: float = 60.0
    #: A TLS directory (``ca.pem``, ``cert.pem``, ``key.pem``): every connection is TLS.
    tls: str | None = None
    #: With TLS, whether clients must present a certificate signed by the cluster CA.
    client_cert: bool = True
    # Connection limits: nodedb.wire.limits.Limits says what each is.
    max_in_flight: int = Limits.max_in_flight
    max_peer_in_flight: int = Limits.max_peer_in_flight
    max_connections_per_address: int = Limits.max_connections_per_address
    max_connections: int = Limits.max_connections
    idle_timeout: float = Limits.idle_timeout
    handshake_timeout: float = Limits.handshake_timeout
    frame_timeout: float = Limits.frame_timeout

    def __post_init__(self):
        self.check()

    def tls_context(self):
        """The :class:`~nodedb.security.tls.TLSContext` of ``--tls``, read once (None without
        TLS); :raise ConfigError: if its files cannot be used."""
        if self.tls is None:
            return None
        cached = self.__dict__.get("_tls_context")
        if cached is None or cached.directory != self.tls:
            from nodedb.security.tls import TLSContext, TLSError

            try:
                cached = self.__dict__["_tls_context"] = TLSContext(self.tls)
            except TLSError as e:
                raise ConfigError(f"--tls: {e}") from None
        return cached

    def check(self):
        """:raise ConfigError: naming the first setting that cannot work."""
        if not self.data_dir:
            raise ConfigError("--data is required")
        if self.data_dir and os.path.exists(self.data_dir) and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data {self.data_dir!r} is not a directory")
        if not 1 <= self.partitions <= 65536:
            raise ConfigError("--partitions must be between 1 and 65536")
        if not 1 <= self.replicas <= 9:
            raise ConfigError("--replicas must be between 1 and 9")
        if not 1 <= self.bootstrap_expect <= 1000:
            raise ConfigError("--bootstrap-expect must be between 1 and 1000")
        if self.max_document_size < 1024:
            raise ConfigError("--max-document-size must be at least 1024 bytes")
        if self.max_frame_size < self.max_document_size + 64 * 1024:
            raise ConfigError("--max-frame-size must exceed --max-document-size by at least 64 KiB")
        if not 0.05 <= self.peer_timeout <= 300:
            raise ConfigError("--peer-timeout must be between 0.05 and 300 seconds")
        if not 0 <= self.peer_retries <= 10:
            raise ConfigError("--peer-retries must be between 0 and 10")
        if not 0.05 <= self.heartbeat_interval <= 60:
            raise ConfigError("--heartbeat-interval must be between 0.05 and 60 seconds")
        if not 1 <= self.remove_after <= 10**7:
            raise ConfigError("--remove-after must be between 1 and 10000000 seconds")
        if not 1 <= self.scan_idle_timeout <= 86400:
            raise ConfigError("--scan-idle-timeout must be between 1 and 86400 seconds")
        self._check_connection_limits()
        for seed in self.seeds:
            try:
                parse_address(seed)
            except InvalidRequest as e:
                raise ConfigError(f"--seed: {e}") from None
        if self.advertise is not None:
            try:
                parse_address(self.advertise)
            except InvalidRequest as e:
                raise ConfigError(f"--advertise: {e}") from None
        if self.tls is not None:
            self.tls_context()
        elif not self.client_cert:
            raise ConfigError("--no-client-cert needs --tls")
        for name, endpoint in (("--listen", self.listen), ("--admin", self.admin)):
            if endpoint is None:
                continue
            if self.tls is None and not self.insecure and not is_private_endpoint(endpoint):
                raise ConfigError(
                    f"{name} {endpoint!r} is reachable from other hosts and TLS is not configured: "
                    "listen on a loopback interface, or pass --insecure to accept plaintext"
                )

    def _check_connection_limits(self):
        for option, value in (
            ("--max-in-flight", self.max_in_flight),
            ("--max-peer-in-flight", self.max_peer_in_flight),
            ("--max-connections-per-address", self.max_connections_per_address),
            ("--max-connections", self.max_connections),
        ):
            if type(value) is not int or not 1 <= value <= 1_000_000:
                raise ConfigError(f"{option} must be an integer between 1 and 1000000")
        if self.max_peer_in_flight < self.max_in_flight:
            raise ConfigError("--max-peer-in-flight must be at least --max-in-flight")
        if not 1 <= self.handshake_timeout <= 300:
            raise ConfigError("--handshake-timeout must be between 1 and 300 seconds")
        if not 1 <= self.frame_timeout <= 86400:
            raise ConfigError("--frame-timeout must be between 1 and 86400 seconds")
        if not 1 <= self.idle_timeout <= 86400:
            raise ConfigError("--idle-timeout must be between 1 and 86400 seconds")
        if self.idle_timeout < 3 * self.heartbeat_interval:
            # Peers keep their connections up with heartbeats; those must not look idle.
            raise ConfigError("--idle-timeout must be at least 3 times --heartbeat-interval")

    def advertised_address(self):
        """The address other hosts and clients should use to reach this node."""
        return self.advertise or endpoint_address(self.listen)
