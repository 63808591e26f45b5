"""The ``nodedb`` command: argument errors, filters, and the data commands against a node on a
real loopback port (one reactor, port 0)."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor

from nodedb import cli, health
from nodedb.ids import IdAllocator, IdLayout
from nodedb.query.api import RequestAPI
from nodedb.query.local import LocalQuery
from nodedb.storage.memory import MemoryStorage
from nodedb.testing import success_result_of
from nodedb.wire.connection import ChannelFactory


class TestParseWhere:
    @pytest.mark.parametrize(
        "clauses, where",
        [
            ([], {}),
            (["age=30"], {"age": {"=": 30}}),
            (['name="30"'], {"name": {"=": "30"}}),
            (["name=ada"], {"name": {"=": "ada"}}),
            (["ok=true", "gone=null"], {"ok": {"=": True}, "gone": {"=": None}}),
            (["age>=18", "age<65"], {"age": {">=": 18, "<": 65}}),
            (["x<=1.5", "y>-2", "z<a"], {"x": {"<=": 1.5}, "y": {">": -2}, "z": {"<": "a"}}),
            (['tag in ["a", "b"]'], {"tag": {"in": ["a", "b"]}}),
            (["n in [1,2]", "n>0"], {"n": {"in": [1, 2], ">": 0}}),
            (["a=b=c"], {"a": {"=": "b=c"}}),
            (["a="], {"a": {"=": ""}}),
            (["a = 1"], {"a": {"=": 1}}),
            (['doc={"k": 1}'], {"doc": {"=": {"k": 1}}}),
        ],
    )
    def test_clauses(self, clauses, where):
        assert cli.parse_where(clauses) == where

    @pytest.mark.parametrize(
        "clauses, message",
        [
            (["age"], "use FIELD=VALUE"),
            (["=5"], "use FIELD=VALUE"),
            ([">5"], "use FIELD=VALUE"),
            (["tag in 5"], "'in' takes a JSON list"),
            (["tag in notjson"], "'in' takes a JSON list"),
            (["a=1", "a=2"], "a = is given twice"),
            (["a>1", "a>2"], "a > is given twice"),
        ],
    )
    def test_malformed_clauses(self, clauses, message):
        with pytest.raises(cli.UsageError, match=message):
            cli.parse_where(clauses)


class TestArgumentErrors:
    @pytest.mark.parametrize(
        "argv, message",
        [
            ([], "the following arguments are required: COMMAND"),
            (["frob"], "invalid choice: 'frob'"),
            (["get", "user"], "the following arguments are required: id"),
            (["get", "user", "abc"], "not an element id: 'abc'"),
            (["get", "user", "-1"], "not an element id: '-1'"),
            (["get", "user", str(2**64)], "not an element id"),
            (["delete", "user", "1", "--if-version", "x"], "not a version: 'x'"),
            (["update", "user", "1", "{}", "--if-version", "-3"], "not a version: '-3'"),
            (["insert", "user"], "the following arguments are required: JSON"),
            (["insert", "user", "{}", "--near", "1.5"], "not an element id"),
            (["scan", "user", "--limit", "0"], "not a positive integer: '0'"),
            (["--timeout", "0", "status"], "--timeout must be positive"),
            (["--timeout", "soon", "status"], "invalid float value"),
            (["status", "--bogus"], "unrecognized arguments: --bogus"),
            (["status", "--wait", "foo"], "argument --wait: invalid choice: 'foo'"),
            (["status", "--wait", "healthy", "--timeout", "-5"], "--timeout must be positive"),
            (["insert", "user", "{bad"], "the document is not valid JSON"),
            (["insert", "user", "[1, 2]"], "the document must be a JSON object"),
            (["update", "user", "5", "3"], "the document must be a JSON object"),
            (["scan", "user", "--where", "age"], "--where 'age': use FIELD=VALUE"),
            (["scan", "user", "--where", "a=1", "--where", "a=2"], "given twice"),
            (["recover"], "writes only those hosts had are lost, and they must be wiped before they join again: add --force"),
            (["recover", "--force", "now"], "unrecognized arguments: now"),
        ],
    )
    def test_a_malformed_command_line_exits_2_with_one_line(self, capsys, argv, message):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert err.startswith("nodedb")
        assert message in err

    def test_help_exits_0(self, capsys):
        with pytest.raises(SystemExit) as info:
            cli.main(["--help"])
        assert info.value.code == 0
        assert "insert" in capsys.readouterr().out

    def test_addresses_come_from_connect_then_the_environment(self, monkeypatch):
        parser = cli.build_parser()
        monkeypatch.delenv("NODEDB_CONNECT", raising=False)
        assert cli._addresses(parser.parse_args(["status"])) == ["127.0.0.1:7400"]
        monkeypatch.setenv("NODEDB_CONNECT", " 10.0.0.1:7400, ,10.0.0.2:7401 ")
        assert cli._addresses(parser.parse_args(["status"])) == ["10.0.0.1:7400", "10.0.0.2:7401"]
        assert cli._addresses(parser.parse_args(["--connect", "a:1", "--connect", "b:2", "status"])) == ["a:1", "b:2"]


# -- data commands against a node on loopback -----------------------------------------------


HEALTHY = {
    "healthy": True,
    "problems": ["partition 1 is under-replicated (1 of 2 copies live and caught up)"],
    "partitions": 2,
    "under_replicated": {"count": 1, "first": [1]},
    "fault_tolerance": 0,
}
UNHEALTHY = {"healthy": False, "problems": ["no Voting leader", "partition 1 has no live primary"], "fault_tolerance": 0}


@pytest.fixture
def status_document():
    """What the node of :func:`node_address` answers to ``status``: change it at will."""
    return {
        "host": {"id": "abc"},
        "hosts": [
            {"id": "abc", "address": "127.0.0.1:1", "status": "write", "partitions": [[0, 1]], "unreliability": 0.0},
            {"id": "def", "address": "127.0.0.1:2", "status": "read", "partitions": [[1, 1]], "unreliability": 1.0, "available": False},
        ],
        "health": HEALTHY,
    }


def serve(status_document, port=0):
    """A node answering on loopback *port*; :return: the listening port."""
    storage = MemoryStorage()
    success_result_of(storage.open())
    query = LocalQuery(storage, IdAllocator(IdLayout(), {0: 0, 1: 0}), global_reactor, status=lambda: status_document)
    api = RequestAPI(query, lambda: {"version": 1, "host": "abc"}, global_reactor)
    return global_reactor.listenTCP(port, ChannelFactory(api.dispatch), interface="127.0.0.1")


@pytest.fixture
def node_address(status_document):
    port = serve(status_document)
    yield f"127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


async def run(address, *argv):
    """Run one command; :return: its exit status (0 when it finished normally)."""
    args = cli.build_parser().parse_args(["--connect", address, "--timeout", "5", *argv])
    try:
        await cli._finish(global_reactor, args)
    except SystemExit as e:
        return e.code
    return 0


@pytest_twisted.ensureDeferred
async def test_data_commands(node_address, capsys, tmp_path):
    assert await run(node_address, "insert", "user", '{"name": "ada", "age": 36}') == 0
    element = int(capsys.readouterr().out)
    assert await run(node_address, "get", "user", str(element)) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "ada", "age": 36}
    assert await run(node_address, "update", "user", str(element), '{"name": "ada", "age": 37}', "--if-version", "1") == 0
    assert capsys.readouterr().out == "2\n"
    assert await run(node_address, "insert", "user", '{"name": "bob", "age": 12}', "--near", str(element)) == 0
    other = int(capsys.readouterr().out)
    assert await run(node_address, "scan", "user", "--where", "age>=18") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"_id": element, "_version": 2, "name": "ada", "age": 37}]
    assert await run(node_address, "scan", "user", "--where", "age in [12, 40]", "--where", "name<c") == 0
    assert [json.loads(line)["_id"] for line in capsys.readouterr().out.splitlines()] == [other]
    assert await run(node_address, "scan", "user", "--limit", "1") == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "more results: --cursor" in err
    cursor = err.split("--cursor ")[1].strip()
    assert await run(node_address, "scan", "user", "--cursor", cursor) == 0
    assert json.loads(capsys.readouterr().out)["_id"] == other
    assert await run(node_address, "--json", "delete", "user", str(other)) == 0
    assert json.loads(capsys.readouterr().out) == {"version": 4}

    operations = tmp_path / "ops.json"
    operations.write_text(json.dumps([{"op": "insert", "type": "order", "doc": {"u": element}}, {"op": "delete", "type": "user", "id": element}]))
    assert await run(node_address, "transaction", str(operations)) == 0
    order, version = capsys.readouterr().out.split()
    assert int(version) == 6

    assert await run(node_address, "status") == 0
    health, *table = capsys.readouterr().out.splitlines()
    assert health == "healthy: can lose 0 hosts; 1/2 partitions fully replicated"
    assert table[0].split() == [
        "ID", "ADDRESS", "STATUS", "PARTITIONS", "INACTIVE", "UNRELIABILITY", "AVAILABLE", "DISTANCE", "COORDINATES"
    ]
    status_column = table[0].index("STATUS")
    assert table[1].split() == ["abc", "127.0.0.1:1", "write", "0-1", "-", "0.00", "yes", "-", "-"]
    assert table[2][status_column:].startswith("read (down)  ")  # a dead host reads as down at a glance
    assert table[2].split()[-3:] == ["no", "-", "-"]


@pytest_twisted.ensureDeferred
async def test_user_errors_are_one_line_and_exit_1(node_address, capsys, tmp_path):
    assert await run(node_address, "get", "user", "12345") == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "nodedb: NotFound: user 12345 not found\n"
    assert await run(node_address, "insert", "user", '{"a": 1}') == 0
    element = capsys.readouterr().out.strip()
    assert await run(node_address, "update", "user", element, "{}", "--if-version", "9") == 1
    assert capsys.readouterr().err.startswith("nodedb: Conflict: ")
    assert await run(node_address, "insert", "User", "{}") == 1
    assert capsys.readouterr().err.startswith("nodedb: InvalidRequest: a record type")
    bad = tmp_path / "bad.json"
    bad.write_text('{"op": "insert"}')
    assert await run(node_address, "transaction", str(bad)) == 2
    assert "must hold a JSON list of operations" in capsys.readouterr().err
    assert await run(node_address, "transaction", str(tmp_path / "missing.json")) == 2
    assert "cannot read" in capsys.readouterr().err
    bad.write_text('[{"op": "upsert", "type": "t"}]')
    assert await run(node_address, "transaction", str(bad)) == 2
    assert "operation 0: op must be insert, update or delete" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_an_unreachable_node_exits_1(capsys):
    port = global_reactor.listenTCP(0, ChannelFactory(None), interface="127.0.0.1")
    address = f"127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    assert await run(address, "status") == 1
    err = capsys.readouterr().err
    assert err.startswith("nodedb: Unavailable: cannot reach a node") and err.count("\n") == 1


def test_the_health_line_says_what_is_wrong_or_how_much_may_fail():
    assert health.summary(HEALTHY) == "healthy: can lose 0 hosts; 1/2 partitions fully replicated"
    spare = {**HEALTHY, "fault_tolerance": 1, "under_replicated": {"count": 0, "first": []}, "partitions": 64}
    assert health.summary(spare) == "healthy: can lose 1 host; 64/64 partitions fully replicated"
    assert health.summary({**spare, "fault_tolerance": 2}).startswith("healthy: can lose 2 hosts;")
    assert health.summary(UNHEALTHY) == "unhealthy: no Voting leader; partition 1 has no live primary"
    assert health.summary(None) == "unhealthy: the node is still starting"


@pytest_twisted.ensureDeferred
async def test_status_wait_healthy_prints_the_status_once_healthy(node_address, status_document, capsys):
    status_document["health"] = UNHEALTHY
    global_reactor.callLater(0.3, status_document.update, health=HEALTHY)
    assert await run(node_address, "status", "--wait", "healthy", "--timeout", "10") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("healthy: ") and err == ""
    assert await run(node_address, "--json", "status", "--wait", "healthy") == 0
    assert json.loads(capsys.readouterr().out)["health"] == HEALTHY


@pytest_twisted.ensureDeferred
async def test_status_wait_healthy_times_out_with_the_problems_on_one_line(node_address, status_document, capsys):
    status_document["health"] = UNHEALTHY
    assert await run(node_address, "status", "--wait", "healthy", "--timeout", "0.2") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "nodedb: not healthy after 0.2 s: no Voting leader; partition 1 has no live primary\n"
    status_document["health"] = None  # still starting
    assert await run(node_address, "status", "--wait", "healthy", "--timeout", "0.2") == 1
    assert capsys.readouterr().err == "nodedb: not healthy after 0.2 s: the node is still starting\n"


@pytest_twisted.ensureDeferred
async def test_status_wait_healthy_waits_for_a_node_that_is_not_listening_yet(status_document, capsys):
    probe = global_reactor.listenTCP(0, ChannelFactory(None), interface="127.0.0.1")
    port_number = probe.getHost().port
    await probe.stopListening()
    address = f"127.0.0.1:{port_number}"
    assert await run(address, "status", "--wait", "healthy", "--timeout", "0.2") == 1
    assert capsys.readouterr().err.startswith("nodedb: not healthy after 0.2 s: Unavailable: cannot reach a node")
    ports = []
    global_reactor.callLater(0.3, lambda: ports.append(serve(status_document, port_number)))
    try:
        assert await run(address, "status", "--wait", "healthy", "--timeout", "10") == 0
        assert capsys.readouterr().out.startswith("healthy: ")
    finally:
        for port in ports:
            await port.stopListening()
