"""Throughput, latency and failover of a three-node nodedb cluster on loopback (with --spare
also the loss, for good, of one host of four).

    python bench/cluster.py [--count 20000] [--inflight 64] [--doc-size 100]
                            [--client both|aware|plain] [--outage-writes 5000]
                            [--repeat 1] [--json] [--keep] [--spare [--remove-after 10]]

Each run starts three real ``twistd -n nodedb`` processes on their own loopback addresses
(127.0.0.x) with fresh data directories: the first bootstraps with ``--replicas 3``, the
other two join through it, and the run waits until replication is complete (every partition
has a ready primary and two followers caught up, three Voting voters) and until Voting has
stopped moving primaries to even out the load (no change for 3 s). Then, from this
process, through nodedb.client (three clients, each given the nodes in another order,
requests spread over them):

1. COUNT inserts, then COUNT linearizable gets of the ids they returned, then COUNT updates
   of them, INFLIGHT requests in flight: ops/s, p50 and p99 latency, and the CPU of the
   client and of the three nodes. The gets and the updates take the ids in a random order
   (the same in every run), as a program that reads and writes what others inserted does:
   the first node of a plain client leads the partition of a third of them. (An insert
   without ``near`` is taken by whichever host receives it, in a partition it leads, so no
   client's inserts take an extra hop.) With --client both (the default) this is done twice on the same cluster, by plain clients
   (``partition_aware=False``: each sends everything to its first node, which forwards what
   belongs to another primary: two thirds of the gets) and by partition-aware clients (each
   request on an element straight to its partition's primary), in alternate order from one
   run to the next, and the ratio of the two is printed; --client aware or plain does one.
   Each client first makes WARM_UP inserts (not measured; the aware ones open their
   connections to the primaries then). The phases below use plain clients, so that
   "through the survivors" and "through the restarted host" stay true.
2. Failover: kill -9 of the host that is primary of the most partitions. From that instant every partition is probed
   with inserts (``near`` an id of the partition) through the two survivors, a new probe per
   partition every PROBE_EVERY seconds. Of the partitions the host led: the time until the
   first, and until every one, acknowledged a write again (a new primary was elected for it,
   with a majority of its replicas); of the others: until every one acknowledged a write
   (they should not notice).
3. Catch-up: OUTAGE_WRITES more inserts spread over all partitions while the host is down,
   then the host is restarted on its data directory: the time from the restart until it
   serves requests, and until replication is complete again (every partition: a full replica
   set, every follower at its primary's last commit, no host reporting a partition inactive).

4. Only with --spare, on a fresh cluster of FOUR nodes (``--replicas 3``, every node started
   with ``--remove-after REMOVE_AFTER``), formed as above: SPARE_WRITES inserts spread over
   all partitions, then kill -9 of the host that leads the most partitions, which is NOT
   restarted. From the kill: (a) failover, the time until every partition acknowledged a
   write again (probed as in 2); (b) removal, until no live node lists the host among the
   Voting members; (c) restoration, until replication is complete again without it: every
   partition has one ready primary and two followers, all on live hosts, every follower at
   its primary's last commit, nothing inactive, three voters, all live. (c) includes
   REMOVE_AFTER: the host keeps its place in the replica sets until it is removed (copies
   that rebalancing adds meanwhile cannot replace it before that). At the end a sample of
   the writes made before the kill is read back (linearizable gets) through the live nodes.

With --repeat K every figure printed is the median of K runs (a new cluster each).
"""

import argparse
import http.client
import itertools
import json
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from single_node import (  # noqa: E402  (single_node also puts the working tree first on sys.path)
    BenchError,
    Child,
    add_run_options,
    check_setup,
    cpu_seconds,
    drive,
    environment,
    make_document,
    median_tree,
    runs_summary,
    phase_figures,
    positive,
    run_bench,
)

from twisted.internet import defer, task, threads  # noqa: E402

from nodedb.client import connect  # noqa: E402
from nodedb.errors import NodeDBError  # noqa: E402
from nodedb.ids import IdLayout  # noqa: E402
from nodedb.security import ca  # noqa: E402
from nodedb.voting import policy  # noqa: E402

