"""docs/plugins.md's complete example works as the page says: the backend passes the contract
suite with the page's own test file, and the plugin is found under its name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nodedb.plugins
from nodedb.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(tmp_path):
    """The page's three files, written out as its layout says."""
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
    assert len(blocks) == 3, "the example is three files: the backend, the plugin, the test file"
    files = {
        "src/dictstore/__init__.py": blocks[0],
        "src/nodedb/plugins/dictstore_plugin.py": blocks[1],
        "tests/test_dictstore.py": blocks[2],
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_example_plugin_is_found_by_name(example, monkeypatch):
    monkeypatch.syspath_prepend(str(example / "src"))
    monkeypatch.setattr(nodedb.plugins, "__path__", [*nodedb.plugins.__path__, str(example / "src" / "nodedb" / "plugins")])
    plugins = nodedb.plugins.storage_plugins()
    assert {"dict", "lmdb", "memory"} <= set(plugins)
    backend = nodedb.plugins.find_storage_plugin("dict").make_backend(str(example / "data"), NodeConfig(data_dir=str(example / "data")), None)
    assert backend.name == "dict"
    assert backend.path == str(example / "data" / "dictstore.pickle")


def test_the_example_passes_the_contract_suite_with_its_test_file(example):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(example / "src"), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    assert passed >= 25 and "failed" not in result.stdout
