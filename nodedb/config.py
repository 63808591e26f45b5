"""A node's configuration: one checked value object, whether it comes from twistd options or a
``.tac`` file. Nothing here does I/O.

Every setting is declared once, as a field of :class:`NodeConfig` made by :func:`setting`: its
default, its command-line option, how the option's text is read, its bounds and its help. The
``twistd nodedb`` options (:mod:`nodedb.tap`) are generated from those fields, and
``tests/unit/test_settings_docs.py`` checks docs/running.md's option table against them.
"""

import ipaddress
import os
from dataclasses import MISSING, dataclass, field, fields, replace

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


# -- the settings table ------------------------------------------------------------------------

_REQUIRED = object()


def read_count(text):
    """The command-line reading of a count: a decimal integer of at least 1 (its bounds are
    checked with every other setting's, by :meth:`NodeConfig.check`)."""
    number = int(text)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


read_count.coerceDoc = "A positive integer."


def read_path(text):
    """A path as given, made absolute against the directory the process started in."""
    return os.path.abspath(text)


def read_endpoint_or_none(text):
    """An endpoint description, or None for ``none``."""
    return None if text == "none" else text


@dataclass(frozen=True)
class Setting:
    """How one :class:`NodeConfig` field is given on the command line, and its bounds.

    :ivar option: the long option, without ``--``.
    :ivar kind: the type of the value (``int``, ``float``, ``bool``, ``str`` or ``list``).
    :ivar read: ``read(text)`` -> the value, for options that take one; it raises
        ValueError for text that cannot be one.
    :ivar bounds: ``(lowest, highest)`` for numbers, inclusive; highest may be None.
    :ivar unit: what the number counts (``bytes``, ``seconds``), for messages.
    :ivar metavar: what the option's argument is called in docs/running.md.
    :ivar default: the field's default (None for a required or a repeated setting).
    """

    option: str
    kind: type
    help: str
    read: object = None
    bounds: tuple = None
    unit: str = ""
    metavar: str = ""
    short: str = None
    default: object = None

    @property
    def flag(self):
        """A flag takes no argument: given, it turns the setting from its default."""
        return self.kind is bool

    @property
    def repeated(self):
        return self.kind is list

    def describe_bounds(self):
        """What the value must be: ``an integer between 1 and 9``, ``between 1 and 300 seconds``."""
        low, high = self.bounds
        span = f"between {low} and {high}" if high is not None else f"{'of ' if self.kind is int else ''}at least {low}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{'an integer ' if self.kind is int else ''}{span}{unit}"

    def check(self, value):
        """:raise ConfigError: if *value* is not a number within the bounds."""
        if self.bounds is None:
            return
        low, high = self.bounds
        number = type(value) is int or (self.kind is float and type(value) is float)
        if not number or value < low or (high is not None and value > high):
            raise ConfigError(f"--{self.option} must be {self.describe_bounds()}")


def setting(default, help, *, kind=None, option=None, short=None, metavar="", read=None, bounds=None, unit=""):
    """A :class:`NodeConfig` field that is also a ``twistd nodedb`` option.

    :param default: the default value; ``list`` for a repeated option (empty by default),
        ``_REQUIRED`` for none.
    :param kind: the value's type, when the default does not show it (a default of None).
    :param option: the long option, when it is not the field's name with dashes.
    :param read: how the option's text becomes the value; by default a count (a positive
        integer, or any integer when the bounds allow 0), a float, or the text itself.
    """
    if kind is None:
        kind = list if default is list else type(default)
    if read is None and kind is not bool:
        read = {int: read_count if bounds and bounds[0] >= 1 else int, float: float, str: str, list: str}[kind]
    description = Setting(option, kind, help, read, bounds, unit, metavar, short)
    if default is _REQUIRED:
        return field(metadata={"setting": description})
    if default is list:
        return field(default_factory=list, metadata={"setting": description})
    return field(default=default, metadata={"setting": description})


