"""The ``nodedb`` command against a real node, as a new user meets it (DESIGN section 2).

Every error case also checks the contract's "one clear line on stderr, non-zero exit, never a
traceback".
"""

import json
import re

import pytest

from .harness import assert_one_line_error, free_port, next_loopback, run_cli, child_env

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def node(module_processes):
    return module_processes.start_node("cli")


@pytest.fixture
def cli(node):
    """``cli(*args)`` runs ``python -m nodedb --connect NODE args...``."""

    def cli(*args, **kwargs):
        kwargs.setdefault("connect", node.address)
        return run_cli(*args, **kwargs)

    return cli


def ok(result):
    """*result* succeeded with nothing on stderr; :return: its stdout lines."""
    assert result.returncode == 0, str(result)
    assert "Traceback" not in result.stderr, str(result)
    return result.stdout_lines


def test_insert_get_round_trip(cli):
    doc = {"name": "ada", "age": 36, "tags": ["math", "engines"], "address": {"city": "London"}, "score": 1.5, "ok": True, "none": None}
    [line] = ok(cli("insert", "user", json.dumps(doc)))
    assert re.fullmatch(r"[0-9]+", line), line
    element_id = int(line)

    [printed] = ok(cli("get", "user", str(element_id)))
    assert json.loads(printed) == doc

    [printed] = ok(cli("--json", "get", "user", str(element_id)))
    assert json.loads(printed) == {"_id": element_id, "_version": json.loads(printed)["_version"], **doc}
    assert isinstance(json.loads(printed)["_version"], int)

    [printed] = ok(cli("--json", "insert", "user", '{"name": "grace"}'))
    second = json.loads(printed)["id"]
    assert isinstance(second, int) and second != element_id
    [printed] = ok(cli("get", "user", str(second)))
    assert json.loads(printed) == {"name": "grace"}


def test_insert_near_puts_the_element_in_the_same_partition(cli):
    first = int(ok(cli("insert", "family", '{"role": "parent"}'))[0])
    # Enough other inserts in between would move plain inserts to another partition; --near
    # must not depend on that.
    [child] = ok(cli("insert", "family", '{"role": "child"}', "--near", str(first)))
    assert int(child) >> 48 == first >> 48 and int(child) != first
    assert json.loads(ok(cli("get", "family", child))[0]) == {"role": "child"}
    assert_one_line_error(cli("insert", "family", "{}", "--near", "x"), code=2)


def test_bytes_print_as_base64(cli, node):
    with node.client() as client:
        [element_id] = client.insert_many("binary", [{"blob": b"\x00\x01\xfe", "text": "t"}])
    assert json.loads(ok(cli("get", "binary", str(element_id)))[0]) == {"blob": "AAH+", "text": "t"}


def test_python_dash_m_nodedb_cli_works_too(cli):
    [line] = ok(cli("insert", "user_m", '{"n": 1}', module="nodedb.cli"))
    [printed] = ok(cli("get", "user_m", line, module="nodedb.cli"))
    assert json.loads(printed) == {"n": 1}


def test_update_with_if_version(cli):
    [element_id] = ok(cli("insert", "account", '{"balance": 10}'))
    version = json.loads(ok(cli("--json", "get", "account", element_id))[0])["_version"]

    [new_version] = ok(cli("update", "account", element_id, '{"balance": 20}', "--if-version", str(version)))
    assert re.fullmatch(r"[0-9]+", new_version) and int(new_version) > version
    got = json.loads(ok(cli("--json", "get", "account", element_id))[0])
    assert got == {"_id": int(element_id), "_version": int(new_version), "balance": 20}

    # The old version no longer matches: exit 1, one line, nothing changed.
    stale = cli("update", "account", element_id, '{"balance": 999}', "--if-version", str(version))
    assert_one_line_error(stale, code=1, contains=["Conflict"])
    assert json.loads(ok(cli("get", "account", element_id))[0]) == {"balance": 20}

    [printed] = ok(cli("--json", "update", "account", element_id, '{"balance": 30}'))
    assert json.loads(printed)["version"] > int(new_version)
    assert json.loads(ok(cli("get", "account", element_id))[0]) == {"balance": 30}


