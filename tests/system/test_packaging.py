"""``pip install .`` gives a working nodedb: the twistd plugin, every option, the ``nodedb``
command, and a node that serves (DESIGN section 2, "Install").

The install goes into a fresh virtualenv, from a copy of the files git would commit, without
the network: the new venv sees this environment's dependencies through a ``.pth`` file naming
a directory of links to them, from which every installed copy of nodedb has been left out (so
nothing can pass because of an older install).
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import REPO, TWISTD, child_env, run

pytestmark = pytest.mark.system

NODE_OPTIONS = ("--data", "--listen", "--advertise", "--seed", "--admin", "--replicas", "--partitions", "--insecure", "--storage")
COMMANDS = ("insert", "get", "update", "delete", "scan", "status", "transaction")


_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "dropin.cache", "build", "dist", "*.egg-info", ".pytest_cache", ".hypothesis", ".venv"
)


def copy_of_the_repository(destination):
    """Copy what git would commit (tracked files and new files not ignored) to *destination*;
    outside a git checkout, every file but caches and build output."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, destination, ignore=_NOT_SOURCE, symlinks=True)
        return destination
    for name in filter(None, listed.decode("utf-8").split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _is_nodedb(name):
    return name.startswith(("nodedb", "__editable__")) or name.endswith(".pth") or name == "__pycache__"


def dependency_links(destination):
    """A directory of links to this environment's installed distributions (those beside
    twisted, setuptools and pip), leaving out nodedb and its twistd dropin."""
    destination.mkdir()
    for name in ("twisted", "setuptools", "pip"):
        spec = importlib.util.find_spec(name)  # found, not imported: importing setuptools here would patch distutils
        assert spec is not None and spec.origin, f"{name} is not installed in the test environment"
        site = Path(spec.origin).resolve().parent.parent
        for entry in site.iterdir():
            target = destination / entry.name
            if _is_nodedb(entry.name) or target.exists():
                continue
            if entry.name == "twisted":
                # twisted itself, with a plugins directory that lacks nodedb's dropin.
                target.mkdir()
                for child in entry.iterdir():
                    if child.name != "plugins":
                        (target / child.name).symlink_to(child)
                (target / "plugins").mkdir()
                for plugin in (entry / "plugins").iterdir():
                    if plugin.name not in ("nodedb_plugin.py", "dropin.cache", "__pycache__"):
                        (target / "plugins" / plugin.name).symlink_to(plugin)
            else:
                target.symlink_to(entry)
    return destination


def test_pip_install_gives_the_plugin_the_options_and_the_command(processes, tmp_path):
    source = copy_of_the_repository(tmp_path / "source")
    deps = dependency_links(tmp_path / "deps")
    venv = tmp_path / "venv"
    env = child_env(pythonpath=None, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    created = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], env=env, cwd=tmp_path)
    assert created.returncode == 0, str(created)
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env, cwd=tmp_path)
    site = Path(purelib.stdout.strip())
    (site / "nodedb_test_dependencies.pth").write_text(f"{deps}\n")

    can_build = run([python, "-c", "import setuptools.command.bdist_wheel"], env=env, cwd=tmp_path)
    assert can_build.returncode == 0, (
        "building without build isolation needs setuptools >= 70.1 in the test environment "
        "(pip install '.[test]' brings it)\n" + str(can_build)
    )
    installed = run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", source],
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert installed.returncode == 0, str(installed)

    # nodedb and its dropin come from the new venv, and every module of the source ships.
    where = run(
        [python, "-c", "import nodedb, twisted.plugins.nodedb_plugin as p; print(nodedb.__file__); print(p.__file__)"],
        env=env,
        cwd=tmp_path,
    )
    assert where.returncode == 0, str(where)
    package_file, plugin_file = where.stdout.split()
    assert package_file == str(site / "nodedb" / "__init__.py"), where.stdout
    assert plugin_file == str(site / "twisted" / "plugins" / "nodedb_plugin.py"), where.stdout
    shipped = {p.relative_to(site).as_posix() for p in (site / "nodedb").rglob("*.py")}
    written = {p.relative_to(source).as_posix() for p in (source / "nodedb").rglob("*.py")}
    assert written - shipped == set(), "modules missing from the installed package"

    listed = run([python, "-c", TWISTD, "--help"], env=env, cwd=tmp_path)
    assert listed.returncode == 0, str(listed)
    assert any(line.split()[:1] == ["nodedb"] for line in listed.stdout.splitlines()), listed.stdout

    helped = run([python, "-c", TWISTD, "-n", "nodedb", "--help"], env=env, cwd=tmp_path)
    assert helped.returncode == 0, str(helped)
    for option in NODE_OPTIONS:
        assert f"{option}" in helped.stdout, f"{option} missing from twistd nodedb --help\n{helped.stdout}"

    command = venv / "bin" / "nodedb"
    usage = run([command, "--help"], env=env, cwd=tmp_path)
    assert usage.returncode == 0, str(usage)
    for name in COMMANDS:
        assert name in usage.stdout, usage.stdout

    # The installed copy runs a node, and its command talks to it.
    node = processes.node("installed", admin=False, python=python, pythonpath=None, cwd=tmp_path)
    node.start()
    inserted = run([command, "--connect", node.address, "insert", "packaged", '{"from": "venv"}'], env=env, cwd=tmp_path)
    assert inserted.returncode == 0, str(inserted)
    got = run([python, "-m", "nodedb", "--connect", node.address, "get", "packaged", inserted.stdout.strip()], env=env, cwd=tmp_path)
    assert got.returncode == 0, str(got)
    assert got.stdout.strip() == '{"from": "venv"}'
    assert node.problems() == [], node.describe()
