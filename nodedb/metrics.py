"""Prometheus metrics of one node, in a registry of its own (so nodes in one process do not mix).

Requests are counted on the hot path with plain integer arithmetic and turned into Prometheus
families only when ``/metrics`` is scraped: a prometheus_client ``observe()`` per request
(locks, label lookups) would cost more than a get from LMDB.
"""

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _Latencies:
    """A histogram of one operation's latencies: per-bucket counts and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class _RequestCollector:
    """Exports the request counts and latencies kept by :class:`NodeMetrics`."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        requests = CounterMetricFamily("nodedb_requests", "Requests served, by operation and outcome", labels=["op", "outcome"])
        for (op, outcome), count in sorted(self.metrics.requests.items()):
            requests.add_metric([op, outcome], count)
        yield requests
        latency = HistogramMetricFamily("nodedb_request_seconds", "Time to serve a request, by operation", labels=["op"])
        for op, histogram in sorted(self.metrics.latencies.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(floatToGoString, LATENCY_BUCKETS), "+Inf"), histogram.counts):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([op], buckets, histogram.total)
        yield latency


class _ConnectionCollector:
    """Exports the connection counts kept by a :class:`nodedb.wire.limits.ConnectionGuard`."""

    def __init__(self, guard):
        self.guard = guard

    def collect(self):
        guard = self.guard
        status = guard.status()
        open_ = GaugeMetricFamily("nodedb_connections", "Connections open to this node's port, by role", labels=["role"])
        for role, key in (("client", "clients"), ("peer", "peers"), ("handshaking", "handshaking")):
            open_.add_metric([role], status[key])
        yield open_
        refused = CounterMetricFamily(
            "nodedb_connections_refused", "Connections refused at once, by the limit that refused them", labels=["limit"]
        )
        for limit, count in sorted(guard.refused.items()):
            refused.add_metric([limit], count)
        yield refused
        closed = CounterMetricFamily(
            "nodedb_connections_closed", "Connections closed by a timeout, by timeout", labels=["reason"]
        )
        for reason, count in sorted(guard.closed.items()):
            closed.add_metric([reason], count)
        yield closed
        yield CounterMetricFamily(
            "nodedb_connections_held",
            "Times a connection reached its in-flight limit and the node stopped reading from it",
            value=guard.held,
        )


class NodeMetrics:
    """Request counts and latencies per operation, commit batch sizes, database size."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = {}  # (op, outcome) -> count
        self.latencies = {}  # op -> _Latencies
        self.registry.register(_RequestCollector(self))
        self._batch = Histogram(
            "nodedb_commit_batch_size",
            "Commit calls carried by each synced storage transaction",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe(self, op, outcome, seconds):
        """Count one request of *op* that ended with *outcome* after *seconds*."""
        key = (op, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latencies.get(op)
        if histogram is None:
            histogram = self.latencies[op] = _Latencies()
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def observe_batch(self, size):
        self._batch.observe(size)

    def watch_storage(self, storage):
        """Export the size and free space *storage* reports."""
        size = Gauge("nodedb_database_bytes", "Space used by the local store", registry=self.registry)
        size.set_function(lambda: storage.stats()["size_bytes"])
        free = Gauge("nodedb_free_bytes", "Space left for the local store", registry=self.registry)
        free.set_function(lambda: storage.stats()["free_bytes"])

    def watch_connections(self, guard):
        """Export the open, refused, timed-out and held connections of *guard* (a
        :class:`nodedb.wire.limits.ConnectionGuard`)."""
        self.registry.register(_ConnectionCollector(guard))

    def render(self):
        """:return: the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
