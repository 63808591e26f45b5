"""Real nodedb processes on loopback, for the system tests: start, wait, stop, kill, read logs.

Every process goes through a :class:`ProcessGroup`, which a fixture tears down, so nothing a
test starts outlives it, pass or fail. Nodes run the working tree (``PYTHONPATH`` and the
current directory are the repository root), each on its own loopback address ``127.0.0.x``
with port 0 for the first start: the node's own "ready at HOST:PORT" log line says which port
it got, so no two tests can race for a port. A restart reuses the ports of the first start.

Nothing here sleeps to synchronise: :func:`wait_for` polls a condition until a deadline.
"""

import ctypes
import http.client
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cbor2

REPO = Path(__file__).resolve().parents[2]
#: How long a node may take to start, stop or answer, however loaded the machine is.
TIMEOUT = 30.0
#: twistd run from the working tree (``python -m twisted.scripts.twistd`` would silently do
#: nothing); argv[0] is set so that usage errors start with "twistd".
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

_READY = re.compile(r"\bnode (?P<host_id>[0-9a-f]+)\b.*\bready at (?P<address>[^\s,]+)")
_ADMIN_PORT = re.compile(r"\bSite (?:\(TLS\) )?starting on (?P<port>\d+)")
TRACEBACK = "Traceback (most recent call last)"
_ERROR_LEVELS = re.compile(r"#(?:error|critical)\]")

# Distinct loopback addresses: 127.0.0.2 .. 127.0.0.254, starting at a per-run offset.
_hosts = itertools.cycle(range(2, 255))
for _ in range(os.getpid() % 253):
    next(_hosts)


def next_loopback():
    """A loopback address no other node of this run is using (until 253 nodes later)."""
    return f"127.0.0.{next(_hosts)}"


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(condition, timeout=TIMEOUT, what=None, interval=0.02):
    """Poll *condition* until it returns something true, and return that.

    :raise WaitTimeout: after *timeout* seconds (naming *what*).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"gave up after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


def child_env(pythonpath=REPO, **extra):
    """The environment of a child process: this one, with the working tree first on
    ``PYTHONPATH`` (or no ``PYTHONPATH`` at all when *pythonpath* is None), unbuffered output,
    and no ``NODEDB_CONNECT`` unless given in *extra*."""
    env = dict(os.environ)
    env.pop("NODEDB_CONNECT", None)
    inherited = env.pop("PYTHONPATH", "")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), inherited) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port(host):
    """A TCP port nobody listens on at *host* right now (for addresses that must be dead)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- processes -------------------------------------------------------------------------------


