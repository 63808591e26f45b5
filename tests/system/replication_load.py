"""A steady mix of inserts, updates and linearizable gets against a cluster, recording a history.

    python replication_load.py --connect HOST:PORT[,HOST:PORT...] --out HISTORY --tag TAG
                               [--type T] [--rate 300] [--in-flight 48] [--inserts 0.3]
                               [--spread 0.5] [--partitions 64] [--timeout 5]
                               [--stop-file PATH] [--duration 120] [--seed 1]

It opens one client per address (each client starts with its own address and fails over to
the others, so the load reaches every node) and issues about RATE operations a second, at
most IN_FLIGHT at a time, each client its share of them (a client whose node froze does not
hold up the others). The operations are inserts of new elements, updates of elements it
inserted (never two writes of one element in flight at once, so each element's writes are a
sequence) and gets of any element it inserted. A share of the inserts (``--spread``) goes
``near`` a random partition, so that every partition holds elements and gets updates; the
others go where the receiving host puts them. It stops when STOP_FILE exists or after
DURATION seconds, waits for what is in flight, and exits 0.

Every finished operation is one JSON line in HISTORY, flushed at once::

    {"op": "insert" | "update" | "get", "id": ID or null, "doc": DOC or null, "version": V or null,
     "start": T0, "end": T1, "ok": true | false | null, "error": NAME or null, "via": I}

``start`` and ``end`` are ``time.monotonic()`` (the same clock in every process of the
machine), taken before the request is sent and after its answer arrived. ``ok`` is true when
the cluster acknowledged the operation, false when it certainly did not happen (an error
answered by a node: a remote Unavailable, Conflict, NotFound...), and null when the outcome is
unknown (a Timeout, a lost connection). A get's ``doc`` is what it read (null with ``error:
"NotFound"`` and ``ok: true``: the element was absent). An insert whose outcome is unknown has
no id. ``via`` is the index in ``--connect`` of the client's first address.

Document of element N at its C-th write (0: the insert):
``{"tag": TAG, "n": N, "c": C, "pad": ...}``; every write of an element writes a value never
written before. The last line is ``{"done": true, "counts": {...}}``.
"""

import argparse
import json
import os
import random
import sys
import time

from twisted.internet import defer, task
from twisted.python.failure import Failure

from nodedb import errors
from nodedb.client import connect
from nodedb.ids import IdLayout


def document(tag, n, c):
    return {"tag": tag, "n": n, "c": c, "pad": "x" * ((n * 7 + c) % 61)}


def outcome_of(failure):
    """``(ok, error name)`` of a failed request: False if it certainly did not happen."""
    error = failure.value
    if isinstance(error, errors.NodeDBError):
        name = error.wire_name if not isinstance(error, errors.ConnectionLost) else "ConnectionLost"
        if getattr(error, "remote", False) and not isinstance(error, errors.Timeout) and error.wire_name != "NodeDBError":
            return False, name
        return None, name
    return None, repr(error)


