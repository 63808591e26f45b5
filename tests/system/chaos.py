"""A fault campaign on real processes: a nemesis kills (-9), freezes (SIGSTOP) or cuts off a
random host of a three-node cluster from the first second of its life, under a steady load of
inserts, updates and gets, and the history is checked afterwards (issue 12, point 4).

One run (:func:`chaos_run`):

1. ``n0`` bootstraps with ``--replicas 3``; the load (``replication_load.py``: one Twisted
   client per node, each failing over to the others) starts as soon as it serves, and once it
   has a first acknowledged write ``n1`` and ``n2`` are started with ``--seed n0`` and the
   nemesis begins: the faults hit the joins, voter changes, replica moves and primary
   handoffs that follow formation.
2. The nemesis follows a schedule drawn from the run's seed (:func:`fault_schedule`): after a
   random gap, a random host gets a random fault for a random time (``kill``: down, then
   started again on its data directory; ``stop``: SIGSTOP then SIGCONT; ``cut``: every packet
   to and from it dropped, then let through, :mod:`.netcut`). One host at a time at most: the
   contract is about losing one host.
3. Once the last fault has healed and every host serves, **stuck** is checked: within
   :data:`STUCK_AFTER` seconds of the heal, a write to every partition must be acknowledged
   through every host. Otherwise the run is stuck, and its report has every host's status and
   log excerpts.
4. The load stops; every element it inserted is read back and scanned, and the history is
   checked (:mod:`.load_history`): **lost** acknowledged writes and **violations** (an element
   whose history is not linearizable, a version that disagrees with an acknowledgement, an
   insert applied twice).

A failing run's report names its seed and its schedule, and how to run it again:
``python bench/chaos.py --first-seed SEED --runs 1`` (timings differ from run to run, so a
replay hits the same faults at the same moments, not necessarily the same interleaving).
"""

import json
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import takewhile

from .harness import TIMEOUT, TRACEBACK, ConnectionClosed, NodeFailed, WaitTimeout, WireClient, read_log, wait_for
from .load_history import LAYOUT, LoadRun, read_back_and_check
from .netcut import VICTIM_UID, VictimNode, private_network_or_reason
from .replicated import PARTITIONS, status

KINDS = ("kill", "stop", "cut")
NODES = 3
#: Seconds after the last fault healed within which every partition must take a write through
#: every host (the issue's definition of stuck).
STUCK_AFTER = 30.0
#: The load: operations per second and at most this many in flight. Modest: two cores run the
#: three nodes, the load and the nemesis.
RATE = 100
IN_FLIGHT = 24
#: Seconds between two faults, and how long one lasts (a killed host: until it is started
#: again). Short and long ones: some heal before failure detection, others after failover.
GAP = (0.3, 2.5)
HOLD = (0.5, 6.0)
#: The first fault comes within this many seconds of the joins' start.
FIRST_GAP = (0.0, 1.0)
PROBE_TYPE = "chaos_probe"
_ADDRESS = re.compile(r"(?<=\d):\d+\b")  # a port in an error line, so that repeats count as one
_LOG_EXCERPT = re.compile(r"changing the group|elected|leader|Unavailable|stuck|Traceback|#error|#critical", re.I)


@dataclass(frozen=True)
class Fault:
    """One fault: *gap* seconds after the previous one healed (or the nemesis began), host
    number *host* gets *kind* for *hold* seconds."""

    gap: float
    host: int
    kind: str
    hold: float

    def __str__(self):
        return f"+{self.gap:.2f}s n{self.host} {self.kind} {self.hold:.2f}s"


def fault_schedule(seed, seconds, kinds=KINDS, hosts=NODES):
    """The faults of the run of *seed*: as many as fit in *seconds* of gaps and holds."""
    rng = random.Random(seed)
    faults, planned, gap = [], 0.0, FIRST_GAP
    while True:
        fault = Fault(round(rng.uniform(*gap), 2), rng.randrange(hosts), rng.choice(kinds), round(rng.uniform(*HOLD), 2))
        planned += fault.gap + fault.hold
        if planned > seconds:
            return faults
        faults.append(fault)
        gap = GAP