def test_delete_and_missing_elements(cli):
    [element_id] = ok(cli("insert", "doomed", '{"x": 1}'))
    version = json.loads(ok(cli("--json", "get", "doomed", element_id))[0])["_version"]

    assert_one_line_error(cli("delete", "doomed", element_id, "--if-version", str(version + 100)), code=1, contains=["Conflict"])
    assert json.loads(ok(cli("get", "doomed", element_id))[0]) == {"x": 1}

    [deleted] = ok(cli("delete", "doomed", element_id, "--if-version", str(version)))
    assert int(deleted) > version

    message = assert_one_line_error(cli("get", "doomed", element_id), code=1, contains=["NotFound"])
    assert element_id in message
    assert_one_line_error(cli("delete", "doomed", element_id), code=1, contains=["NotFound"])
    assert_one_line_error(cli("update", "doomed", element_id, "{}"), code=1, contains=["NotFound"])
    # Never inserted at all, in a type that exists and in one that does not.
    assert_one_line_error(cli("get", "doomed", str(int(element_id) + 12345)), code=1, contains=["NotFound"])
    assert_one_line_error(cli("get", "never_written", "1"), code=1, contains=["NotFound"])


@pytest.fixture(scope="module")
def people(node):
    """Elements of type ``person`` (inserted over the wire), as ``{id: doc}``."""
    docs = [
        {"name": "ada", "age": 36},
        {"name": "30", "age": 30},  # a name that looks like a number
        {"name": "bob", "age": 30},
        {"name": "cy", "age": "30"},  # an age that is text
        {"name": "dee", "age": 25},
        {"name": "eve", "age": 41},
        {"name": "fay"},  # no age at all
        {"name": "gus", "age": 29.5},
    ]
    with node.client() as client:
        ids = client.insert_many("person", docs)
    return dict(zip(ids, docs))


def scan(cli, *args):
    """The documents ``nodedb scan person ARGS`` prints, checking the form of each line."""
    lines = ok(cli("scan", "person", *args))
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        assert isinstance(doc.pop("_id"), int) and isinstance(doc.pop("_version"), int), lines
    ids = [json.loads(line)["_id"] for line in lines]
    assert ids == sorted(ids), "scan must print in id order"
    return ids, docs


def test_scan_prints_every_document_in_id_order(cli, people):
    ids, docs = scan(cli)
    assert ids == sorted(people)
    assert docs == [people[i] for i in sorted(people)]


