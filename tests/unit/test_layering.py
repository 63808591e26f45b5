"""The import rules of docs/architecture.md: which room of ``nodedb`` may import which.

A room is a top-level module or package of ``nodedb`` (``nodedb/query/`` is the room
``query``, ``nodedb/codec.py`` the room ``codec``). A room may import itself, the package's
``__version__`` and the rooms listed for it below; anything else is a forbidden import, and so is
any loop between rooms. Run it alone with ``pytest tests/unit/test_layering.py``.
"""

import ast
import pathlib

import nodedb

PACKAGE = pathlib.Path(nodedb.__file__).parent

#: The foundations every room may use: errors, the strict document codec, the interfaces and
#: the id layout.
_BASE = {"errors", "codec", "interfaces", "ids"}

#: room -> the rooms it may import (beyond itself and _BASE).
ALLOWED = {
    "errors": set(),
    "codec": {"errors"},
    "interfaces": {"errors"},
    "ids": set(),  # imports only the interfaces
    "topology": set(),
    "metrics": set(),
    "wire": set(),
    "security": {"wire"},
    "client": {"wire", "security"},
    "storage": set(),
    "reliability": set(),
    "gossip": {"topology"},
    "logsync": {"storage"},
    # Voting reads LogSync's pure majority rule; LogSync knows nothing of Voting.
    "voting": {"logsync", "topology"},
    "transactions": {"storage", "wire"},
    # The query layer reaches the transactions only through ITransactions, and neither
    # imports the other: the transaction request and its plan are in nodedb/wire/.
    "query": {"storage", "topology", "wire"},
    "health": {"logsync", "voting"},
    # What the node is, where things are and what it says about itself: read by the node's
    # services through the node's assembly, never imported by them.
    "identity": {"config", "security", "voting"},
    "placement": {"query", "topology", "voting"},
    "status": {"gossip", "health", "topology", "voting", "wire"},
    "config": {"security", "wire"},
    "plugins": {"config", "storage", "wire"},
    "admin": {"health", "metrics"},
    "cli": {"client", "security", "health"},
    "__main__": {"cli"},
}
#: Rooms that assemble the others, and the public test helpers: they may import any room.
ASSEMBLY = {"node", "tap", "testing"}


def _room(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path):
    """The ``nodedb`` modules that the file at *path* imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "nodedb":
                found.update(f"nodedb.{alias.name}" for alias in node.names if alias.name != "__version__")
    return {name for name in found if name == "nodedb" or name.startswith("nodedb.")}


def room_imports():
    """``{room: {imported room: [file, ...]}}`` over every module of the package."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        room = _room(".".join(relative.with_suffix("").parts))
        if room is None or room == "__init__":
            continue
        for name in _imports(path):
            target = _room(name)
            if target is not None and target != room:
                graph.setdefault(room, {}).setdefault(target, []).append(str(relative))
    return graph


def test_every_room_is_listed():
    rooms = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()}
    rooms = {r for r in rooms if not r.startswith(("_", ".")) or r == "__main__"} - {"dropin"}
    rooms.discard("__pycache__")
    unlisted = rooms - set(ALLOWED) - ASSEMBLY
    assert not unlisted, f"rooms without import rules (add them to ALLOWED and docs/architecture.md): {unlisted}"


def test_no_forbidden_imports():
    forbidden = []
    for room, targets in room_imports().items():
        if room in ASSEMBLY:
            continue
        for target, files in sorted(targets.items()):
            if target not in ALLOWED.get(room, set()) | _BASE:
                forbidden.append(f"{room} -> {target} ({', '.join(sorted(set(files)))})")
    assert not forbidden, "forbidden imports:\n" + "\n".join(forbidden)


def test_no_loops_between_rooms():
    graph = {room: set(targets) for room, targets in room_imports().items()}
    loops = []

    def visit(room, path):
        for target in sorted(graph.get(room, ())):
            if target in path:
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        done.add(room)

    done = set()
    for room in sorted(graph):
        if room not in done:
            visit(room, [room])
    assert not loops, "import loops between rooms:\n" + "\n".join(sorted(set(loops)))


def test_architecture_md_states_these_rules():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    section = text.split("### Rooms and what each may import", 1)[1].split("\n#", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = {name.strip().strip("`") for name in cells[1].split(",")} - {
                "(nothing more)"
            }
    assert documented == ALLOWED