@dataclass
class NodeConfig:
    """Everything a node is started with: one field per ``twistd nodedb`` option."""

    data_dir: str = setting(
        _REQUIRED, "Directory for this node's data (required).", kind=str, option="data", short="d", metavar="DIR", read=read_path
    )
    listen: str = setting(DEFAULT_LISTEN, "Twisted server endpoint for peers and clients.", short="l", metavar="ENDPOINT")
    advertise: str | None = setting(None, "HOST:PORT other hosts and clients use to reach this node.", kind=str, metavar="HOST:PORT")
    admin: str | None = setting(
        DEFAULT_ADMIN, "Twisted server endpoint of the admin HTTP site, or 'none'.", metavar="ENDPOINT", read=read_endpoint_or_none
    )
    seeds: list = setting(list, "HOST:PORT of a node to join through (repeatable).", option="seed", metavar="HOST:PORT")
    replicas: int = setting(DEFAULT_REPLICAS, "Replication factor (read only when bootstrapping).", metavar="N", bounds=(1, 9))
    partitions: int = setting(
        DEFAULT_PARTITIONS, "Number of partitions (read only when bootstrapping).", metavar="N", bounds=(1, 65536)
    )
    bootstrap_expect: int = setting(
        1,
        "Hosts to wait for before forming a new cluster (read only when bootstrapping); give the same N to every host.",
        metavar="N",
        bounds=(1, 1000),
    )
    storage: str = setting("lmdb", "Storage backend plugin: lmdb, memory, or an installed plugin's name.", metavar="NAME")
    transport: str = setting("tcp", "Peer transport plugin: tcp, unix, or an installed plugin's name.", metavar="NAME")
    id_allocator: str = setting(
        "sequential", "Id allocator plugin: sequential, time, or an installed plugin's name.", metavar="NAME"
    )
    socket_dir: str | None = setting(
        None,
        "With --transport unix: the directory of the Unix sockets of this machine's hosts.",
        kind=str,
        metavar="DIR",
        read=read_path,
    )
    max_document_size: int = setting(
        1024 * 1024, "Largest document accepted, in encoded bytes.", metavar="BYTES", bounds=(1024, None), unit="bytes"
    )
    max_frame_size: int = setting(
        4 * 1024 * 1024, "Largest wire frame accepted, in bytes.", metavar="BYTES", bounds=(1, None), unit="bytes"
    )
    map_size: int = setting(
        64 * 1024**3, "LMDB map size in bytes: the most the store can grow to.", metavar="BYTES", bounds=(1, None), unit="bytes"
    )
    max_types: int = setting(1000, "Most record types one store can hold (LMDB sub-databases).", metavar="N", bounds=(1, None))
    peer_timeout: float = setting(
        2.0,
        "Seconds a call to another host may take before it counts as a timeout.",
        metavar="SECONDS",
        bounds=(0.05, 300),
        unit="seconds",
    )
    peer_retries: int = setting(
        1, "More tries of an idempotent call to another host after a timeout.", metavar="N", bounds=(0, 10)
    )
    heartbeat_interval: float = setting(
        1.0, "Seconds between heartbeats to each connected host.", metavar="SECONDS", bounds=(0.05, 60), unit="seconds"
    )
    remove_after: float = setting(
        600.0,
        "Seconds a host may stay unavailable before it loses its partitions.",
        metavar="SECONDS",
        bounds=(1, 10**7),
        unit="seconds",
    )
    scan_idle_timeout: float = setting(
        60.0,
        "Seconds a scan cursor's state is kept after its last page.",
        metavar="SECONDS",
        bounds=(1, 86400),
        unit="seconds",
    )
    # Connection limits: nodedb.wire.limits.Limits says what each is, and holds the defaults.
    max_in_flight: int = setting(
        Limits.max_in_flight,
        "Requests of one client connection served at once; past it the node stops reading from it.",
        metavar="N",
        bounds=(1, 1_000_000),
    )
    max_peer_in_flight: int = setting(
        Limits.max_peer_in_flight,
        "The same for a connection from another host of the cluster.",
        metavar="N",
        bounds=(1, 1_000_000),
    )
    max_connections_per_address: int = setting(
        Limits.max_connections_per_address,
        "Connections open at once from one IP address; more are closed at once.",
        metavar="N",
        bounds=(1, 1_000_000),
    )
    max_connections: int = setting(
        Limits.max_connections, "Connections open at once in all; more are closed at once.", metavar="N", bounds=(1, 1_000_000)
    )
    idle_timeout: float = setting(
        Limits.idle_timeout,
        "Seconds a connection may send nothing (and wait for nothing) before it is closed.",
        metavar="SECONDS",
        bounds=(1, 86400),
        unit="seconds",
    )
    handshake_timeout: float = setting(
        Limits.handshake_timeout,
        "Seconds a new connection has to send its hello.",
        metavar="SECONDS",
        bounds=(1, 300),
        unit="seconds",
    )
    frame_timeout: float = setting(
        Limits.frame_timeout,
        "Seconds a frame may take to arrive once its first bytes have.",
        metavar="SECONDS",
        bounds=(1, 86400),
        unit="seconds",
    )
    #: A TLS directory (``ca.pem``, ``cert.pem``, ``key.pem``): every connection is TLS.
    tls: str | None = setting(
        None,
        "TLS directory (ca.pem, cert.pem, key.pem from 'nodedb ca issue'): TLS on every connection.",
        kind=str,
        metavar="DIR",
        read=read_path,
    )
    #: With TLS, whether clients must present a certificate signed by the cluster CA.
    client_cert: bool = setting(True, "With --tls, do not require clients to present a certificate.", option="no-client-cert")
    insecure: bool = setting(False, "Allow plaintext on non-loopback addresses (no TLS).")

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
        for name, described in SETTINGS.items():
            described.check(getattr(self, name))
        if self.max_frame_size < self.max_document_size + 64 * 1024:
            raise ConfigError("--max-frame-size must exceed --max-document-size by at least 64 KiB")
        if self.max_peer_in_flight < self.max_in_flight:
            raise ConfigError("--max-peer-in-flight must be at least --max-in-flight")
        if self.idle_timeout < 3 * self.heartbeat_interval:
            # Peers keep their connections up with heartbeats; those must not look idle.
            raise ConfigError("--idle-timeout must be at least 3 times --heartbeat-interval")
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

    def advertised_address(self):
        """The address other hosts and clients should use to reach this node."""
        return self.advertise or endpoint_address(self.listen)


def _named(config_field):
    described = config_field.metadata["setting"]
    default = None if config_field.default is MISSING else config_field.default
    return replace(described, option=described.option or config_field.name.replace("_", "-"), default=default)


#: ``{NodeConfig field name: Setting}``, in the order of the fields (and of ``--help``).
SETTINGS = {config_field.name: _named(config_field) for config_field in fields(NodeConfig)}