@pytest.mark.parametrize(
    "where, expected",
    [
        (["age=30"], lambda d: d.get("age") == 30 and type(d["age"]) is int),
        (['age="30"'], lambda d: d.get("age") == "30"),
        (['name="30"'], lambda d: d["name"] == "30"),
        (["name=30"], lambda d: False),  # 30 is a number here, and no name is a number
        (["name=ada"], lambda d: d["name"] == "ada"),  # not JSON: read as text
        (["age<30"], lambda d: type(d.get("age")) in (int, float) and d["age"] < 30),
        (["age<=30"], lambda d: type(d.get("age")) in (int, float) and d["age"] <= 30),
        (["age>30"], lambda d: type(d.get("age")) in (int, float) and d["age"] > 30),
        (["age>=30"], lambda d: type(d.get("age")) in (int, float) and d["age"] >= 30),
        (["age in [25, 41]"], lambda d: d.get("age") in (25, 41)),
        (['name in ["ada", "bob", "zed"]'], lambda d: d["name"] in ("ada", "bob")),
        (["age>=29", "age<36"], lambda d: type(d.get("age")) in (int, float) and 29 <= d["age"] < 36),
        (["age=30", "name=bob"], lambda d: d["name"] == "bob"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_scan_where(cli, people, where, expected):
    arguments = []
    for clause in where:
        arguments += ["--where", clause]
    ids, docs = scan(cli, *arguments)
    wanted = [i for i in sorted(people) if expected(people[i])]
    assert ids == wanted, (where, [people[i] for i in ids])
    assert docs == [people[i] for i in wanted]


def test_scan_limit(cli, people):
    ids, docs = scan(cli, "--limit", "3")
    assert ids == sorted(people)[:3]
    ids, _docs = scan(cli, "--where", "age>=30", "--limit", "2")
    assert ids == [i for i in sorted(people) if type(people[i].get("age")) is int and people[i]["age"] >= 30][:2]
    ids, _docs = scan(cli, "--limit", "1000")
    assert ids == sorted(people)


def test_status_prints_a_table_with_the_host(cli, node):
    health, summary, *lines = ok(cli("status"))
    # The cluster's health first: a lone node is healthy but can lose nothing.
    assert health == "healthy: can lose 0 hosts; 64/64 partitions fully replicated"
    # Then a line about Voting: this lone node leads it and is its only voter.
    assert summary.startswith("cluster ") and f"leader {node.host_id}" in summary and f"voters {node.host_id}" in summary
    header = lines[0].split()
    assert header[:3] == ["ID", "ADDRESS", "STATUS"], lines
    assert "PARTITIONS" in header and "UNRELIABILITY" in header, lines
    rows = [line.split() for line in lines[1:]]
    mine = [row for row in rows if row[0] == node.host_id]
    assert len(mine) == 1, lines
    assert mine[0][1] == node.address and mine[0][2] == "write", lines

    status = json.loads("\n".join(ok(cli("--json", "status"))))
    assert status["host"]["id"] == node.host_id
    assert status["host"]["address"] == node.address


def test_transaction_file_is_all_or_nothing(cli, node, tmp_path):
    [keep_id] = ok(cli("insert", "ledger", '{"total": 1}'))
    [drop_id] = ok(cli("insert", "ledger", '{"total": 2}'))
    keep_version = json.loads(ok(cli("--json", "get", "ledger", keep_id))[0])["_version"]

    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            [
                {"op": "insert", "type": "ledger", "doc": {"total": 3, "batch": "good"}},
                {"op": "update", "type": "ledger", "id": int(keep_id), "doc": {"total": 10}, "if_version": keep_version},
                {"op": "delete", "type": "ledger", "id": int(drop_id)},
            ]
        )
    )
    inserted, updated, deleted = ok(cli("transaction", str(good)))
    assert json.loads(ok(cli("get", "ledger", inserted))[0]) == {"total": 3, "batch": "good"}
    assert json.loads(ok(cli("--json", "get", "ledger", keep_id))[0]) == {"_id": int(keep_id), "_version": int(updated), "total": 10}
    assert_one_line_error(cli("get", "ledger", drop_id), code=1, contains=["NotFound"])
    assert int(deleted) > 0

    before = ok(cli("scan", "ledger"))
    # The second operation is at a stale version: nothing of the file may be applied.
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"op": "insert", "type": "ledger", "doc": {"total": 4, "batch": "bad"}},
                {"op": "update", "type": "ledger", "id": int(keep_id), "doc": {"total": 99}, "if_version": keep_version},
                {"op": "insert", "type": "ledger", "doc": {"total": 5, "batch": "bad"}},
            ]
        )
    )
    assert_one_line_error(cli("transaction", str(bad)), code=1, contains=["Conflict"])
    assert ok(cli("scan", "ledger")) == before
    assert ok(cli("scan", "ledger", "--where", "batch=bad")) == []

    # A missing element in the middle: the same, with NotFound.
    missing = tmp_path / "missing.json"
    missing.write_text(
        json.dumps(
            [
                {"op": "insert", "type": "ledger", "doc": {"batch": "missing"}},
                {"op": "delete", "type": "ledger", "id": int(drop_id)},
            ]
        )
    )
    assert_one_line_error(cli("transaction", str(missing)), code=1, contains=["NotFound"])
    assert ok(cli("scan", "ledger")) == before

    # From standard input, with --json.
    [printed] = ok(cli("--json", "transaction", "-", input=json.dumps([{"op": "insert", "type": "ledger", "doc": {"batch": "stdin"}}])))
    [new_id] = json.loads(printed)
    assert json.loads(ok(cli("get", "ledger", str(new_id)))[0]) == {"batch": "stdin"}