RECORD_TYPE = "bench"
NODES = 3
REPLICAS = 3
PARTITIONS = 64
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
READY_DEADLINE = 30.0  # seconds a node may take to serve /status
FORM_DEADLINE = 90.0  # seconds the cluster may take to replicate completely
FAILOVER_DEADLINE = 60.0  # seconds every partition may take to accept writes after the kill
CATCH_UP_DEADLINE = 120.0  # seconds the restarted host may take to catch up
PROBE_EVERY = 0.05  # seconds between probes of one partition
PROBE_TIMEOUT = 2.0  # seconds one probe may take
POLL_EVERY = 0.05  # seconds between /status polls
BALANCE_QUIET = 3.0  # seconds without a primary move after which the primaries count as balanced
SPARE_NODES = 4  # --spare: nodes of the cluster whose killed host stays down
SPARE_WRITES = 5_000  # --spare: inserts spread over every partition before the kill
REMOVAL_DEADLINE = 60.0  # --spare: seconds past --remove-after the removal may take
RESTORE_DEADLINE = 120.0  # --spare: seconds past --remove-after full replication may take to return
SPARE_SAMPLE = 500  # --spare: writes from before the kill read back at the end
LAYOUT = IdLayout()
#: The clients --client compares: their partition_aware option.
CLIENT_KINDS = {"plain": False, "aware": True}
WARM_UP = 300  # inserts before the measured phases, through each kind of client
MAP_DEADLINE = 10.0  # seconds a partition-aware client may take to get the partition map
SHUFFLE_SEED = 14  # the random order in which the gets and updates take the inserted ids
PHASES = ("insert", "get", "update")


def voter_count(members):
    """The Voting voters *members* hosts settle on: the largest odd number up to 5."""
    return policy.voter_count(members, policy.VotingSettings.max_voters)


# -- the nodes ------------------------------------------------------------------------------


def loopback_hosts(count):
    """*count* distinct loopback addresses, away from 127.0.0.1 and from other runs."""
    first = 2 + os.getpid() % 200
    return [f"127.0.0.{first + i}" for i in range(count)]


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Node:
    """One ``twistd -n nodedb`` on its own loopback address, restartable on the same data
    directory and ports."""

    def __init__(self, name, host, work_dir, args):
        self.name = name
        self.host = host
        self.port = free_port(host)
        self.admin_port = free_port(host)
        self.work_dir = work_dir
        self.data_dir = os.path.join(work_dir, name)
        self.args = list(args)
        self.runs = 0
        self.child = None
        self.host_id = None

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def start(self):
        self.runs += 1
        argv = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "nodedb",
            "--data",
            self.data_dir,
            "--listen",
            f"tcp:{self.port}:interface={self.host}",
            "--admin",
            f"tcp:{self.admin_port}:interface={self.host}",
            *self.args,
        ]
        self.child = Child(f"{self.name} (run {self.runs})", argv, os.path.join(self.work_dir, f"{self.name}.{self.runs}.log"))

    def kill(self):
        """kill -9 and wait for the exit."""
        self.child.proc.send_signal(signal.SIGKILL)
        self.child.proc.wait()
        self.child.stop()  # closes the log


def get_json(host, port, path, timeout, https=None):
    """GET *path* of an admin site (blocking, in a thread): ``(HTTP status, JSON body)``, or
    ``(None, None)`` if the node does not answer. *https*: the SSLContext for the HTTPS admin
    site of a node that runs with ``--tls`` (see :func:`https_context`)."""
    if https is None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=https)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except OSError:
        return None, None
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, None


def _get_status(host, port, timeout, https):
    """GET /status (blocking, in a thread): the JSON, or None if the node does not answer."""
    code, view = get_json(host, port, "/status", timeout, https)
    return view if code == 200 else None


def https_context(client_tls):
    """The SSLContext that reaches the admin site of ``--tls`` nodes: it trusts the cluster CA
    and presents the client certificate of *client_tls* (a ``nodedb ca client`` directory)."""
    context = ssl.create_default_context(cafile=os.path.join(client_tls, "ca.pem"))
    context.load_cert_chain(os.path.join(client_tls, "cert.pem"), os.path.join(client_tls, "key.pem"))
    return context