class Nemesis:
    """Applies a schedule of :class:`Fault` to running nodes as time passes, one at a time:
    call :meth:`tick` until it returns True (every fault applied and healed).

    :param network: the :class:`~.netcut.PrivateNetwork` the nodes run in (for ``cut``).
    """

    def __init__(self, nodes, schedule, network=None, clock=time.monotonic):
        self.nodes = nodes
        self.schedule = list(schedule)
        self.network = network
        self.clock = clock
        self.began = clock()
        self.events = []  # texts: what happened when, for the report
        self.applied = Counter()
        self.exits = []  # hosts that exited by themselves (or failed to start again)
        self.healed_at = self.began
        self._due = self.began + (self.schedule[0].gap if self.schedule else 0.0)
        self._faulted = None  # (fault, node) while a fault holds
        self._restarting = None  # a killed node started again, until it serves

    def tick(self):
        now = self.clock()
        self._notice_exits()
        if self._restarting is not None:
            if self._serves(self._restarting):
                self._healed(now)
        elif self._faulted is not None:
            if now >= self._due:
                self._heal(now)
        elif self.schedule:
            if now >= self._due:
                self._inject(now)
        else:
            return True
        return False

    def _note(self, now, text):
        self.events.append(f"t={now - self.began:6.2f}s {text}")

    def _inject(self, now):
        fault = self.schedule.pop(0)
        node = self.nodes[fault.host]
        if fault.kind == "kill":
            node.kill()
        elif fault.kind == "stop":
            node.signal(signal.SIGSTOP)
        else:
            self.network.cut(node.host, node.uid)
        self.applied[fault.kind] += 1
        self._faulted = (fault, node)
        self._due = now + fault.hold
        self._note(now, f"{fault.kind} {node.name} for {fault.hold:.2f}s")

    def _heal(self, now):
        fault, node = self._faulted
        self._faulted = None
        if fault.kind == "kill":
            node.launch()
            self._restarting = node
            self._note(now, f"start {node.name} again")
            return
        if fault.kind == "stop":
            node.signal(signal.SIGCONT)
        else:
            self.network.heal()
        self._healed(now)

    def _healed(self, now):
        if self._restarting is not None:
            self._note(now, f"{self._restarting.name} serves again")
        self._restarting = None
        self.healed_at = now
        self._note(now, "healed")
        if self.schedule:
            self._due = now + self.schedule[0].gap

    def all_serve(self):
        """Whether every node serves requests (those started during the run included)."""
        self._notice_exits()
        return all([self._serves(node) for node in self.nodes])

    def _serves(self, node):
        try:
            return node.ready_now()
        except NodeFailed as e:
            self._exited(node, str(e).splitlines()[0])
            return False

    def _notice_exits(self):
        for node in self.nodes:
            killed = self._faulted is not None and self._faulted[1] is node and self._faulted[0].kind == "kill"
            if not killed and node.process is not None and not node.running:
                self._exited(node, f"{node.name} exited by itself with status {node.process.returncode}")

    def _exited(self, node, reason):
        """A host died without being killed: a finding. It is started again so the run goes on."""
        self.exits.append(reason)
        self._note(self.clock(), reason)
        node.launch()


