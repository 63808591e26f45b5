"""The ``nodedb`` command: talk to a cluster from the shell.

Every user error (bad arguments, unreachable node, missing element, conflicting version) is
one line on stderr and a non-zero exit status: 2 for a malformed command line, 1 otherwise.
"""

import argparse
import base64
import json
import math
import os
import re
import sys

from twisted.internet import defer, task
from twisted.internet.task import react

from nodedb import errors, health
from nodedb.security import commands as ca_commands

EXIT_ERROR = 1
EXIT_USAGE = 2
REQUEST_TIMEOUT = 10.0
WAIT_TIMEOUT = 60.0
#: Seconds between two looks at the cluster's health while waiting for it.
WAIT_INTERVAL = 0.5
_WHERE = re.compile(r"^(?P<field>[^<>=\s]+)\s*(?P<op><=|>=|<|>|=)(?P<value>.*)$", re.S)
_WHERE_IN = re.compile(r"^(?P<field>[^<>=\s]+)\s+in\s+(?P<value>.*)$", re.S)


class UsageError(Exception):
    """The command line is malformed; the message says how."""


def _json_default(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value):
    return json.dumps(value, default=_json_default, ensure_ascii=False, sort_keys=False)


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _strict_json(text):
    """JSON as the standard has it: no NaN or Infinity, no number that overflows to them."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _json_argument(text, what):
    try:
        return _strict_json(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise UsageError(f"{what} is not valid JSON: {e}") from None


def _document(text):
    doc = _json_argument(text, "the document")
    if not isinstance(doc, dict):
        raise UsageError("the document must be a JSON object")
    return doc


def _integer(what, minimum, maximum=None):
    """An argparse type: a decimal integer in ``[minimum, maximum)``, named *what* in errors."""

    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value >= maximum):
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
        return value

    return parse


_element_id = _integer("an element id", 0, 1 << 64)
_version = _integer("a version", 0)
_positive = _integer("a positive integer", 1)


def _filter_value(text):
    """VALUE as JSON when it parses (``30`` is a number, ``"30"`` text), else as text."""
    try:
        return _strict_json(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_where(clauses):
    """``["age>=18", "name=ada", "tag in [\\"a\\",\\"b\\"]"]`` as a scan ``where`` map."""
    where = {}
    for clause in clauses:
        match = _WHERE_IN.match(clause)
        if match:
            op, value = "in", _filter_value(match["value"])
            if not isinstance(value, list):
                raise UsageError(f"--where {clause!r}: 'in' takes a JSON list")
        else:
            match = _WHERE.match(clause)
            if not match:
                raise UsageError(f"--where {clause!r}: use FIELD=VALUE, or <, <=, >, >=, 'in' in place of =")
            op, value = match["op"], _filter_value(match["value"])
        conditions = where.setdefault(match["field"], {})
        if op in conditions:
            raise UsageError(f"--where: {match['field']} {op} is given twice")
        conditions[op] = value
    return where


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common_options(parser, default=None):
    """The options every command takes, before or after the command's name."""
    keep = {} if default is None else {"default": default}
    parser.add_argument(
        "--connect",
        action="append",
        metavar="HOST:PORT",
        help="a node to connect to (repeatable; default $NODEDB_CONNECT or 127.0.0.1:7400)",
        **keep,
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON", **keep)
    parser.add_argument(
        "--tls",
        metavar="DIR",
        help="TLS directory from 'nodedb ca client' (default $NODEDB_TLS; none: plain TCP)",
        **keep,
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds a request may take (default {REQUEST_TIMEOUT:g}); "
        f"with status --wait, seconds to wait (default {WAIT_TIMEOUT:g})",
        **keep,
    )


def build_parser():
    parser = _Parser(prog="nodedb", description="Talk to a nodedb cluster.")
    _add_common_options(parser)
    common = _Parser(add_help=False)
    _add_common_options(common, default=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    def command(name, **kwargs):
        return subparsers.add_parser(name, parents=[common], **kwargs)

    insert = command("insert", help="insert a document; prints its new id")
    insert.add_argument("type")
    insert.add_argument("document", metavar="JSON")
    insert.add_argument("--near", type=_element_id, metavar="ID", help="store it in the partition of element ID")

    get = command("get", help="print a document as JSON")
    get.add_argument("type")
    get.add_argument("id", type=_element_id)
    get.add_argument(
        "--consistency",
        choices=("linearizable", "replica"),
        default="linearizable",
        help="linearizable (default: the partition's primary answers) or replica (the nearest "
        "caught-up copy answers; it may be a little stale)",
    )

    update = command("update", help="replace a document; prints its new version")
    update.add_argument("type")
    update.add_argument("id", type=_element_id)
    update.add_argument("document", metavar="JSON")
    update.add_argument("--if-version", type=_version, metavar="V", help="only if the element is at version V")

    delete = command("delete", help="delete an element; prints the version of the delete")
    delete.add_argument("type")
    delete.add_argument("id", type=_element_id)
    delete.add_argument("--if-version", type=_version, metavar="V", help="only if the element is at version V")

    scan = command("scan", help="print matching documents, one JSON object a line, in id order")
    scan.add_argument("type")
    scan.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="filter (repeatable); also FIELD<VALUE, <=, >, >=, or 'FIELD in [JSON list]'",
    )
    scan.add_argument("--limit", type=_positive, metavar="N", help="print at most N documents")
    scan.add_argument("--cursor", metavar="CURSOR", help="resume after a previous scan's cursor")

    status = command("status", help="print the health and the hosts of the cluster")
    status.add_argument(
        "--wait",
        choices=("healthy",),
        help="first wait (up to --timeout) until the cluster is healthy; exit 1 if it is not by then",
    )

    recover = command(
        "recover", help="UNSAFE: bring a cluster that lost its majority for good back through the --connect host"
    )
    recover.add_argument("--force", action="store_true", help="do it (without it, say what it would do)")

    transaction = command(
        "transaction", help="apply the operations of a JSON file (or - for stdin) all or none"
    )
    transaction.add_argument("file", metavar="FILE")

    ca_commands.add_parser(subparsers)
    return parser


def _addresses(args):
    if args.connect:
        return args.connect
    env = os.environ.get("NODEDB_CONNECT", "").strip()
    if env:
        return [address.strip() for address in env.split(",") if address.strip()]
    return ["127.0.0.1:7400"]


def _read_operations(path):
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    operations = _json_argument(text, path)
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise UsageError(
            f"{path} must hold a JSON list of operations such as "
            '{"op": "insert", "type": "user", "doc": {...}} or {"op": "update", "type": "user", "id": 1, "doc": {...}}'
        )
    return operations


def _queue(tx, operation, index):
    kind = operation.get("op")
    known = {"insert": {"op", "type", "doc", "near"}, "update": {"op", "type", "id", "doc", "if_version"}, "delete": {"op", "type", "id", "if_version"}}
    if kind not in known:
        raise UsageError(f"operation {index}: op must be insert, update or delete")
    unknown = set(operation) - known[kind]
    if unknown:
        raise UsageError(f"operation {index}: unknown field {sorted(unknown)[0]!r}")
    if kind == "insert":
        tx.insert(operation.get("type"), operation.get("doc"), operation.get("near"))
    elif kind == "update":
        tx.update(operation.get("type"), operation.get("id"), operation.get("doc"), operation.get("if_version"))
    else:
        tx.delete(operation.get("type"), operation.get("id"), operation.get("if_version"))


def _print(value):
    sys.stdout.write(value + "\n")


async def _insert(client, args):
    element_id = await client.insert(args.type, _document(args.document), near=args.near)
    _print(_dumps({"id": element_id}) if args.json else str(element_id))


async def _get(client, args):
    consistency = None if args.consistency == "linearizable" else args.consistency
    doc, version = await client.get(args.type, args.id, consistency=consistency)
    _print(_dumps({"_id": args.id, "_version": version, **doc} if args.json else doc))


async def _update(client, args):
    version = await client.update(args.type, args.id, _document(args.document), if_version=args.if_version)
    _print(_dumps({"version": version}) if args.json else str(version))


async def _delete(client, args):
    version = await client.delete(args.type, args.id, if_version=args.if_version)
    _print(_dumps({"version": version}) if args.json else str(version))


async def _scan(client, args):
    where = parse_where(args.where)
    remaining = args.limit
    cursor = args.cursor
    while True:
        page_size = min(remaining, 1000) if remaining is not None else 1000
        page = await client.scan(args.type, where=where or None, limit=page_size, cursor=cursor)
        for element_id, doc, version in page.items:
            _print(_dumps({"_id": element_id, "_version": version, **doc}))
        cursor = page.cursor
        if remaining is not None:
            remaining -= len(page.items)
            if remaining <= 0:
                if cursor is not None:
                    sys.stderr.write(f"more results: --cursor {cursor}\n")
                return
        if cursor is None:
            return


def _ranges_text(ranges):
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


async def _status(client, args):
    _print_status(await client.status(), args)


def _print_status(status, args):
    if args.json:
        _print(_dumps(status))
        return
    if status.get("fenced"):
        _print(f"fenced: {status['fenced']}")
    if "health" in status:  # (a node from before health was reported has none)
        _print(health.summary(status["health"]))
    rows = [("ID", "ADDRESS", "STATUS", "PARTITIONS", "INACTIVE", "UNRELIABILITY", "AVAILABLE", "DISTANCE", "COORDINATES")]
    for host in status["hosts"]:
        ranges = _ranges_text(host["partitions"])
        inactive = _ranges_text(host.get("inactive", []))
        available = host.get("available", True)
        distance = host.get("distance_ms")
        coordinate = host.get("coordinate")
        rows.append(
            (
                host["id"],
                host["address"],
                health.shown_status(host),
                ranges or "-",
                inactive or "-",
                f"{host['unreliability']:.2f}",
                "yes" if available else "no",
                "-" if distance is None else f"{distance:.1f}ms",
                "-" if not coordinate else f"({coordinate['x'] * 1000:.1f},{coordinate['y'] * 1000:.1f},{coordinate['height'] * 1000:.1f})ms",
            )
        )
    voting = status.get("voting")
    if voting:
        _print(
            f"cluster {status['cluster']['id']}: leader {voting['leader'] or '(none)'}, term {voting['term']}, "
            f"voters {', '.join(voting['voters']) or '(none)'}"
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        _print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


#: What ``nodedb recover`` without --force says, in one line.
RECOVER_WARNING = (
    "recover makes the --connect host the only voter, gives every partition whose majority is gone a new "
    "primary from its most complete live copy and removes the hosts it cannot reach for good; writes only "
    "those hosts had are lost, and they must be wiped before they join again: add --force to do it"
)


async def _recover(client, args):
    report = await client.recover()
    if args.json:
        _print(_dumps(report))
        return
    lost = report["lost"]
    _print(
        f"recovery {report['recovery']}: voters {', '.join(report['voters'])}; "
        f"removed hosts {', '.join(report['removed']) or '(none)'}; "
        f"{len(report['new_primaries'])} partitions have new primaries; "
        + (f"{len(lost)} partitions lost every copy (partitions {', '.join(map(str, lost))})" if lost else "no partition lost every copy")
    )


async def _transaction(client, args):
    operations = _read_operations(args.file)
    tx = client.transaction()
    for index, operation in enumerate(operations):
        _queue(tx, operation, index)
    results = await tx.commit()
    if args.json:
        _print(_dumps(results))
    else:
        for result in results:
            _print(str(result))


_COMMANDS = {
    "insert": _insert,
    "get": _get,
    "update": _update,
    "delete": _delete,
    "scan": _scan,
    "status": _status,
    "recover": _recover,
    "transaction": _transaction,
}


async def _connected(reactor, args, command, timeout):
    """:return: what ``command(client, args)`` returns, with a client connected for it."""
    from nodedb.client import connect

    tls = args.tls or os.environ.get("NODEDB_TLS", "").strip() or None
    client = await connect(reactor, _addresses(args), timeout=timeout, tls=tls)
    try:
        return await command(client, args)
    finally:
        await client.close()


async def _fetch_status(client, args):
    return await client.status()


async def _wait_healthy(reactor, args):
    """Look at the cluster's health every WAIT_INTERVAL until it is healthy (then print the
    status) or the --timeout is over (then exit 1 with what is wrong). A node that cannot be
    reached yet (it may be starting) is tried again."""
    deadline = reactor.seconds() + args.timeout
    while True:
        remaining = deadline - reactor.seconds()
        try:
            status = await _connected(reactor, args, _fetch_status, max(min(remaining, REQUEST_TIMEOUT), WAIT_INTERVAL))
        except (errors.Unavailable, errors.Timeout) as e:
            problems = [f"{e.wire_name}: {e}"]
        else:
            found = status.get("health")
            if found is not None and found["healthy"]:
                _print_status(status, args)
                return
            problems = found["problems"] if found is not None else health.STARTING
        if reactor.seconds() + WAIT_INTERVAL > deadline:
            sys.stderr.write(f"nodedb: not healthy after {args.timeout:g} s: {'; '.join(problems)}\n")
            raise SystemExit(EXIT_ERROR)
        await task.deferLater(reactor, WAIT_INTERVAL, lambda: None)


async def _run(reactor, args):
    if args.command == "status" and args.wait:
        await _wait_healthy(reactor, args)
    else:
        await _connected(reactor, args, _COMMANDS[args.command], args.timeout)


def _finish(reactor, args):
    d = defer.ensureDeferred(_run(reactor, args))

    def failed(failure):
        error = failure.value
        if isinstance(error, UsageError):
            sys.stderr.write(f"nodedb: {error}\n")
            raise SystemExit(EXIT_USAGE)
        if isinstance(error, errors.NodeDBError):
            sys.stderr.write(f"nodedb: {error.wire_name}: {error}\n")
            raise SystemExit(EXIT_ERROR)
        return failure

    return d.addErrback(failed)


def _check_before_connecting(args):
    """Refuse a malformed document or filter before any connection is tried.

    :raise UsageError: as the command would once connected.
    """
    if args.command in ("insert", "update"):
        _document(args.document)
    elif args.command == "scan":
        parse_where(args.where)
    elif args.command == "recover" and not args.force:
        raise UsageError(RECOVER_WARNING)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ca":  # files only: no connection, no reactor
        raise SystemExit(ca_commands.run(args))
    if args.timeout is None:
        args.timeout = WAIT_TIMEOUT if getattr(args, "wait", None) else REQUEST_TIMEOUT
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        _check_before_connecting(args)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"nodedb: {e}\n")
    react(_finish, (args,))


if __name__ == "__main__":
    main()
