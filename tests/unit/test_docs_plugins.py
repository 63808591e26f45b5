"""docs/plugins.md's complete examples work as the page says: each passes its contract suite
with the page's own test file, and each plugin is found under its name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import reactor

import nodedb.ids
import nodedb.plugins
from nodedb.config import NodeConfig
from nodedb.interfaces import IIdAllocatorPlugin, IPeerTransportPlugin, IStorageBackendPlugin
from nodedb.wire.transport import PeerTransport

ROOT = Path(__file__).resolve().parents[2]
#: A file of an example: its path on a line of its own, then its code block.
FILE = re.compile(r"^`([\w/]+\.py)`[^\n]*:\n\n```python\n(.*?)^```", re.S | re.M)
#: The examples: their test file, and how many tests it must pass at least.
EXAMPLES = {
    "storage": ("tests/test_dictstore.py", 25),
    "transport": ("tests/test_mappedtransport.py", 15),
    "ids": ("tests/test_spreadids.py", 15),
}


@pytest.fixture
def example(tmp_path):
    """The page's files, written out as its layouts say (packages under src/)."""
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    files = FILE.findall(page)
    assert sorted(name for name, _text in files) == sorted(
        [
            "dictstore/__init__.py",
            "nodedb/plugins/dictstore_plugin.py",
            "tests/test_dictstore.py",
            "mappedtransport/__init__.py",
            "nodedb/plugins/mappedtransport_plugin.py",
            "tests/test_mappedtransport.py",
            "spreadids/__init__.py",
            "nodedb/plugins/spreadids_plugin.py",
            "tests/test_spreadids.py",
        ]
    ), "each example is three files: the implementation, the plugin, the test file"
    for name, text in files:
        path = tmp_path / (name if name.startswith("tests/") else f"src/{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_example_plugins_are_found_by_name(example, monkeypatch):
    monkeypatch.syspath_prepend(str(example / "src"))
    monkeypatch.setattr(nodedb.plugins, "__path__", [*nodedb.plugins.__path__, str(example / "src" / "nodedb" / "plugins")])
    assert nodedb.plugins.installed_plugins() == {
        "storage backend": ["dict", "lmdb", "memory"],
        "transport": ["mapped", "tcp", "unix"],
        "id allocator": ["random-partition", "sequential", "time"],
    }
    options = NodeConfig(data_dir=str(example / "data"))
    backend = nodedb.plugins.find_storage_plugin("dict").make_backend(str(example / "data"), options, None)
    assert backend.name == "dict"
    assert backend.path == str(example / "data" / "dictstore.pickle")

    (example / "data").mkdir()
    (example / "data" / "routes.json").write_text('{"10.0.0.5:7400": "127.0.0.1:17400"}')
    transport = nodedb.plugins.find_plugin(IPeerTransportPlugin, "mapped").make_transport(options, reactor, dict, None, "ping")
    assert isinstance(transport, PeerTransport) and not transport.running
    from mappedtransport import read_routes

    assert read_routes(options.data_dir) == {"10.0.0.5:7400": "127.0.0.1:17400"}

    ids = nodedb.plugins.find_plugin(IIdAllocatorPlugin, "random-partition").make_allocator(
        nodedb.ids.IdLayout(), {3: 7}, options, None
    )
    assert ids.partitions() == [3] and ids.allocate(3) == nodedb.ids.IdLayout().make(3, 8)
    assert nodedb.plugins.find_plugin(IStorageBackendPlugin, "dict") is not None


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_example_passes_the_contract_suite_with_its_test_file(example, kind):
    test_file, at_least = EXAMPLES[kind]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(example / "src"), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    assert passed >= at_least and "failed" not in result.stdout