class Cluster:
    """*size* nodes, every one started with *node_args*. With *tls*, a CA made under
    *work_dir* gives each node a certificate for its address and ``--tls``, and
    ``client_tls`` is a client certificate directory to pass to ``connect``."""

    def __init__(self, reactor, work_dir, size=NODES, node_args=(), tls=False):
        self.reactor = reactor
        self.size = size
        self.node_args = list(node_args)  # given to every node
        self.hosts = loopback_hosts(size)
        self.work_dir = work_dir
        self.authority = os.path.join(work_dir, "ca") if tls else None
        self.client_tls = self._https = None
        if tls:
            ca.init_ca(self.authority)
            ca.issue_client(self.authority, "bench")
            self.client_tls = os.path.join(self.authority, "clients", "bench")
            self._https = https_context(self.client_tls)
        self.nodes = [self._node(0, ["--replicas", str(REPLICAS)])]
        self.why = None  # why the last replicated() check failed

    def _node(self, index, args):
        """Node n*index* on its host, started with *args*, then *node_args* and its TLS."""
        host = self.hosts[index]
        tls = []
        if self.authority is not None:
            ca.issue_host(self.authority, host)
            tls = ["--tls", os.path.join(self.authority, "hosts", host)]
        return Node(f"n{index}", host, self.work_dir, [*args, *self.node_args, *tls])

    async def status(self, node, timeout=2.0):
        """The node's /status, or None if it does not answer in time."""
        return await threads.deferToThread(_get_status, node.host, node.admin_port, timeout, self._https)

    async def wait(self, condition, deadline, what, node=None):
        """Poll ``await condition()`` until it is true; :return: the seconds it took."""
        began = time.monotonic()
        while True:
            if await condition():
                return time.monotonic() - began
            if node is not None and node.child.proc.poll() is not None:
                raise BenchError(f"{node.name} exited with status {node.child.proc.returncode}:\n{node.child.tail()}")
            if time.monotonic() - began > deadline:
                why = f" (last check: {self.why})" if self.why else ""
                raise BenchError(f"gave up after {deadline:.0f} s waiting for {what}{why}")
            await task.deferLater(self.reactor, POLL_EVERY, lambda: None)

    async def start_node(self, node):
        node.start()

        async def serving():
            view = await self.status(node)
            if view is not None:
                node.host_id = view["host"]["id"]
            return view is not None

        return await self.wait(serving, READY_DEADLINE, f"{node.name} to serve /status", node)

    async def form(self):
        """Start every node; :return: seconds until replication was complete."""
        began = time.monotonic()
        await self.start_node(self.nodes[0])
        for i in range(1, self.size):
            node = self._node(i, ["--seed", self.nodes[0].address])
            self.nodes.append(node)
            await self.start_node(node)
        await self.wait(self.replicated, FORM_DEADLINE, "replication to be complete")
        await self.wait(self.balanced, FORM_DEADLINE, "the primaries to be balanced")
        return time.monotonic() - began

    async def balanced(self):
        """Voting has stopped moving primaries for balance: who leads how many partitions has
        not changed for BALANCE_QUIET seconds (a planned move makes writes caught in it fail
        with Timeout, so the measured phases start after them)."""
        view = await self.status(self.nodes[0])
        if view is None:
            return False
        led = {host: held["primary"] for host, held in view["voting"]["holdings"].items()}
        now = time.monotonic()
        if led != getattr(self, "_led", None):
            self._led, self._led_since = led, now
        return now - self._led_since >= BALANCE_QUIET

    async def replicated(self, nodes=None):
        """Replication is complete among *nodes* and caught up (see the module docstring)."""
        nodes = nodes or self.nodes
        views = []
        for node in nodes:
            view = await self.status(node)
            if view is None:
                self.why = f"{node.name} does not answer /status"
                return False
            views.append(view)
        self.why = incomplete(views)
        return self.why is None

    async def led(self):
        """``{host id: [partitions it leads]}``, from every node's replication status."""
        led = {}
        for node in self.nodes:
            view = await self.status(node)
            if view is None:
                raise BenchError(f"{node.name} does not answer /status")
            led[view["host"]["id"]] = sorted(int(p) for p in view["replication"]["primary"])
        return led

    def failed(self, error, label=""):
        """The BenchError for a failed nodedb request, with the tail of each node's log."""
        tails = "\n".join(f"  {n.name}:\n{n.child.tail()}" for n in self.nodes if n.child is not None)
        return BenchError(f"nodedb request failed{label}: {type(error).__name__}: {error}\n{tails}")

    async def shutdown(self, clients):
        """Close *clients*, then stop every node."""
        for client in clients:
            await client.close()
        self.stop()

    def stop(self):
        for node in self.nodes:
            if node.child is not None:
                node.child.stop()


