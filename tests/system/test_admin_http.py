"""The admin HTTP site of a real node: /status (JSON), /metrics (Prometheus text), / (HTML)."""

import html

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import WireError

pytestmark = pytest.mark.system

INSERTS = 25
GETS = 7
MISSING_GETS = 3


@pytest.fixture(scope="module")
def node(module_processes):
    return module_processes.start_node("watched")


@pytest.fixture(scope="module")
def traffic(node):
    """What the node was asked, once: its status before, then inserts and gets (some missing)."""
    status_before = node.admin_status()
    with node.client() as client:
        ids = client.insert_many("metered", [{"n": n} for n in range(INSERTS)])
        for element_id in ids[:GETS]:
            client.get("metered", element_id)
        for n in range(MISSING_GETS):
            with pytest.raises(WireError):
                client.get("metered", ids[-1] + 1000 + n)
    return {"ids": ids, "status_before": status_before}


def test_status_describes_this_host(node, traffic):
    before = traffic["status_before"]["host"]
    assert before["last_commit_ids"] == {}, "a new node has committed nothing"

    status = node.admin_status()
    host = status["host"]
    assert host["id"] == node.host_id
    assert host["address"] == node.address
    assert host["status"] == "write"
    assert host["partitions"] == [[0, 63]]  # the default 64 partitions, all on this lone host
    assert isinstance(host["free_bytes"], int) and host["free_bytes"] > 0
    assert isinstance(host["size_bytes"], int) and host["size_bytes"] > 0
    # Every insert is one commit, in the partitions the ids name.
    commits = host["last_commit_ids"]
    assert commits and sum(commits.values()) == INSERTS, commits
    partitions = {str(element_id >> 48) for element_id in traffic["ids"]}
    assert set(commits) == partitions
    # The contract's part: this host, then every host it knows.
    assert [h["id"] for h in status["hosts"]] == [node.host_id]
    assert status["hosts"][0]["address"] == node.address
    assert status["hosts"][0]["status"] == "write"


def _samples(body):
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_requests_batches_and_size(node, traffic):
    status, content_type, body = node.http_get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain"), content_type
    samples = _samples(body)

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("nodedb_requests_total", op="insert", outcome="ok") == INSERTS
    assert value("nodedb_requests_total", op="get", outcome="ok") == GETS
    assert value("nodedb_requests_total", op="get", outcome="NotFound") == MISSING_GETS
    assert value("nodedb_request_seconds_count", op="insert") == INSERTS
    assert value("nodedb_request_seconds_count", op="get") == GETS + MISSING_GETS
    assert value("nodedb_request_seconds_bucket", op="insert", le="+Inf") == INSERTS
    assert value("nodedb_request_seconds_sum", op="insert") > 0
    # Group commit: the batches together carry every insert (and the bootstrap's own writes).
    batches = value("nodedb_commit_batch_size_count")
    assert batches is not None and 1 <= batches
    assert value("nodedb_commit_batch_size_sum") >= INSERTS
    assert value("nodedb_database_bytes") > 0


def test_dashboard_is_html(node, traffic):
    status, content_type, body = node.http_get("/")
    assert status == 200
    assert content_type.startswith("text/html"), content_type
    page = body.decode("utf-8")
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "</html>" in page
    assert html.escape(node.host_id) in page
    assert node.address in page
    assert 'href="/status"' in page and 'href="/metrics"' in page


def test_unknown_path_is_404_without_traceback(node):
    mark = node.log_mark()
    status, _content_type, body = node.http_get("/no/such/page")
    assert status == 404
    assert b"Traceback" not in body
    assert node.problems(since=mark) == []