class Load:
    def __init__(self, reactor, clients, args, output):
        self.reactor = reactor
        self.clients = clients
        self.args = args
        self.output = output
        self.rng = random.Random(args.seed)
        self.layout = IdLayout()
        self.next_n = 0
        self.elements = []  # [{"id", "n", "c", "busy"}] of acknowledged inserts
        self.in_flight = 0
        self.busy = [0] * len(clients)  # requests in flight per client
        self.credit = 0.0
        self.stopping = False
        self.done = defer.Deferred()
        self.counts = {}
        self.last_tick = time.monotonic()

    def count(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1

    def record(self, **entry):
        self.output.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.output.flush()

    def client(self):
        """A client with room for one more request, or None: each has its share of IN_FLIGHT,
        so that a client whose node froze (its requests hang until they time out) does not
        starve the others."""
        share = -(-self.args.in_flight // len(self.clients))
        free = [i for i, busy in enumerate(self.busy) if busy < share]
        return self.rng.choice(free) if free else None

    def tick(self):
        now = time.monotonic()
        if self.stopping:
            return
        if (self.args.stop_file and os.path.exists(self.args.stop_file)) or now >= self.deadline:
            self.stop()
            return
        self.credit = min(self.credit + (now - self.last_tick) * self.args.rate, float(self.args.in_flight))
        self.last_tick = now
        while self.credit >= 1 and self.in_flight < self.args.in_flight:
            self.credit -= 1
            self.issue()

    def issue(self):
        via = self.client()
        if via is None:
            return
        roll = self.rng.random()
        if not self.elements or roll < self.args.inserts:
            self.insert(via)
        elif roll < self.args.inserts + (1 - self.args.inserts) / 2:
            idle = self.idle_element()
            if idle is None:
                self.insert(via)
            else:
                self.update(via, idle)
        else:
            self.get(via, self.rng.choice(self.elements))

    def idle_element(self):
        """A random element with no write in flight (None if a few tries find none)."""
        for _ in range(8):
            element = self.rng.choice(self.elements)
            if not element["busy"]:
                return element
        return None

    def launch(self, via, call, finished):
        """Run ``call()`` (a Deferred) and ``finished(result, start)`` when it is done."""
        self.in_flight += 1
        self.busy[via] += 1
        start = time.monotonic()  # before the request can leave
        d = call()

        def settle(result):
            self.in_flight -= 1
            self.busy[via] -= 1
            if self.stopping and self.in_flight == 0 and not self.done.called:
                self.done.callback(None)
            return result

        d.addBoth(finished, start)
        d.addBoth(settle)
        d.addErrback(self.crashed)

    def crashed(self, failure):
        self.record(op="crash", error=failure.getTraceback())
        self.count("crash")

    def insert(self, via):
        n = self.next_n
        self.next_n += 1
        doc = document(self.args.tag, n, 0)
        near = None
        if self.rng.random() < self.args.spread:
            near = self.layout.make(self.rng.randrange(self.args.partitions), 1)

        def finished(result, start):
            end = time.monotonic()
            if isinstance(result, Failure):
                ok, error = outcome_of(result)
                self.record(op="insert", id=None, doc=doc, version=None, start=start, end=end, ok=ok, error=error, via=via)
                self.count(f"insert {error}")
                return None
            self.elements.append({"id": result, "n": n, "c": 0, "busy": False})
            self.record(op="insert", id=result, doc=doc, version=None, start=start, end=end, ok=True, error=None, via=via)
            self.count("insert ok")
            return None

        self.launch(via, lambda: self.clients[via].insert(self.args.type, doc, near=near), finished)

    def update(self, via, element):
        element["busy"] = True
        element["c"] += 1  # every write of an element writes a new value, acknowledged or not
        doc = document(self.args.tag, element["n"], element["c"])

        def finished(result, start):
            end = time.monotonic()
            element["busy"] = False
            if isinstance(result, Failure):
                ok, error = outcome_of(result)
                self.record(op="update", id=element["id"], doc=doc, version=None, start=start, end=end, ok=ok, error=error, via=via)
                self.count(f"update {error}")
                return None
            self.record(op="update", id=element["id"], doc=doc, version=result, start=start, end=end, ok=True, error=None, via=via)
            self.count("update ok")
            return None

        self.launch(via, lambda: self.clients[via].update(self.args.type, element["id"], doc), finished)

    def get(self, via, element):
        def finished(result, start):
            end = time.monotonic()
            if isinstance(result, Failure):
                if result.check(errors.NotFound):
                    self.record(op="get", id=element["id"], doc=None, version=None, start=start, end=end, ok=True, error="NotFound", via=via)
                    self.count("get NotFound")
                    return None
                _ok, error = outcome_of(result)
                # A failed read tells nothing: it is recorded as not having happened.
                self.record(op="get", id=element["id"], doc=None, version=None, start=start, end=end, ok=False, error=error, via=via)
                self.count(f"get {error}")
                return None
            doc, version = result
            self.record(op="get", id=element["id"], doc=doc, version=version, start=start, end=end, ok=True, error=None, via=via)
            self.count("get ok")
            return None

        self.launch(via, lambda: self.clients[via].get(self.args.type, element["id"]), finished)

    def start(self):
        self.deadline = time.monotonic() + self.args.duration
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = self.reactor
        self.loop.start(0.01)
        return self.done

    def stop(self):
        self.stopping = True
        if self.loop.running:
            self.loop.stop()
        if self.in_flight == 0 and not self.done.called:
            self.done.callback(None)


async def main_async(reactor, args):
    addresses = [a for a in args.connect.split(",") if a]
    output = open(args.out, "w", encoding="utf-8")
    clients = []
    for index in range(len(addresses)):
        rotated = addresses[index:] + addresses[:index]
        clients.append(await connect(reactor, rotated, timeout=args.timeout))
    load = Load(reactor, clients, args, output)
    await load.start()
    output.write(json.dumps({"done": True, "counts": load.counts}) + "\n")
    output.close()
    for client in clients:
        await client.close()


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="comma-separated HOST:PORT of the nodes")
    parser.add_argument("--out", required=True, help="the history file (JSON lines)")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--type", default="item")
    parser.add_argument("--rate", type=float, default=300.0, help="operations per second (default 300)")
    parser.add_argument("--in-flight", type=int, default=48, help="most operations at once (default 48)")
    parser.add_argument("--inserts", type=float, default=0.3, help="share of inserts (default 0.3); the rest is half updates, half gets")
    parser.add_argument("--spread", type=float, default=0.5,
                        help="share of inserts placed near a random partition, so that every partition gets elements (default 0.5)")
    parser.add_argument("--partitions", type=int, default=64, help="the cluster's partition count (default 64)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds each request may take (default 5)")
    parser.add_argument("--stop-file", default=None, help="stop once this file exists")
    parser.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds anyway (default 120)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main_async(reactor, arguments)))
