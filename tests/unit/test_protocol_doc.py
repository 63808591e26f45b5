"""docs/protocol.md describes the operations a node serves, as its RequestAPI's table has them:
the same client and peer operations, each client operation's fields with their kinds and
whether they are required, which operations refuse unknown fields, and every field a peer
operation's schema declares."""

import re
from pathlib import Path

import pytest

from nodedb.testing.cluster import SimCluster

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def _between(start, end):
    return PAGE[PAGE.index(start) : PAGE.index(end)]


CLIENT_PART = _between("\n## Operations\n", "\n### Peer operations\n")
PEER_PART = _between("\n### Peer operations\n", "\n## Errors\n")


@pytest.fixture(scope="module")
def operations():
    """``{op: Operation}`` a node serves, every service installed."""
    cluster = SimCluster(seed=1)
    cluster.start_hosts(1)
    cluster.run_until(cluster.settled, timeout=60)
    served = dict(cluster.hosts[0].node.api.operations)
    cluster.stop()
    return served


def client_sections():
    """``{op: its section's text}`` of the page's client operations."""
    parts = re.split(r"^### (\S+)\n", CLIENT_PART, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_rows(text):
    """The cells of each row of the tables in *text* whose first cell is a name in backticks."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| `")]


def backticked(text):
    return re.findall(r"`([^`]+)`", text)


def test_the_page_lists_the_client_operations_served(operations):
    client = {op for op, operation in operations.items() if not operation.peer}
    assert set(client_sections()) == client


def test_each_client_operations_fields_are_its_schemas(operations):
    for op, section in client_sections().items():
        schema = operations[op].schema
        if schema is None:
            continue  # it checks its request itself (admin.recover)
        rows = table_rows(section)
        documented = [(backticked(name)[0], kind, re.match(r"\w+", requirement).group()) for name, kind, requirement in rows]
        declared = [(f.name, f.kind.name, "required" if f.required else "optional") for f in schema.fields]
        assert documented == declared, op
        if not schema.fields:
            assert "No fields." in section, op


def test_the_page_says_which_operations_refuse_unknown_fields(operations):
    text = " ".join(PAGE.split())
    refusing = re.search(r"For ((?:`[\w.]+`(?:, | and ))+)a field the op does not know is refused", text)
    ignoring = re.search(r"((?:`[\w.]+`(?:, | and ))*`[\w.]+`) ignore any fields they are given", text)
    assert refusing and ignoring, "the sentences that say which operations refuse or ignore unknown fields"
    with_schemas = {op: o.schema for op, o in operations.items() if not o.peer and o.schema is not None}
    assert set(backticked(refusing.group(1))) == {op for op, schema in with_schemas.items() if not schema.ignore_unknown}
    assert set(backticked(ignoring.group(1))) == {op for op, schema in with_schemas.items() if schema.ignore_unknown}


def test_the_page_lists_the_peer_operations_served_with_their_fields(operations):
    rows = {backticked(row[0])[0]: row[1] for row in table_rows(PEER_PART)}
    assert set(rows) == {op for op, operation in operations.items() if operation.peer}
    for op, fields in rows.items():
        schema = operations[op].schema
        if schema is not None:
            assert {f.name for f in schema.fields} <= set(backticked(fields)), op