@dataclass
class RunResult:
    """The outcome of one run: what was done and what was found."""

    seed: int
    schedule: list
    cut_off: str = "cut"  # "cut", or why SIGSTOP stood in for the cut
    events: list = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    operations: Counter = field(default_factory=Counter)  # ok / failed / unknown
    lost: int = 0
    violations: int = 0
    stuck: int = 0
    errors: int = 0  # hosts that exited by themselves, and tracebacks or errors in logs
    problems: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self):
        return bool(self.lost or self.violations or self.stuck or self.errors)

    def report(self):
        """Everything needed to understand and replay the run."""
        lines = [
            f"chaos run seed {self.seed}: lost {self.lost}, violations {self.violations}, stuck {self.stuck}, "
            f"errors {self.errors}; faults {dict(self.faults)}; operations {dict(self.operations)}",
            f"replay: python bench/chaos.py --first-seed {self.seed} --runs 1",
            "schedule: " + ", ".join(map(str, self.schedule)),
            *(["cut stood in by SIGSTOP: " + self.cut_off] if self.cut_off != "cut" else []),
            "what happened:",
            *(f"  {event}" for event in self.events),
            *self.problems,
        ]
        return "\n".join(lines)


def start_nodes(processes, network):
    """The three nodes, ports chosen, not started; each under its own uid when *network* can
    cut one off."""
    nodes = []
    for index in range(NODES):
        name = f"n{index}"
        if network is not None:
            node = VictimNode(processes, processes.directory / name, name, uid=VICTIM_UID + index)
            processes.nodes.append(node)
        else:
            node = processes.node(name)
        node.reserve_ports()
        nodes.append(node)
    nodes[0].args += ["--replicas", "3"]
    for node in nodes[1:]:
        node.args += ["--seed", nodes[0].address]
    return nodes


def chaos_run(processes, seed, seconds=25.0, kinds=KINDS, rate=RATE, in_flight=IN_FLIGHT):
    """One run of the campaign in *processes* (a :class:`~.harness.ProcessGroup`, which the
    caller cleans up). :return: a :class:`RunResult`."""
    started = time.monotonic()
    network, reason = private_network_or_reason() if "cut" in kinds else (None, None)
    if network is None and "cut" in kinds:
        kinds = tuple("stop" if kind == "cut" else kind for kind in kinds)
    result = RunResult(seed, fault_schedule(seed, seconds, kinds), cut_off=reason or "cut")
    try:
        nodes = start_nodes(processes, network)
        nodes[0].start()
        load = LoadRun(processes, processes.directory, nodes, f"chaos{seed}", rate=rate, in_flight=in_flight, seed=seed)
        load.wait_writes(1, what="a first write on the bootstrap host")
        for node in nodes[1:]:
            node.launch()
        nemesis = Nemesis(nodes, result.schedule, network)
        try:
            wait_for(nemesis.tick, timeout=seconds + 2 * TIMEOUT, what="the fault schedule", interval=0.05)
            wait_for(nemesis.all_serve, what="every host to serve")
        finally:
            result.events, result.faults = nemesis.events, nemesis.applied
            result.problems += nemesis.exits
        stuck = unwritable(nodes, deadline=nemesis.healed_at + STUCK_AFTER)
        if stuck:
            result.stuck = 1
            result.problems += [
                f"stuck: {STUCK_AFTER:.0f} s after the last heal, no write through {name} to {len(partitions)} partitions "
                f"{partitions[:8]}{' ...' if len(partitions) > 8 else ''} (last error: {error})"
                for name, (partitions, error) in stuck.items()
            ]
            result.problems += cluster_report(nodes)
        records = load.stop()
        result.operations = Counter({True: "ok", False: "failed", None: "unknown"}[r["ok"]] for r in records)
        writable = [node for node in nodes if node.name not in stuck] or nodes
        check_history_of(result, load, records, writable[seed % len(writable)])
        logged = {node.name: node.problems_of_every_run() for node in nodes}
        result.errors = len(nemesis.exits) + sum(len(lines) for lines in logged.values())
        result.problems += logged_summary(logged, nodes)
    finally:
        if network is not None:
            network.__exit__(None, None, None)
        result.seconds = time.monotonic() - started
    return result


