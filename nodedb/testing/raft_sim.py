"""A seeded simulation of Raft members exchanging messages, with faults and safety checks.

It drives :class:`nodedb.voting.raft.Raft` alone (no Twisted, no storage): each member
persists what its :class:`~nodedb.voting.raft.Ready` asks before its messages leave, a crash
drops everything that was not persisted, and the network drops, duplicates, delays and
reorders messages and can be partitioned. After every step the run checks Raft's safety
properties; :func:`run` returns what it saw, and :class:`SafetyViolation` names the seed.
"""

import random
from dataclasses import dataclass, field

from nodedb.voting.raft import LEADER, ChangeInProgress, Config, HardState, NotLeader, Raft, Snapshot


class SafetyViolation(AssertionError):
    """Two leaders in one term, or members that applied different entries at one index."""


class Stuck(AssertionError):
    """After the faults stopped, the members did not all catch up with the leader."""


@dataclass
class _Disk:
    hard_state: HardState = HardState()
    log: list = field(default_factory=list)
    snapshot: object = None


@dataclass
class Outcome:
    seed: int
    steps: int
    leaders: dict  # term -> leader
    simulation: "RaftSimulation"
    proposals: int
    elections: int


class RaftSimulation:
    """Members ``m0..m{n-1}`` of one Raft group.

    :param faults: drop, duplicate and reorder probabilities.
    """

    def __init__(self, seed, members=5, drop=0.05, duplicate=0.02, reorder=0.1, compact_every=40, pre_vote=True):
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = [f"m{i}" for i in range(members)]
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.compact_every = compact_every
        self.pre_vote = pre_vote
        start = Snapshot(0, 0, Config(frozenset(self.ids)))
        self.disks = {i: _Disk(snapshot=start) for i in self.ids}
        self.nodes = {}
        self.in_flight = []  # (deliver at step, message)
        self.cut = set()
        self.step_count = 0
        self.leaders = {}
        self.applied = {i: [] for i in self.ids}
        self.history = {}  # index -> the (index, term, kind, data) every member applied there
        self.proposals = 0
        for node_id in self.ids:
            self.nodes[node_id] = self._boot(node_id)

    def _boot(self, node_id):
        """Start a member from what its disk holds (all it has after a crash)."""
        disk = self.disks[node_id]
        node = Raft(
            node_id,
            random.Random(self.rng.random()),
            hard_state=disk.hard_state,
            log=list(disk.log),
            snapshot=disk.snapshot,
            pre_vote=self.pre_vote,
        )
        # What it applied past its snapshot is gone with its memory; it applies it again.
        self.applied[node_id] = self.applied[node_id][: node.applied]
        self._restore(node_id, node.applied)
        return node

    # -- the network ------------------------------------------------------------------------

    def _send(self, message):
        if (message.source, message.target) in self.cut or self.rng.random() < self.drop:
            return
        delay = 1 + (self.rng.randrange(8) if self.rng.random() < self.reorder else 0)
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.in_flight.append((self.step_count + delay, message))

    def partition(self, group):
        other = [i for i in self.ids if i not in group]
        self.cut = {(a, b) for a in group for b in other} | {(b, a) for a in group for b in other}

    def heal(self):
        self.cut = set()

    # -- members ----------------------------------------------------------------------------

    def crash(self, node_id):
        self.nodes[node_id] = None

    def restart(self, node_id):
        self.nodes[node_id] = self._boot(node_id)

    def _process(self, node_id):
        node = self.nodes[node_id]
        ready = node.ready()
        if ready.empty():
            return
        disk = self.disks[node_id]
        if ready.snapshot is not None:
            disk.snapshot = ready.snapshot
            disk.log = [e for e in disk.log if e.index > ready.snapshot.index]
        if ready.truncate_from is not None:
            disk.log = [e for e in disk.log if e.index < ready.truncate_from]
        if ready.entries:
            first = ready.entries[0].index
            disk.log = [e for e in disk.log if e.index < first] + list(ready.entries)
        if ready.hard_state is not None:
            disk.hard_state = ready.hard_state
        for message in ready.messages:
            self._send(message)
        if ready.snapshot is not None:
            self._restore(node_id, ready.snapshot.index)
        for entry in ready.committed:
            self._apply(node_id, entry)
        node.advance(ready)
        if self.compact_every and node.applied - node.snapshot.index >= self.compact_every:
            node.compact(node.applied, len(self.applied[node_id]))
            self._process(node_id)

    def _restore(self, node_id, index):
        """A snapshot replaced the member's state machine up to *index*."""
        applied = self.applied[node_id]
        while len(applied) < index:
            applied.append(self.history[len(applied) + 1])

    def _apply(self, node_id, entry):
        """Check state machine safety: every member applies the same entry at each index,
        each index once, in order."""
        record = (entry.index, entry.term, entry.kind, repr(entry.data))
        applied = self.applied[node_id]
        if entry.index != len(applied) + 1:
            raise SafetyViolation(
                f"{node_id} applied index {entry.index} after {len(applied)}; seed {self.seed}"
            )
        applied.append(record)
        agreed = self.history.setdefault(entry.index, record)
        if agreed != record:
            raise SafetyViolation(
                f"{node_id} applied {record} at index {entry.index} where others applied {agreed}; seed {self.seed}"
            )

    # -- running ----------------------------------------------------------------------------

    def step(self):
        self.step_count += 1
        due = [m for t, m in self.in_flight if t <= self.step_count]
        self.in_flight = [(t, m) for t, m in self.in_flight if t > self.step_count]
        self.rng.shuffle(due)
        for message in due:
            node = self.nodes.get(message.target)
            if node is not None:
                node.step(message)
        for node_id, node in self.nodes.items():
            if node is None:
                continue
            node.tick()
            self._process(node_id)
            if node.state == LEADER:
                previous = self.leaders.setdefault(node.term, node_id)
                if previous != node_id:
                    raise SafetyViolation(f"two leaders in term {node.term}: {previous} and {node_id}; seed {self.seed}")

    def propose(self):
        leaders = [n for n in self.nodes.values() if n is not None and n.state == LEADER]
        if not leaders:
            return
        try:
            leaders[-1].propose(f"op{self.proposals}")
            self.proposals += 1
        except NotLeader:
            pass
        self._process(leaders[-1].id)

    def change_membership(self):
        leaders = [n for n in self.nodes.values() if n is not None and n.state == LEADER]
        if not leaders:
            return
        leader = leaders[-1]
        voters = set(leader.config.voters)
        candidates = [i for i in self.ids if i not in voters]
        if candidates and (len(voters) < 3 or self.rng.random() < 0.5):
            voters.add(self.rng.choice(candidates))
        elif len(voters) > 3:
            voters.discard(self.rng.choice(sorted(voters - {leader.id})))
        try:
            leader.propose_config(voters, learners=set(self.ids) - voters)
        except (ChangeInProgress, NotLeader, ValueError):
            return
        self._process(leader.id)