def incomplete(views, members=None):
    """Why replication is not complete among the hosts of *views* (their /status, one per
    host), or None when it is: one Voting leader and term, the voters the member count
    calls for, nothing inactive, every partition claimed by one ready, unfenced primary
    with ``min(REPLICAS, hosts) - 1`` followers, each at the primary's last commit and not
    in a resync. With *members* (a set of host ids) also: every host lists exactly those
    as Voting members, every voter and every follower is one of them."""
    if len({(v["voting"]["leader"], v["voting"]["term"]) for v in views}) != 1:
        return "the hosts disagree on the Voting leader or term"
    claimed = {}
    for view in views:
        me, voting = view["host"]["id"], view["voting"]
        if view["replication"]["inactive"]:
            return f"{me} has {len(view['replication']['inactive'])} inactive partitions"
        if len(voting["voters"]) != voter_count(len(members) if members is not None else len(views)):
            return f"{len(voting['voters'])} voters"
        if members is not None:
            if set(voting["members"]) != members:
                return f"{me} lists {len(voting['members'])} members: {sorted(voting['members'])}"
            if not set(voting["voters"]) <= members:
                return f"voters {sorted(voting['voters'])} include a host that is no member"
        for partition, primary in view["replication"]["primary"].items():
            claimed.setdefault(int(partition), []).append(primary)
    if sorted(claimed) != list(range(PARTITIONS)):
        return f"{PARTITIONS - len(claimed)} partitions without a primary"
    want = min(REPLICAS, len(views)) - 1
    odd = {"claimed twice": 0, "not ready": 0, f"not {want} followers": 0, "a follower off the members": 0, "a follower behind": 0}
    for claims in claimed.values():
        primary = claims[0]
        followers = primary.get("followers", {})
        if len(claims) != 1:
            odd["claimed twice"] += 1
        elif not primary["ready"] or primary["fenced"]:
            odd["not ready"] += 1
        elif len(followers) != want:
            odd[f"not {want} followers"] += 1
        elif members is not None and not set(followers) <= members:
            odd["a follower off the members"] += 1
        elif any(f["resync"] is not None or f["match"] != primary["last"] for f in followers.values()):
            odd["a follower behind"] += 1
    odd = {what: n for what, n in odd.items() if n}
    return ", ".join(f"{n} partitions {what}" for what, n in odd.items()) if odd else None


# -- measurements ---------------------------------------------------------------------------


async def measured(nodes, phase):
    """Run *phase* (a Deferred of ``(elapsed, latencies, results)``) and add the CPU use of
    this process and of the nodes (their sum), in percent of one core."""
    client_before = time.process_time()
    before = [cpu_seconds(n.child.proc.pid) for n in nodes]
    elapsed, latencies, results = await phase
    client_cpu = time.process_time() - client_before
    after = [cpu_seconds(n.child.proc.pid) for n in nodes]
    figures = phase_figures(len(latencies), elapsed, latencies)
    figures["client_cpu_pct"] = 100 * client_cpu / elapsed
    if None not in before and None not in after:
        figures["servers_cpu_pct"] = 100 * sum(a - b for a, b in zip(after, before)) / elapsed
    return figures, results


async def probe_partitions(reactor, clients, began):
    """Probe every partition with inserts until each acknowledged one; :return: ``{partition:
    seconds from *began* to the acknowledgement}``."""
    accepted = {}
    done = defer.Deferred()
    turn = itertools.count()

    def probe(partition):
        if partition in accepted:
            return
        client = clients[next(turn) % len(clients)]
        d = client.insert(RECORD_TYPE, {"probe": partition}, near=LAYOUT.make(partition, 1))

        def acknowledged(_element_id):
            if partition not in accepted:
                accepted[partition] = time.monotonic() - began
                if len(accepted) == PARTITIONS and not done.called:
                    done.callback(None)

        d.addCallbacks(acknowledged, lambda _failure: None)
        reactor.callLater(PROBE_EVERY, probe, partition)

    for partition in range(PARTITIONS):
        probe(partition)
    timeout = reactor.callLater(FAILOVER_DEADLINE, lambda: done.called or done.errback(
        BenchError(f"only {len(accepted)} of {PARTITIONS} partitions accepted writes {FAILOVER_DEADLINE:.0f} s after the kill")))
    try:
        await done
    finally:
        if timeout.active():
            timeout.cancel()
    return accepted


