"""Fixtures of the system tests: real ``twistd -n nodedb`` processes on loopback.

``processes`` is a :class:`~.harness.ProcessGroup` for one test and ``module_processes`` one
for a module; both kill whatever is left at teardown. When a test fails, the logs of every
node still in a live group are added to its report.
"""

import json
import subprocess
import sys

import pytest

from .harness import REPO, ProcessGroup, child_env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for group in list(ProcessGroup.live):
            for title, text in group.log_sections():
                report.sections.append((title, text))


@pytest.fixture(scope="session", autouse=True)
def children_run_the_working_tree(tmp_path_factory):
    """Check once that a child process given :func:`child_env` imports nodedb and finds the
    twistd plugin in this working tree, not in an installed copy."""
    probe = (
        "import json, nodedb, nodedb.tap, nodedb.cli\n"
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.python.reflect import namedAny\n"
        "import twisted.plugins\n"
        "makers = [p for p in getPlugins(IServiceMaker) if p.tapname == 'nodedb']\n"
        "print(json.dumps({'nodedb': nodedb.__file__, 'tap': namedAny(makers[0].module).__file__,\n"
        "                  'cli': nodedb.cli.__file__, 'makers': len(makers)}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout)
    assert found["makers"] >= 1, found
    for name in ("nodedb", "tap", "cli"):
        assert found[name].startswith(str(REPO) + "/"), f"child processes import {name} from {found[name]}, not {REPO}"


@pytest.fixture
def processes(tmp_path):
    """A :class:`ProcessGroup` whose processes die with the test."""
    group = ProcessGroup(tmp_path / "processes")
    yield group
    group.cleanup()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory, request):
    """A :class:`ProcessGroup` shared by the tests of one module."""
    group = ProcessGroup(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield group
    group.cleanup()
