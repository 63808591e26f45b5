"""The admin HTTP site: ``/status`` and ``/health`` (JSON), ``/metrics`` (Prometheus text) and
``/`` (a page).

It is read-only and, like the request port, refuses to listen beyond loopback without TLS
unless ``--insecure`` is given.
"""

import html
import json

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import Site

from nodedb.health import STARTING, shown_status, summary


class _Status(Resource):
    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.node.status(), indent=2).encode("utf-8") + b"\n"


class _Health(Resource):
    """200 when the cluster is healthy as this host sees it, 503 otherwise: for load
    balancers and scripts (see nodedb.health)."""

    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        health = self.node.status()["health"] or {"healthy": False, "problems": STARTING}
        request.setResponseCode(200 if health["healthy"] else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(health, indent=2).encode("utf-8") + b"\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>nodedb {host_id}</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
th{{background:#eee}}.down{{color:#b00;font-weight:bold}}.unhealthy{{color:#b00}}</style></head>
<body><h1>nodedb</h1>
<p>Cluster <code>{cluster_id}</code>, {partitions} partitions, replication factor {replicas}.
This is host <code>{host_id}</code>. Machine-readable: <a href="/status">/status</a>,
<a href="/health">/health</a>, <a href="/metrics">/metrics</a>.</p>
<p class="{health_class}"><a href="/health">{health}</a></p>
<table><tr><th>host</th><th>address</th><th>status</th><th>partitions</th>
<th>unreliability</th><th>available</th><th>distance</th><th>coordinates (x, y, height)</th>
<th>free</th></tr>
{rows}
</table></body></html>
"""


def _size(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _coordinate(c):
    return f"{c['x'] * 1000:.1f}, {c['y'] * 1000:.1f}, {c['height'] * 1000:.1f} ms"


class _Page(Resource):
    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        status = self.node.status()
        rows = "\n".join(
            ("<tr>" if host["available"] else '<tr class="down">')
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    host["id"],
                    host["address"],
                    shown_status(host),
                    host["partition_count"],
                    host["unreliability"],
                    "yes" if host["available"] else "no",
                    "-" if host["distance_ms"] is None else f"{host['distance_ms']:.1f} ms",
                    _coordinate(host["coordinate"]),
                    _size(host["free_bytes"]),
                )
            )
            + "</tr>"
            for host in status["hosts"]
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        cluster = status["cluster"]
        return _PAGE.format(
            host_id=html.escape(status["host"]["id"]),
            cluster_id=html.escape(cluster["id"]),
            partitions=cluster["partitions"],
            replicas=cluster["replicas"],
            rows=rows,
            health=html.escape(summary(status["health"])),
            health_class="healthy" if status["health"] and status["health"]["healthy"] else "unhealthy",
        ).encode("utf-8")


class _Root(Resource):
    def getChild(self, path, request):
        return pages.notFound()


def make_admin_site(node):
    """:return: the twisted.web Site serving *node*'s admin pages."""
    root = _Root()
    root.putChild(b"", _Page(node))
    root.putChild(b"status", _Status(node))
    root.putChild(b"health", _Health(node))
    root.putChild(b"metrics", _Metrics(node.metrics))
    site = Site(root)
    site.displayTracebacks = False
    return site


class AdminService(Service):
    """Serves *site* on *endpoint* once :meth:`listen` is called. Unlike Twisted's
    ``StreamServerEndpointService``, a port that cannot be bound fails :meth:`listen` (so the
    node does not start) rather than only being logged."""

    def __init__(self, endpoint, site):
        self.endpoint = endpoint
        self.site = site
        self._port = None

    @classmethod
    def for_node(cls, node):
        """The admin site of *node* on the endpoint its configuration names (with TLS when the
        node has it)."""
        config = node.config
        endpoint = serverFromString(node.reactor, config.admin)
        tls = config.tls_context()
        if tls is not None:
            endpoint = tls.wrap_server(endpoint, config.client_cert)
        return cls(endpoint, make_admin_site(node))

    def listen(self):
        """:return: a Deferred that fires once the site listens."""

        def listening(port):
            self._port = port
            return port

        return self.endpoint.listen(self.site).addCallback(listening)

    def stopService(self):
        super().stopService()
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None