class ProcessGroup:
    """The processes one test (or one module) started; :meth:`cleanup` kills what is left."""

    #: Groups not yet cleaned up; the failure hook prints the logs of their nodes.
    live = []

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.processes = []
        self.nodes = []
        ProcessGroup.live.append(self)

    def spawn(self, command, output, env=None, cwd=REPO, stdin=subprocess.DEVNULL):
        """Start *command* with stdout and stderr going to the file *output*."""
        with open(output, "ab") as out:
            process = subprocess.Popen(
                [str(part) for part in command],
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env if env is not None else child_env(),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.processes.append(process)
        return process

    def node(self, name="node", **kwargs):
        """A :class:`NodeProcess` of this group (not started yet)."""
        node = NodeProcess(self, self.directory / name, name, **kwargs)
        self.nodes.append(node)
        return node

    def start_node(self, name="node", **kwargs):
        """A started node that serves requests."""
        node = self.node(name, **kwargs)
        node.start()
        return node

    def cleanup(self):
        for process in self.processes:
            if process.poll() is None:
                _kill_process_group(process, signal.SIGKILL)
        for process in self.processes:
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
                pass
        if self in ProcessGroup.live:
            ProcessGroup.live.remove(self)

    def log_sections(self, max_lines=300):
        """``[(title, text)]``: the tail of every log of every node, for a failure report."""
        sections = []
        for node in self.nodes:
            for path in node.log_paths():
                text = read_log(path)
                lines = text.splitlines()
                if len(lines) > max_lines:
                    text = "\n".join([f"... ({len(lines) - max_lines} earlier lines in {path})", *lines[-max_lines:]])
                sections.append((f"log of {node.name} ({path.name})", text or "(empty)"))
        return sections


def _die_with_parent():
    """In the child: be killed if the test process dies without tearing down (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def _kill_process_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def read_log(path):
    """The text of twistd log *path*, its rotated parts (``path.1`` is the newest) first."""
    path = Path(path)
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    text = ""
    for part in [*sorted(rotated, key=lambda p: -int(p.suffix[1:])), path]:
        try:
            text += part.read_text(errors="replace")
        except FileNotFoundError:
            pass
    return text


def problem_lines(text):
    """The lines of log *text* that tell of a traceback or an error/critical event."""
    return [line for line in text.splitlines() if TRACEBACK in line or _ERROR_LEVELS.search(line)]


def accept_queue(host, port):
    """How many connections wait in the accept queue of the socket listening on *host*:*port*
    (Linux: the ``rx_queue`` of a LISTEN socket in /proc/net/tcp); None if there is none."""
    local = "%08X:%04X" % (struct.unpack("<I", socket.inet_aton(host))[0], port)
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return None


class NodeFailed(AssertionError):
    """A node exited, or did not become ready, when it should have served."""


class NodeProcess:
    """One ``twistd -n nodedb`` on a loopback address; restartable on the same data directory.

    :param admin: serve the admin site (on a port chosen at the first start).
    :param args: more ``nodedb`` options.
    :param python: the interpreter to run twistd with (another venv's, for packaging tests).
    :param pythonpath: what goes first on the child's ``PYTHONPATH`` (None: nothing).
    """

    def __init__(self, group, directory, name, host=None, admin=True, args=(), python=sys.executable, pythonpath=REPO, cwd=REPO):
        self.group = group
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.host = host or next_loopback()
        self.data_dir = self.directory / "data"
        self.port = 0
        self.admin_port = 0 if admin else None
        self.args = list(args)
        self.python = python
        self.pythonpath = pythonpath
        self.cwd = cwd
        self.process = None
        self.runs = 0
        self.host_id = None
        self.address = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def log_path(self):
        return self.directory / f"{self.name}.{self.runs}.log"

    @property
    def output_path(self):
        """Where the process's own stdout and stderr go (usage errors, crashes before logging)."""
        return self.directory / f"{self.name}.{self.runs}.out"

    def log_paths(self):
        paths = []
        for run in range(1, self.runs + 1):
            for path in (self.directory / f"{self.name}.{run}.log", self.directory / f"{self.name}.{run}.out"):
                if path.exists():
                    paths.append(path)
        return paths

    def command(self, *extra):
        admin = "none" if self.admin_port is None else f"tcp:{self.admin_port}:interface={self.host}"
        return [
            self.python,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "nodedb",
            "--data",
            self.data_dir,
            "--listen",
            f"tcp:{self.port}:interface={self.host}",
            "--admin",
            admin,
            *self.args,
            *extra,
        ]

    def launch(self, *extra):
        """Start the process (a new log for each start) without waiting for it."""
        assert not self.running, f"{self.name} is already running"
        self.runs += 1
        env = child_env(self.pythonpath)
        self.process = self.group.spawn(self.command(*extra), self.output_path, env=env, cwd=self.cwd)
        return self.process

    def start(self, *extra, timeout=TIMEOUT):
        """Start the node and wait until it serves requests."""
        self.launch(*extra)
        self.wait_ready(timeout)
        return self

    def reserve_ports(self):
        """Choose the ports now rather than at the first start, so that :attr:`address` is
        known before the node runs (for clients started before it)."""
        self.port = free_port(self.host)
        if self.admin_port is not None:
            self.admin_port = free_port(self.host)
        self.address = f"{self.host}:{self.port}"

    def ready_now(self):
        """Whether the current run logged that it serves requests (without waiting).

        :raise NodeFailed: if it exited before that.
        """
        match = _READY.search(self.log())
        if match:
            self._ready(match)
            return True
        if self.process.poll() is not None:
            raise NodeFailed(f"{self.name} exited with status {self.process.returncode} before it was ready\n{self.describe()}")
        return False

    def wait_ready(self, timeout=TIMEOUT):
        try:
            wait_for(self.ready_now, timeout, f"{self.name} to be ready")
        except WaitTimeout as e:
            raise NodeFailed(f"{e}\n{self.describe()}") from None

    def _ready(self, match):
        self.host_id = match["host_id"]
        self.address = match["address"]
        self.port = int(self.address.rsplit(":", 1)[1])
        if self.admin_port is not None:
            admin = _ADMIN_PORT.search(self.log())
            assert admin, f"{self.name} did not log its admin port\n{self.describe()}"
            self.admin_port = int(admin["port"])

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, sig):
        self.process.send_signal(sig)

    def stop(self, timeout=TIMEOUT):
        """SIGTERM, then wait for the exit.

        :return: the exit status.
        """
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self, timeout=TIMEOUT):
        """SIGKILL, then wait for the exit; :return: the exit status."""
        self.signal(signal.SIGKILL)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NodeFailed(f"{self.name} did not exit within {timeout:.0f} s\n{self.describe()}") from None

    def restart(self, timeout=TIMEOUT):
        """SIGTERM and start again on the same data directory and ports."""
        if self.running:
            status = self.stop(timeout)
            assert status == 0, f"{self.name} exited with {status} on SIGTERM\n{self.describe()}"
        return self.start(timeout=timeout)

    # -- logs ---------------------------------------------------------------------------------

    def log(self):
        """The log text of the current (or last) run."""
        return read_log(self.log_path)

    def output(self):
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self):
        """A position in the current log: :meth:`log_since` returns what came after it."""
        return len(self.log())

    def log_since(self, mark):
        return self.log()[mark:]

    def wait_for_log(self, pattern, since=0, timeout=TIMEOUT):
        """Wait until the log (after *since*) has a line matching *pattern*; :return: the match."""
        regex = re.compile(pattern)
        return wait_for(lambda: regex.search(self.log_since(since)), timeout, f"{pattern!r} in the log of {self.name}")

    def problems(self, since=0):
        """Tracebacks and error/critical lines in the log after *since*."""
        return problem_lines(self.log_since(since))

    def problems_of_every_run(self):
        """Tracebacks and error/critical lines in the logs of every run so far."""
        return [line for path in self.log_paths() if path.suffix == ".log" for line in problem_lines(read_log(path))]

    def describe(self, lines=60):
        tail = self.log().splitlines()[-lines:]
        output = self.output().strip()
        text = f"--- log of {self.name} (run {self.runs}, {self.log_path}) ---\n" + "\n".join(tail)
        if output:
            text += f"\n--- output of {self.name} ---\n{output[-4000:]}"
        return text

    def open_fds(self):
        """How many file descriptors the node process has open (Linux)."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    # -- talking to it ------------------------------------------------------------------------

    def client(self, **kwargs):
        """A handshaken :class:`WireClient` to this node."""
        return WireClient(self.address, **kwargs)

    def http_get(self, path, timeout=TIMEOUT):
        """``(status, content_type, body)`` of a GET on the admin site (no proxy, loopback only)."""
        connection = http.client.HTTPConnection(self.host, self.admin_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.getheader("content-type", ""), response.read()
        finally:
            connection.close()

    def admin_status(self):
        status, content_type, body = self.http_get("/status")
        assert status == 200, (status, body)
        assert content_type.startswith("application/json"), content_type
        return json.loads(body)


# -- the wire protocol, blocking, for tests that need to send exactly what they want -----------


class WireError(Exception):
    """An error reply: ``type`` is the error's wire name."""

    def __init__(self, error):
        super().__init__(f"{error.get('type')}: {error.get('message')}")
        self.type = error.get("type")
        self.message = error.get("message")