def check_history_of(result, load, records, reader):
    """Fill *result*'s lost and violations from the load's history, read back through *reader*."""
    try:
        found = read_back_and_check(load, records, reader)
    except (WaitTimeout, OSError) as e:
        result.problems.append(f"the history could not be checked: the final reads failed ({e})")
        result.stuck = 1
        return
    result.lost, result.violations = len(found.lost), len(found.violations)
    if found.lost or found.violations:
        result.problems.append(found.problems())


def unwritable(nodes, deadline):
    """Try a write to every partition through every node until each is acknowledged or
    *deadline* (monotonic) passes. :return: ``{node name: (partitions never written, the last
    error)}``, empty when every write went through."""
    left = {node.name: set(range(PARTITIONS)) for node in nodes}
    errors = {}
    by_name = {node.name: node for node in nodes}
    while True:
        for name, partitions in left.items():
            if partitions:
                timeout = max(1.0, min(5.0, deadline - time.monotonic()))
                written, errors[name] = probe(by_name[name], partitions, timeout)
                partitions -= written
        if not any(left.values()) or time.monotonic() >= deadline:
            return {name: (sorted(partitions), errors[name]) for name, partitions in left.items() if partitions}


def probe(node, partitions, timeout):
    """Insert one element near each of *partitions* through *node*, all at once. :return: the
    partitions whose insert was acknowledged, and the last error seen (None if none)."""
    written, error = set(), None
    try:
        with WireClient(node.address, timeout=timeout) as client:
            asked = {client.request("insert", type=PROBE_TYPE, doc={"p": p}, near=LAYOUT.make(p, 1)): p for p in partitions}
            for _ in asked:
                reply = client.receive()
                if "ok" in reply:
                    written.add(asked[reply["id"]])
                else:
                    error = f"{reply['error'].get('type')}: {reply['error'].get('message')}"
                    assert reply["error"].get("type") != "InvalidRequest", f"the probe is wrong: {error}"
    except (OSError, ConnectionClosed) as e:
        error = repr(e)  # a node that cannot be reached or hangs up took none of the writes left
    return written, error


def logged_summary(logged, nodes):
    """The distinct error lines *logged* (``{node name: lines}``), counted, with the first
    traceback of each node in full."""
    lines = []
    for node in nodes:
        distinct = Counter(_ADDRESS.sub("*", line.split(" ", 1)[-1]) for line in logged[node.name] if TRACEBACK not in line)
        lines += [f"{node.name} logged {count} times: {line}" for line, count in distinct.most_common(5)]
        for path in node.log_paths():
            text = read_log(path)
            if TRACEBACK in text:
                block = text[text.index(TRACEBACK) :].splitlines()
                first = [block[0], *takewhile(lambda line: line.strip() and line.startswith("\t"), block[1:])]
                lines += [f"{node.name}: first traceback ({path.name}):", *first[:30]]
                break
    return lines


def cluster_report(nodes):
    """Every host's view of Voting and replication, and the lines of its log that tell about
    them, for a stuck run."""
    lines = []
    for node in nodes:
        try:
            view = status(node, timeout=2.0)
        except (OSError, AssertionError) as e:
            lines.append(f"--- {node.name} ({node.host_id}): no /status ({e!r})")
        else:
            voting, replication = view.get("voting") or {}, view.get("replication") or {}
            primaries = replication.get("primary", {})
            summary = {
                "leader": voting.get("leader"),
                "term": voting.get("term"),
                "role": voting.get("role"),
                "voters": voting.get("voters"),
                "learners": voting.get("learners"),
                "members": sorted(voting.get("members", {})),
                "partitions led (ready)": sum(1 for p in primaries.values() if p.get("ready")),
                "inactive": len(replication.get("inactive", [])),
                **({"health": view["health"]} if "health" in view else {}),
            }
            lines.append(f"--- {node.name} ({node.host_id}) status: {json.dumps(summary)}")
        log = node.log().splitlines()
        lines += ["  " + line for line in [line for line in log if _LOG_EXCERPT.search(line)][-15:]]
        lines += ["  (last lines)", *("  " + line for line in log[-10:])]
    return lines