def test_nodedb_connect_environment_variable(node):
    dead = f"{node.host}:{free_port(node.host)}"
    # The variable alone.
    [line] = ok(run_cli("insert", "env", '{"via": "env"}', env=child_env(NODEDB_CONNECT=node.address)))
    assert json.loads(ok(run_cli("get", "env", line, env=child_env(NODEDB_CONNECT=node.address)))[0]) == {"via": "env"}
    # Comma-separated: the dead address is skipped.
    assert ok(run_cli("get", "env", line, env=child_env(NODEDB_CONNECT=f"{dead}, {node.address}")))
    # --connect wins over the variable.
    assert ok(run_cli("get", "env", line, connect=node.address, env=child_env(NODEDB_CONNECT=dead)))
    # Only the dead address: Unavailable, even though a live node exists.
    assert_one_line_error(run_cli("get", "env", line, env=child_env(NODEDB_CONNECT=dead)), code=1, contains=["Unavailable"])


def test_dead_address_is_one_line_unavailable():
    host = next_loopback()
    dead = f"{host}:{free_port(host)}"
    result = run_cli("--timeout", "5", "status", connect=dead)
    line = assert_one_line_error(result, code=1, contains=["Unavailable"])
    assert dead in line


@pytest.mark.parametrize(
    "args, code, contains",
    [
        (["insert", "user", "{bad json"], 2, ["JSON"]),
        (["insert", "user", "[1, 2]"], 2, ["object"]),
        (["insert", "user", ""], 2, []),
        (["update", "user", "1", "not json"], 2, ["JSON"]),
        (["insert", "User", "{}"], 1, ["InvalidRequest"]),
        (["insert", "no-dashes", "{}"], 1, ["InvalidRequest"]),
        (["insert", "x" * 65, "{}"], 1, ["InvalidRequest"]),
        (["get", "user", "abc"], 2, ["abc"]),
        (["get", "user", "-1"], 2, []),
        (["get", "user", str(1 << 64)], 2, []),
        (["get", "user", "1.5"], 2, []),
        (["update", "user", "1", "{}", "--if-version", "x"], 2, []),
        (["delete", "user", "1", "--if-version", "-3"], 2, []),
        (["get", "user"], 2, []),
        (["frobnicate"], 2, []),
        ([], 2, []),
        (["scan", "user", "--where", "age"], 2, ["age"]),
        (["scan", "user", "--where", "age in 3"], 2, ["in"]),
        (["scan", "user", "--limit", "0"], 2, []),
        (["scan", "user", "--limit", "many"], 2, []),
        (["scan", "user", "--cursor", "not-a-cursor"], 1, ["InvalidRequest"]),
        (["--timeout", "0", "status"], 2, []),
        (["transaction", "/nonexistent/ops.json"], 2, ["/nonexistent/ops.json"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_malformed_arguments_are_one_line(cli, args, code, contains):
    assert_one_line_error(cli(*args), code=code, contains=contains)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"op": "insert"}',  # not a list
        '[{"op": "upsert", "type": "user", "doc": {}}]',
        '[{"op": "insert", "type": "user", "doc": {}, "colour": "red"}]',
        '[{"op": "insert", "type": "user", "doc": [1]}]',
        '[{"op": "update", "type": "user", "id": "one", "doc": {}}]',
    ],
)
def test_malformed_transaction_files_are_one_line(cli, node, tmp_path, content):
    path = tmp_path / "ops.json"
    path.write_text(content)
    with node.client() as client:
        before = client.scan_all("user")
    assert_one_line_error(cli("transaction", str(path)))
    with node.client() as client:
        assert client.scan_all("user") == before