async def throughput(reactor, nodes, kind, args, doc):
    """The inserts, gets and updates of 1. in the module docstring, through NODES clients of
    *kind* (a key of CLIENT_KINDS): ``{"insert": figures, "get": figures, "update": figures}``."""
    clients = []
    try:
        for i in range(NODES):
            addresses = [n.address for n in nodes[i:] + nodes[:i]]
            clients.append(await connect(reactor, addresses, partition_aware=CLIENT_KINDS[kind]))
        began = time.monotonic()
        while CLIENT_KINDS[kind] and any(client.partition_map is None for client in clients):
            if time.monotonic() - began > MAP_DEADLINE:
                raise BenchError(f"no partition map {MAP_DEADLINE:.0f} s after connecting")
            await task.deferLater(reactor, POLL_EVERY, lambda: None)
        await drive(WARM_UP, args.inflight, lambda i: clients[i % NODES].insert(RECORD_TYPE, doc))
        figures = {}
        figures["insert"], ids = await measured(nodes, drive(args.count, args.inflight, lambda i: clients[i % NODES].insert(RECORD_TYPE, doc)))
        if len(set(ids)) != args.count:
            raise BenchError(f"{len(set(ids))} distinct ids for {args.count} inserts")
        shuffled = list(ids)
        random.Random(SHUFFLE_SEED).shuffle(shuffled)
        figures["get"], replies = await measured(
            nodes, drive(args.count, args.inflight, lambda i: clients[i % NODES].get(RECORD_TYPE, shuffled[i]))
        )
        wrong = sum(1 for got, _version in replies if got != doc)
        if wrong:
            raise BenchError(f"the wrong document for {wrong} of {args.count} gets")
        figures["update"], versions = await measured(
            nodes, drive(args.count, args.inflight, lambda i: clients[i % NODES].update(RECORD_TYPE, shuffled[i], doc))
        )
        if not all(type(version) is int for version in versions):
            raise BenchError("an update did not return its new version")
        return figures
    finally:
        for client in clients:
            await client.close()


def client_kinds(args, run):
    """The kinds of client to measure in run number *run* (from 0), in order: with --client
    both, plain first in even runs and aware first in odd ones."""
    if args.client != "both":
        return [args.client]
    kinds = list(CLIENT_KINDS)
    return kinds if run % 2 == 0 else kinds[::-1]