class ConnectionClosed(Exception):
    """The other end closed the connection."""


class WireClient:
    """A blocking client of the framed CBOR protocol (4-byte big-endian length, one CBOR map).

    :param hello: send the ``hello`` handshake first (the default).
    """

    def __init__(self, address, timeout=TIMEOUT, hello=True, source=None):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout, source_address=source)
        self._ids = itertools.count(1)
        self.server = self.call("hello", version=1, role="client", client="nodedb-system-tests") if hello else None

    @property
    def local_address(self):
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- frames -------------------------------------------------------------------------------

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, payload):
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send(self, message):
        self.send_frame(cbor2.dumps(message))

    def _read_exactly(self, count):
        chunks, left = [], count
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionClosed(f"closed with {count - left} of {count} bytes read")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self):
        """The next message. :raise ConnectionClosed: at the end of the stream."""
        (length,) = struct.unpack(">I", self._read_exactly(4))
        return cbor2.loads(self._read_exactly(length))

    def wait_closed(self, timeout=TIMEOUT):
        """Read until the server closes the connection; :return: the messages read meanwhile.

        :raise WaitTimeout: if the connection is still open after *timeout* seconds.
        """
        self.sock.settimeout(timeout)
        messages = []
        try:
            while True:
                messages.append(self.receive())
        except ConnectionClosed:
            return messages
        except ConnectionResetError:
            return messages
        except socket.timeout:
            raise WaitTimeout(f"the node kept the connection open for {timeout:.0f} s") from None

    # -- requests -----------------------------------------------------------------------------

    def request(self, op, **arguments):
        request_id = next(self._ids)
        self.send({"id": request_id, "op": op, **arguments})
        return request_id

    def result(self, request_id):
        reply = self.receive()
        assert reply.get("id") == request_id, f"reply to {reply.get('id')!r}, expected {request_id}: {reply!r}"
        if "error" in reply:
            raise WireError(reply["error"])
        return reply["ok"]

    def call(self, op, **arguments):
        """Send one request and return its ``ok`` value. :raise WireError: for an error reply."""
        return self.result(self.request(op, **arguments))

    def pipeline(self, requests):
        """Send every ``(op, arguments)`` before reading any reply (replies may come back in
        any order); :return: the ``ok`` values in request order.

        :raise WireError: for the first request (in order) that got an error reply.
        """
        request_ids = [self.request(op, **arguments) for op, arguments in requests]
        replies = {}
        while len(replies) < len(request_ids):
            reply = self.receive()
            replies[reply.get("id")] = reply
        results = []
        for request_id in request_ids:
            reply = replies[request_id]
            if "error" in reply:
                raise WireError(reply["error"])
            results.append(reply["ok"])
        return results

    def insert_many(self, record_type, docs):
        """Insert *docs* (pipelined); :return: their ids in order."""
        return self.pipeline([("insert", {"type": record_type, "doc": doc}) for doc in docs])

    def get(self, record_type, element_id):
        """``(doc, version)``."""
        doc, version = self.call("get", type=record_type, key=element_id)
        return doc, version

    def scan_all(self, record_type, where=None, page=10_000):
        """Every ``(id, doc, version)`` of *record_type* matching *where*, following cursors."""
        items, cursor = [], None
        while True:
            arguments = {"type": record_type, "limit": page}
            if where is not None:
                arguments["where"] = where
            if cursor is not None:
                arguments["cursor"] = cursor
            result = self.call("scan", **arguments)
            items.extend(tuple(item) for item in result["items"])
            cursor = result["cursor"]
            if cursor is None:
                return items