def run(seed, steps=600, members=5):
    """One randomized run: proposals, crashes, restarts, partitions, membership changes.

    :return: an :class:`Outcome`; :raise SafetyViolation: if any safety property broke;
        :raise Stuck: if the members do not catch up once the faults stop.
    """
    # Half the runs without pre-vote: it hides the plain election paths behind its own checks.
    sim = RaftSimulation(seed, members, drop=0.1, duplicate=0.05, reorder=0.2, pre_vote=seed % 2 == 0)
    rng = random.Random(seed * 7919 + 1)
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.3:
            sim.propose()
        elif roll < 0.33:
            up = [i for i, n in sim.nodes.items() if n is not None]
            # Crash leaders more often than others: that is where the hard cases are.
            leaders = [i for i in up if sim.nodes[i].state == LEADER]
            if up:
                sim.crash(rng.choice(leaders) if leaders and rng.random() < 0.5 else rng.choice(up))
        elif roll < 0.40:
            down = [i for i, n in sim.nodes.items() if n is None]
            if down:
                sim.restart(rng.choice(down))
        elif roll < 0.42 and members > 1:
            sim.partition(rng.sample(sim.ids, rng.randrange(1, members)))
        elif roll < 0.45:
            sim.heal()
        elif roll < 0.46:
            sim.change_membership()
        sim.step()
    # Let the group settle, everything up, network whole, and check everyone caught up.
    sim.heal()
    for node_id, node in list(sim.nodes.items()):
        if node is None:
            sim.restart(node_id)
    for _ in range(400):
        sim.step()
    sim.propose()
    for _ in range(200):
        sim.step()
    lengths = {node_id: len(applied) for node_id, applied in sim.applied.items()}
    if len(set(lengths.values())) != 1 or max(lengths.values()) < len(sim.history):
        raise Stuck(f"members did not catch up: applied {lengths} of {len(sim.history)}; seed {seed}")
    return Outcome(seed, sim.step_count, dict(sim.leaders), sim, sim.proposals, len(sim.leaders))