async def run_once(reactor, work_dir, args, doc, run=0):
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir)
    clients = []
    try:
        figures = {"formed_s": await cluster.form()}
        nodes = cluster.nodes
        for kind in client_kinds(args, run):
            figures[kind] = await throughput(reactor, nodes, kind, args, doc)
        if args.client == "both":
            figures["aware_vs_plain"] = {
                phase: figures["aware"][phase]["ops_per_s"] / figures["plain"][phase]["ops_per_s"] for phase in PHASES
            }

        # Failover: kill -9 the primary of the most partitions.
        led = await cluster.led()
        victim = max(nodes, key=lambda n: len(led.get(n.host_id, ())))
        if not led.get(victim.host_id):
            raise BenchError("no host leads a partition")
        survivors = [n for n in nodes if n is not victim]
        probes = []
        for survivor in survivors:
            probes.append(await connect(reactor, [survivor.address], timeout=PROBE_TIMEOUT, partition_aware=False))
        killed_at = time.monotonic()
        victim.kill()
        accepted = await probe_partitions(reactor, probes, killed_at)
        theirs = set(led[victim.host_id])
        others = [t for p, t in accepted.items() if p not in theirs]
        figures["failover"] = {
            "victim_primaries": len(theirs),
            "victim_first_s": min(accepted[p] for p in theirs),
            "victim_all_s": max(accepted[p] for p in theirs),
            "others_all_s": max(others) if others else 0.0,
        }

        # Catch-up: writes all over the partitions while it is down, then a restart.
        outage = await drive(
            args.outage_writes,
            args.inflight,
            lambda i: probes[i % len(probes)].insert(RECORD_TYPE, doc, near=LAYOUT.make(i % PARTITIONS, 1)),
        )
        for client in probes:
            await client.close()
        restarted_at = time.monotonic()
        await cluster.start_node(victim)
        serving = time.monotonic() - restarted_at
        await cluster.wait(cluster.replicated, CATCH_UP_DEADLINE, "the restarted host to catch up", victim)
        figures["restart"] = {"serving_s": serving, "caught_up_s": time.monotonic() - restarted_at}

        # What it caught up on reads back through it.
        check = await connect(reactor, [victim.address], partition_aware=False)
        try:
            outage_ids = outage[2]
            for element_id in outage_ids[:: max(1, len(outage_ids) // 200)]:
                got, _version = await check.get(RECORD_TYPE, element_id)
                if got != doc:
                    raise BenchError(f"element {element_id} written during the outage reads back wrong")
        finally:
            await check.close()
        return figures
    except NodeDBError as e:
        raise cluster.failed(e) from None
    finally:
        await cluster.shutdown(clients)


async def watch_removal(cluster, live, victim_id, killed_at, remove_after):
    """Poll the live nodes' /status from the kill on; :return: ``(removed, restored, why)``:
    seconds from *killed_at* until no live node listed *victim_id* among the Voting members,
    and until replication was complete again among the live hosts alone (:func:`incomplete`
    with the live hosts as the members); *why* is the last reason it was not, before that."""
    live_ids = {n.host_id for n in live}
    removed = None
    why = None
    removal_deadline = remove_after + REMOVAL_DEADLINE
    restore_deadline = remove_after + RESTORE_DEADLINE
    while True:
        views = []
        for node in live:
            view = await cluster.status(node)
            if view is None:
                if node.child.proc.poll() is not None:
                    raise BenchError(f"{node.name} exited with status {node.child.proc.returncode}:\n{node.child.tail()}")
                break
            views.append(view)
        now = time.monotonic() - killed_at
        if len(views) == len(live):
            if removed is None and all(victim_id not in v["voting"]["members"] for v in views):
                removed = now
            if removed is not None:
                why = incomplete(views, live_ids)
                if why is None:
                    return removed, now, why
        if removed is None and now > removal_deadline:
            raise BenchError(f"the killed host {victim_id} was still a member {now:.0f} s after the kill (--remove-after {remove_after:g})")
        if now > restore_deadline:
            raise BenchError(f"replication was not complete without the killed host {now:.0f} s after the kill (last check: {why})")
        await task.deferLater(cluster.reactor, POLL_EVERY, lambda: None)


async def spare_once(reactor, work_dir, args, doc):
    """The --spare measurement (4. in the module docstring) on a new cluster of SPARE_NODES."""
    os.mkdir(work_dir)
    cluster = Cluster(reactor, work_dir, SPARE_NODES, ["--remove-after", f"{args.remove_after:g}"])
    clients = []
    try:
        figures = {"formed_s": await cluster.form()}
        nodes = cluster.nodes
        for i in range(SPARE_NODES):
            clients.append(await connect(reactor, [n.address for n in nodes[i:] + nodes[:i]], partition_aware=False))
        _elapsed, _latencies, ids = await drive(
            SPARE_WRITES,
            args.inflight,
            lambda i: clients[i % SPARE_NODES].insert(RECORD_TYPE, doc, near=LAYOUT.make(i % PARTITIONS, 1)),
        )
        for client in clients:
            await client.close()
        clients = []

        led = await cluster.led()
        victim = max(nodes, key=lambda n: len(led.get(n.host_id, ())))
        if not led.get(victim.host_id):
            raise BenchError("no host leads a partition")
        view = await cluster.status(victim)
        if view is None:
            raise BenchError(f"{victim.name} does not answer /status")
        held = view["voting"]["holdings"].get(victim.host_id, {}).get("replicas", 0)
        live = [n for n in nodes if n is not victim]
        for survivor in live:
            clients.append(await connect(reactor, [survivor.address], timeout=PROBE_TIMEOUT, partition_aware=False))

        killed_at = time.monotonic()
        victim.kill()
        watching = defer.ensureDeferred(watch_removal(cluster, live, victim.host_id, killed_at, args.remove_after))
        try:
            accepted = await probe_partitions(reactor, clients, killed_at)
        except BaseException:
            watching.addErrback(lambda _failure: None)
            raise
        removed, restored, _why = await watching
        theirs = set(led[victim.host_id])
        others = [t for p, t in accepted.items() if p not in theirs]
        figures.update(
            victim_primaries=len(theirs),
            victim_replicas=held,
            failover_s=max(accepted.values()),
            victim_all_s=max(accepted[p] for p in theirs),
            others_all_s=max(others) if others else 0.0,
            removed_s=removed,
            restored_s=restored,
        )

        # What was written before the kill reads back through the live nodes (with the
        # client's default timeout: planned primary moves may start once replication is back).
        for client in clients:
            await client.close()
        clients = []
        clients.append(await connect(reactor, [n.address for n in live], partition_aware=False))
        sample = ids[:: max(1, len(ids) // SPARE_SAMPLE)]
        _elapsed, _latencies, replies = await drive(len(sample), args.inflight, lambda i: clients[0].get(RECORD_TYPE, sample[i]))
        wrong = [element_id for element_id, (got, _version) in zip(sample, replies) if got != doc]
        if wrong:
            raise BenchError(f"{len(wrong)} of {len(sample)} elements written before the kill read back wrong, e.g. {wrong[0]}")
        figures["sample_read"] = len(sample)
        return figures
    except NodeDBError as e:
        raise cluster.failed(e, " (--spare)") from None
    finally:
        await cluster.shutdown(clients)


# -- report ---------------------------------------------------------------------------------


def report(args, m, runs, temp_root, took):
    print(
        f"nodedb cluster: {NODES} nodes on loopback, --replicas {REPLICAS}, {PARTITIONS} partitions; "
        f"{args.count:,} ops per phase, {args.inflight} in flight, {args.doc_size}-byte documents, {runs_summary(args)}"
    )
    print(environment(temp_root))
    print()
    print(f"  {'':<52} {'ops/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'cli%':>5} {'srv%':>5}")
    kinds = [kind for kind in CLIENT_KINDS if kind in m]
    labels = {
        "insert": "insert (majority-acknowledged, synced)",
        "get": "get (linearizable: read barrier)",
        "update": "update (majority-acknowledged, synced)",
    }
    for key, label in labels.items():
        for kind in kinds:
            f = m[kind][key]
            print(
                f"  {kind + ' client: ' + label:<52} {f['ops_per_s']:>9,.0f} {f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} "
                f"{f['client_cpu_pct']:>5.0f} {f.get('servers_cpu_pct', float('nan')):>5.0f}"
            )
    print("  (three clients, each given the nodes in another order, requests spread over them; gets and updates")
    print("   take the ids in a random order; srv%: CPU of the three nodes together, % of a core; plain:")
    print("   partition_aware=False, through the first node; aware: each request on an element straight to")
    print("   its partition's primary)")
    if "aware_vs_plain" in m:
        ratio = m["aware_vs_plain"]
        print(
            f"  aware / plain (median of the runs' ratios): inserts {ratio['insert']:.2f}x, gets {ratio['get']:.2f}x, "
            f"updates {ratio['update']:.2f}x"
        )
    fo, rs = m["failover"], m["restart"]
    print()
    print(f"kill -9 of the host leading the most partitions ({fo['victim_primaries']:.0f} of {PARTITIONS}):")
    print(f"  its partitions: first one accepting writes again   {fo['victim_first_s']:6.2f} s after the kill")
    print(f"  its partitions: every one accepting writes again   {fo['victim_all_s']:6.2f} s after the kill   (failover)")
    print(f"  the other partitions: every one accepting writes   {fo['others_all_s']:6.2f} s after the kill   (not led by it)")
    print(f"restart of the killed host after {args.outage_writes:,} writes spread over every partition:")
    print(f"  serving requests                                   {rs['serving_s']:6.2f} s after the restart")
    print(f"  caught up: replication complete again              {rs['caught_up_s']:6.2f} s after the restart")
    print("  (complete: every partition has its full replica set and one ready primary, every follower")
    print("   at its primary's last commit, no host reporting a partition inactive, three voters)")
    formed = f"cluster formed (3 nodes up, replication complete, primaries balanced) in {m['formed_s']:.2f} s"
    if "spare" not in m:
        print(f"{formed}; took {took:.1f} s")
    else:
        print(formed)
        sp = m["spare"]
        print()
        print(
            f"--spare: a new cluster of {SPARE_NODES} nodes, --replicas {REPLICAS}, --remove-after {args.remove_after:g} s "
            f"(formed in {sp['formed_s']:.2f} s); {SPARE_WRITES:,} inserts"
        )
        print(
            f"spread over every partition, then kill -9 of the host leading the most partitions ({sp['victim_primaries']:.0f} of "
            f"{PARTITIONS}, copies of {sp['victim_replicas']:.0f}), NOT restarted:"
        )
        print(f"  (a) failover: every partition accepting writes again  {sp['failover_s']:6.2f} s after the kill")
        print(f"      (its partitions: {sp['victim_all_s']:.2f} s; the others: {sp['others_all_s']:.2f} s)")
        print(f"  (b) removal: no live node lists it as a member        {sp['removed_s']:6.2f} s after the kill")
        print(f"  (c) full replication restored without it              {sp['restored_s']:6.2f} s after the kill")
        print(f"      (includes --remove-after {args.remove_after:g} s: until it is removed the killed host keeps its place in")
        print(f"       the replica sets; {sp['restored_s'] - sp['removed_s']:.2f} s from the removal. Restored: every partition with")
        print(f"       {REPLICAS} replicas, all on live hosts, every follower at its primary's last commit, nothing")
        print(f"       inactive, {voter_count(SPARE_NODES - 1)} voters, all live, the killed host in no member list)")
        print(f"  {sp['sample_read']:.0f} of the writes made before the kill read back (linearizable gets): all correct")
        print(f"took {took:.1f} s")
    if args.json:
        print(json.dumps({"config": vars(args), "median": m, "runs": runs, "seconds": took}, indent=2))


# -- main -----------------------------------------------------------------------------------


async def bench(reactor, args, outcome):
    began = time.monotonic()
    doc = make_document(args.doc_size)
    temp_root = outcome["temp_root"] = tempfile.mkdtemp(prefix="nodedb-cluster-bench-")
    runs = []
    for k in range(args.repeat):
        started = time.monotonic()
        print(f"run {k + 1}/{args.repeat} ...", end="", file=sys.stderr, flush=True)
        runs.append(await run_once(reactor, os.path.join(temp_root, f"run{k + 1}"), args, doc, k))
        r = runs[-1]
        if args.spare:
            r["spare"] = await spare_once(reactor, os.path.join(temp_root, f"run{k + 1}-spare"), args, doc)
        spare = (
            f", spare: failover {r['spare']['failover_s']:.2f} s, removed {r['spare']['removed_s']:.2f} s, "
            f"restored {r['spare']['restored_s']:.2f} s"
            if args.spare
            else ""
        )
        phases = ", ".join(
            f"{kind}: inserts {r[kind]['insert']['ops_per_s']:,.0f}/s, gets {r[kind]['get']['ops_per_s']:,.0f}/s, "
            f"updates {r[kind]['update']['ops_per_s']:,.0f}/s"
            for kind in client_kinds(args, k)
        )
        print(
            f" {time.monotonic() - started:.1f} s ({phases}, "
            f"failover {r['failover']['victim_all_s']:.2f} s, caught up {r['restart']['caught_up_s']:.2f} s{spare})",
            file=sys.stderr,
            flush=True,
        )
    report(args, median_tree(runs), runs, os.path.dirname(temp_root), time.monotonic() - began)
    outcome["done"] = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=positive, default=20_000, help="operations per phase (default 20000)")
    parser.add_argument("--inflight", type=positive, default=64, help="requests in flight (default 64)")
    parser.add_argument("--doc-size", type=positive, default=100, help="encoded size of each document in bytes (default 100)")
    parser.add_argument("--outage-writes", type=positive, default=5000, help="inserts while the killed host is down (default 5000)")
    parser.add_argument(
        "--client",
        choices=("both", *CLIENT_KINDS),
        default="both",
        help="the clients of the insert and get phases: plain (partition_aware=False), aware (partition-aware), "
        "or both, on the same cluster, with their ratio (default both)",
    )
    add_run_options(parser)
    parser.add_argument(
        "--spare",
        action="store_true",
        help=f"also measure, on a new cluster of {SPARE_NODES} nodes, failover, removal and the return of full "
        "replication after a kill -9 of a host that stays down",
    )
    parser.add_argument(
        "--remove-after",
        type=float,
        default=10.0,
        help="--remove-after of every node of the --spare cluster, in seconds (default 10)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.remove_after <= 10**7:
        parser.error("--remove-after must be between 1 and 10000000 seconds")
    check_setup(parser, args)

    return run_bench(bench, args, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
