"""Prometheus metrics of one node, in a registry of its own (so nodes in one process do not mix)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class NodeMetrics:
    """Request counts and latencies per operation, commit batch sizes, database size."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "nodedb_requests", "Requests served, by operation and outcome", ["op", "outcome"], registry=self.registry
        )
        self._latency = Histogram(
            "nodedb_request_seconds",
            "Time to serve a request, by operation",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "nodedb_commit_batch_size",
            "Commit calls carried by each synced storage transaction",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._children = {}

    def observe(self, op, outcome, seconds):
        """Count one request of *op* that ended with *outcome* after *seconds*."""
        key = (op, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._requests.labels(op, outcome), self._latency.labels(op))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size):
        self._batch.observe(size)

    def watch_storage(self, storage):
        """Export the size and free space *storage* reports."""
        size = Gauge("nodedb_database_bytes", "Space used by the local store", registry=self.registry)
        size.set_function(lambda: storage.stats()["size_bytes"])
        free = Gauge("nodedb_free_bytes", "Space left for the local store", registry=self.registry)
        free.set_function(lambda: storage.stats()["free_bytes"])

    def render(self):
        """:return: the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