def settle_requests(client, requests, what):
    """Send every ``(op, arguments)`` of *requests* pipelined through WireClient *client*,
    again for those answered Unavailable (certainly not applied); :return: the ``ok`` values
    in order. Any other error fails the test."""
    results = [None] * len(requests)
    left = list(range(len(requests)))

    def round_trip():
        sent = {client.request(requests[i][0], **requests[i][1]): i for i in left}
        unavailable = []
        for _ in range(len(sent)):
            reply = client.receive()
            index = sent[reply["id"]]
            if "ok" in reply:
                results[index] = reply["ok"]
            elif reply["error"]["type"] == "Unavailable":
                unavailable.append(index)
            else:
                raise AssertionError(f"{what}: {requests[index]} failed: {reply['error']}")
        left[:] = unavailable
        return not left

    wait_for(round_trip, what=what, interval=0.1)
    return results


# -- the nodedb command ----------------------------------------------------------------------


@dataclass
class Run:
    """A finished command: its arguments, exit status and output."""

    args: list
    returncode: int
    stdout: str
    stderr: str

    def __str__(self):
        return (
            f"$ {' '.join(map(str, self.args))}\nexit status {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )

    @property
    def stdout_lines(self):
        return self.stdout.splitlines()

    @property
    def stderr_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def run(command, env=None, input=None, timeout=60, cwd=REPO):
    """Run *command* to its end; :return: a :class:`Run`."""
    completed = subprocess.run(
        [str(part) for part in command],
        input=input,
        capture_output=True,
        text=True,
        env=env if env is not None else child_env(),
        cwd=cwd,
        timeout=timeout,
    )
    return Run(list(command), completed.returncode, completed.stdout, completed.stderr)


def run_cli(*args, connect=None, env=None, input=None, timeout=60, module="nodedb"):
    """``python -m nodedb [--connect ADDRESS] ARGS...`` from the working tree."""
    command = [sys.executable, "-m", module]
    if connect is not None:
        command += ["--connect", connect]
    return run([*command, *args], env=env, input=input, timeout=timeout)


def assert_one_line_error(result, code=None, contains=()):
    """*result* failed the way a user error must: non-zero exit (*code* if given), exactly
    one line on stderr, nothing on stdout, and never a traceback."""
    assert TRACEBACK not in result.stderr, str(result)
    assert result.returncode != 0, str(result)
    if code is not None:
        assert result.returncode == code, str(result)
    assert len(result.stderr_lines) == 1, str(result)
    assert result.stdout == "", str(result)
    for text in contains:
        assert text in result.stderr, f"{text!r} not in stderr\n{result}"
    return result.stderr_lines[0]
