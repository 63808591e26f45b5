"""Seeded client workloads and fault schedules for the simulated cluster, recorded as a
history that :mod:`nodedb.testing.history` checks.

::

    cluster = SimCluster(seed, replicas=3)
    cluster.start_hosts(5)
    cluster.run_until(cluster.replicated, timeout=60)
    workload = Workload(cluster, random.Random(seed))
    workload.start()
    FaultSchedule(cluster, random.Random(seed)).run(40.0)
    workload.stop()
    report = workload.check()       # reads every element back, then checks the history
"""

import itertools
from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.testing.history import ABSENT, Operation, check_linearizable, lost_writes


def outcome_of(failure):
    """Whether a failed write certainly did not happen (False) or may have (None)."""
    error = failure.value
    if isinstance(error, (errors.NotFound, errors.Conflict, errors.InvalidRequest)):
        return False
    if isinstance(error, errors.Unavailable) and error.remote:
        return False
    return None


@dataclass
class Report:
    operations: int
    acknowledged: int
    unknown: int
    lost: list
    elements: int


class Workload:
    """*clients* simulated clients, each doing one operation at a time on a shared set of
    elements: inserts, updates, deletes and linearizable reads, recorded with their start and
    end times on the simulated clock. A client whose operation failed waits *backoff* seconds
    before the next, as real clients do: while no host can take writes (before the cluster
    has formed, say) it would otherwise spin on instant refusals."""

    def __init__(self, cluster, rng, clients=4, record_type="item", max_elements=12, backoff=0.05):
        self.cluster = cluster
        self.rng = rng
        self.clients = [cluster.client() for _ in range(clients)]
        self.record_type = record_type
        self.max_elements = max_elements
        self.backoff = backoff
        self.keys = []
        self.history = []
        self.running = False
        self._values = itertools.count(1)
        self._loops = []

    def start(self):
        self.running = True
        for index, client in enumerate(self.clients):
            self._loops.append(defer.ensureDeferred(self._loop(index, client)))

    def stop(self):
        self.running = False

    def finished(self):
        return all(loop.called for loop in self._loops)

    async def _loop(self, index, client):
        while self.running:
            if not await self._one(index, client):
                await task.deferLater(self.cluster.clock, self.backoff, lambda: None)

    async def _one(self, index, client):
        """One operation; :return: whether it succeeded."""
        clock = self.cluster.clock
        roll = self.rng.random()
        if not self.keys or (roll < 0.15 and len(self.keys) < self.max_elements):
            value = {"client": index, "n": next(self._values)}
            start = clock.seconds()
            try:
                key = await client.insert(self.record_type, value)
            except errors.NodeDBError:
                return False  # an insert whose id we never learnt touches no element we check
            self.keys.append(key)
            self.history.append(Operation(key, "write", value, start, clock.seconds(), True))
            return True
        key = self.rng.choice(self.keys)
        start = clock.seconds()
        if roll < 0.55:
            value = {"client": index, "n": next(self._values)}
            try:
                await client.update(self.record_type, key, value)
                ok = True
            except errors.NodeDBError:
                ok = outcome_of(Failure())
            self.history.append(Operation(key, "write", value, start, clock.seconds(), ok))
            return ok is True
        if roll < 0.6:
            try:
                await client.delete(self.record_type, key)
                ok = True
            except errors.NodeDBError:
                ok = outcome_of(Failure())
            self.history.append(Operation(key, "delete", None, start, clock.seconds(), ok))
            return ok is True
        try:
            doc, _version = await client.get(self.record_type, key)
        except errors.NotFound:
            doc = ABSENT
        except errors.NodeDBError:
            return False  # a failed read says nothing
        self.history.append(Operation(key, "read", doc, start, clock.seconds(), True))
        return True

    def check(self, timeout=60.0):
        """Read every element back (linearizably), then check the history.

        :return: a :class:`Report`; :raise NotLinearizable: if an element's history cannot
            be ordered.
        """
        client = self.cluster.client()
        final = {}
        done = []

        async def read_all():
            for key in self.keys:
                try:
                    doc, _version = await client.get(self.record_type, key)
                    final[key] = doc
                except errors.NotFound:
                    final[key] = ABSENT

        defer.ensureDeferred(read_all()).addBoth(done.append)
        self.cluster.run_until(lambda: done, timeout=timeout)
        if not done:
            raise AssertionError("the final reads did not finish")
        if isinstance(done[0], Failure):
            done[0].raiseException()
        lost = lost_writes(self.history, final)
        now = self.cluster.clock.seconds()
        reads = [Operation(key, "read", value, now, now, True) for key, value in final.items()]
        check_linearizable(self.history + reads)
        return Report(
            operations=len(self.history),
            acknowledged=sum(1 for op in self.history if op.kind != "read" and op.ok is True),
            unknown=sum(1 for op in self.history if op.ok is None),
            lost=lost,
            elements=len(self.keys),
        )


class FaultSchedule:
    """Seeded faults over a run: crash and restart the busiest primary, cut a host off,
    pause one, add a host (with ``"join"`` among *kinds*), with message loss and reordering throughout (no duplication: peers talk over TCP,
    which never delivers a request twice; retries, the real source of repeats, are the
    client's and the router's business)."""

    def __init__(self, cluster, rng, kinds=("crash", "partition", "pause")):
        self.cluster = cluster
        self.rng = rng
        self.kinds = kinds
        self.events = []

    def run(self, seconds, gap=(3.0, 6.0), outage=(2.0, 8.0)):
        cluster = self.cluster
        end = cluster.clock.seconds() + seconds
        while cluster.clock.seconds() < end:
            cluster.run(self.rng.uniform(*gap))
            kind = self.rng.choice(self.kinds)
            busiest = cluster.busiest_primary() if self.rng.random() < 0.7 else None
            victim = busiest or self.rng.choice(cluster.live())
            length = self.rng.uniform(*outage)
            self.events.append((round(cluster.clock.seconds(), 3), kind, victim.name, round(length, 3)))
            if kind == "join":
                # A new host: copies (and, once it has caught up, primaries) move to it while
                # the other faults go on.
                joiner = cluster.add_host(seeds=[victim.address])
                self.events[-1] = (self.events[-1][0], kind, joiner.name, 0.0)
                cluster.run(length)
            elif kind == "crash":
                cluster.crash(victim)
                cluster.run(length)
                cluster.restart(victim)
            elif kind == "partition":
                others = [h.host for h in cluster.hosts if h is not victim]
                cluster.network.partition([victim.host], others)
                cluster.run(length)
                cluster.network.heal()
            else:
                cluster.network.pause(victim.host)
                cluster.run(length)
                cluster.network.resume(victim.host)
