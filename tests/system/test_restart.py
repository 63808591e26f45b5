"""A clean stop (SIGTERM) and a restart on the same data directory keep everything: host id,
cluster, data and versions (DESIGN section 2: "A DIR that already holds a node: restart it")."""

import signal

import pytest

from nodedb.ids import IdLayout

from .harness import WireError

pytestmark = pytest.mark.system

#: twistd ends a process that a signal stopped by sending itself that signal again once the
#: reactor has shut down cleanly, so the status is "killed by SIGTERM" rather than 0; see
#: test_sigterm_exit_status_is_0 for the contract's 0.
CLEAN_SIGTERM = (0, -signal.SIGTERM)


def test_sigterm_exits_0_and_restart_keeps_host_data_and_versions(processes):
    node = processes.start_node("steady")
    first_status = node.admin_status()
    with node.client() as client:
        ids = client.insert_many("thing", [{"n": n} for n in range(30)])
        client.pipeline([("update", {"type": "thing", "key": i, "doc": {"n": -1}}) for i in ids[:10]])
        client.call("delete", type="thing", key=ids[-1])
        other = client.insert_many("other_type", [{"k": "v"}])
        before = {record_type: client.scan_all(record_type) for record_type in ("thing", "other_type")}
        hello_before = client.server
    assert len(before["thing"]) == 29

    mark = node.log_mark()
    assert node.stop() in CLEAN_SIGTERM, node.describe()
    log = node.log_since(mark)
    assert "Server Shut Down" in log, node.describe()
    assert node.problems() == [], node.describe()

    node.start()
    assert f"restarting node {first_status['host']['id']}" in node.log(), node.describe()
    status = node.admin_status()
    assert status["host"]["id"] == first_status["host"]["id"] == node.host_id
    assert status["host"]["address"] == node.address
    with node.client() as client:
        assert client.server["host"] == hello_before["host"]
        assert client.server["cluster"] == hello_before["cluster"]
        after = {record_type: client.scan_all(record_type) for record_type in ("thing", "other_type")}
        assert after == before  # same ids, documents and versions
        with pytest.raises(WireError) as missing:
            client.get("thing", ids[-1])
        assert missing.value.type == "NotFound"

        # Versions still work for compare-and-set, and keep growing.
        element_id, doc, version = before["thing"][0]
        with pytest.raises(WireError) as stale:
            client.call("update", type="thing", key=element_id, doc={"n": 99}, if_version=version - 1)
        assert stale.value.type == "Conflict"
        new_version = client.call("update", type="thing", key=element_id, doc={"n": 99}, if_version=version)
        assert new_version > max(v for _i, _d, v in before["thing"] if IdLayout().partition_of(_i) == IdLayout().partition_of(element_id))

        # New ids are new.
        fresh = client.insert_many("thing", [{"n": "fresh"}] * 5)
        assert not set(fresh) & set(ids + other)
        layout = IdLayout()
        for new_id in fresh:
            same_partition = [i for i in ids if layout.partition_of(i) == layout.partition_of(new_id)]
            assert all(new_id > old for old in same_partition)

    # A second clean cycle: still a clean exit, still the same host.
    assert node.stop() in CLEAN_SIGTERM, node.describe()
    node.start()
    assert node.admin_status()["host"]["id"] == first_status["host"]["id"]
    assert node.problems() == [], node.describe()


def test_sigterm_is_a_clean_shutdown(processes):
    """twistd ends a clean shutdown by re-raising the signal that asked for it
    (``twisted.application.app._exitWithSignal``), so a supervisor sees "killed by SIGTERM",
    which systemd counts as a clean stop; docs/running.md says so."""
    node = processes.start_node("sigterm", admin=False)
    status = node.stop()
    assert "Server Shut Down" in node.log(), node.describe()
    assert status == -signal.SIGTERM
    assert not node.problems(), node.describe()
