"""Host addresses as nodedb writes them, ``host:port`` or ``[v6]:port``: one way to read and
write them for the wire, the configuration and the security checks alike."""

from nodedb.errors import InvalidRequest


def format_address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text):
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``.

    :raise InvalidRequest: if *text* is not of that form.
    """
    if type(text) is not str:
        raise InvalidRequest(f"not an address: {text!r}")
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"not a HOST:PORT address: {text!r}")
    return host, int(port)
