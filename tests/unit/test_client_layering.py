"""The client library loads nothing of the server: a program that only talks to a cluster
does not import the node's configuration, storage or services (issue 13's layering)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVER_MODULES = {
    "nodedb.config",
    "nodedb.node",
    "nodedb.storage",
    "nodedb.voting",
    "nodedb.logsync",
    "nodedb.gossip",
    "nodedb.query",
    "nodedb.transactions",
}

PROGRAM = """
import json, sys
import nodedb.client
import nodedb.security.tls  # what connect(..., tls=...) loads
print(json.dumps({"file": nodedb.client.__file__, "modules": sorted(sys.modules)}))
"""


def test_importing_the_client_loads_no_server_module():
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert Path(report["file"]).is_relative_to(ROOT)  # this checkout, not an installed copy
    loaded = set(report["modules"])
    assert "nodedb.client" in loaded and "nodedb.wire.connection" in loaded
    server = {name for name in loaded if any(name == m or name.startswith(m + ".") for m in SERVER_MODULES)}
    assert server == set()
