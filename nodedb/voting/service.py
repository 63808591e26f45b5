"""The Voting service: runs Raft among a few voter hosts; every other member follows as a
learner, so every host holds the same :class:`~nodedb.voting.state.ClusterState`.

I/O around the pure pieces: Raft ticks on a ``LoopingCall``; what a ``Ready`` asks is saved
durably (``set_meta``) before its messages are sent; committed decisions are applied to the
cluster state, and the node is told. The leader runs :mod:`nodedb.voting.policy` every round
and proposes what it suggests.
"""

import random
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import classImplements, implementer

from nodedb import errors
from nodedb.interfaces import IClusterView, IVoting
from nodedb.voting import client_map, policy, recovery
from nodedb.voting.messages import MessageError, message_from_wire, message_to_wire
from nodedb.voting.persistence import RaftDisk
from nodedb.voting.raft import LEADER, ChangeInProgress, Config, NotLeader, Raft, Snapshot
from nodedb.voting.state import ClusterState

# Declared here rather than in the pure module, which imports nothing but the standard library.
classImplements(ClusterState, IClusterView)


@dataclass(frozen=True)
class VotingTiming:
    """Raft's clock; documented in docs/voting.md."""

    #: Seconds per Raft tick.
    tick: float = 0.1
    #: Election timeout, in ticks (randomised between this and twice this).
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    #: How often the leader looks at the cluster and proposes changes, in seconds.
    policy_interval: float = 1.0
    #: Entries applied between two snapshots (after which the log is compacted).
    compact_every: int = 1000


@implementer(IVoting)
class VotingService(Service):
    """
    :param host_id: this host's id (its Raft member id).
    :param transport: the :class:`~nodedb.interfaces.IPeerTransport`.
    :param storage: the node's storage backend (Raft's state lives in its meta store).
    :param address_of: ``address_of(host_id)`` -> ``"host:port"`` or None (from the NI).
    :param views: ``views()`` -> ``{host_id: policy.HostView}``, the leader's picture.
    :param on_change: ``on_change(state)`` after committed decisions changed the state.
    :param elect: ``elect({partition: (new_epoch, replicas)})`` -> Deferred of ``{partition:
        host}``: fences the replicas and picks each partition's next primary (LogSync's
        :meth:`~nodedb.logsync.service.LogSyncService.elect`); None: no failover.
    :param handoff: ``handoff(partition, epoch, follower)`` -> Deferred: this host, as
        primary, hands a partition over for a planned move (LogSync's
        :meth:`~nodedb.logsync.service.LogSyncService.handoff`).
    """

    _log = Logger()

    def __init__(
        self,
        clock,
        host_id,
        transport,
        storage,
        address_of,
        views,
        rng=None,
        timing=VotingTiming(),
        settings=policy.VotingSettings(),
        on_change=None,
        elect=None,
        handoff=None,
    ):
        self.clock = clock
        self.elect = elect
        self.handoff = handoff
        self._electing = set()  # partitions whose failover election is under way
        # Partitions whose planned primary move is under way: a failover still goes ahead if
        # their primary dies meanwhile (the move's hand-off would only time out).
        self._moving = set()
        self._wanted = {}  # partition -> epoch whose primary asked for an election
        self.host_id = host_id
        self.transport = transport
        self.disk = RaftDisk(storage)
        self._partition_bits = storage.layout.partition_bits
        self.address_of = address_of
        self.views = views
        self.rng = rng or random.Random()
        self.timing = timing
        self.settings = settings
        self.on_change = on_change
        self.state = ClusterState()
        self._state_index = 0  # the last log index the state includes
        self.raft = None
        self._saving = None  # the Deferred of the Ready being saved
        self._again = False
        self._waiting = {}  # log index -> Deferred of a proposal
        self._refused = set()
        #: A recovery (nodedb.voting.recovery) is under way: the policy waits for it.
        self.recovering = False
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._policy = LoopingCall(self._run_policy)
        self._policy.clock = clock

    def install(self, api):
        api.register("raft.message", self._serve_message)
        api.register("voting.elect", self._serve_elect)
        api.register("admin.recover", self._serve_recover, client=True)
        client_map.install(api, lambda: (self.state, self._state_index), self._partition_bits)

    # -- starting ---------------------------------------------------------------------------

    def start(self, bootstrap=None):
        """Load Raft's state (or start a new group).

        :param bootstrap: on the host that founds the cluster only: ``bootstrap()`` -> the
            first decision of the new cluster once it can be formed (see
            :mod:`nodedb.voting.formation`), None until then. This host is the group's only
            voter at first; a restart before the decision was made waits for it again.
        """
        founding = Snapshot(0, 0, Config(frozenset({self.host_id}))) if bootstrap is not None else None
        if self.disk.exists():
            hard, log, snapshot = self.disk.load()
            self.raft = self._raft(hard_state=hard, log=log, snapshot=snapshot or founding)
            if snapshot is not None and snapshot.data is not None:
                self.state = ClusterState.from_snapshot(snapshot.data)
                self._state_index = snapshot.index
        else:
            # A joiner has no configuration: it waits to be added by the leader.
            self.raft = self._raft(snapshot=founding)
        if bootstrap is not None and self.state.cluster_id is None and not any(e.kind == "normal" for e in self.raft.log):
            self._bootstrap = bootstrap
        if self.raft.config.voters == {self.host_id}:
            self.raft.campaign()  # the only voter needs no election timeout to lead
            self._tick_bootstrap()
        self._ticker.start(self.timing.tick, now=False)
        self._policy.start(self.timing.policy_interval, now=False)
        if self.state.cluster_id is not None and self.on_change is not None:
            self.on_change(self.state)  # the state of the snapshot, before any entry replays
        self._process()

    _bootstrap = None

    def _raft(self, **persisted):
        return Raft(
            self.host_id,
            random.Random(self.rng.random()),
            election_ticks=self.timing.election_ticks,
            heartbeat_ticks=self.timing.heartbeat_ticks,
            **persisted,
        )

    def stopService(self):
        super().stopService()
        for loop in (self._ticker, self._policy):
            if loop.running:
                loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(errors.Unavailable("voting stopped"))

    # -- the Raft cycle ---------------------------------------------------------------------

    def _tick(self):
        self.raft.tick()
        self._tick_bootstrap()
        self._process()

    def _tick_bootstrap(self):
        if self._bootstrap is not None and self.raft.state == LEADER:
            decision = self._bootstrap()
            if decision is not None:
                self._bootstrap = None
                self._log.info(
                    "founding cluster {cluster} with {count} hosts", cluster=decision["cluster"],
                    count=1 + len(decision.get("members", ())),
                )
                self.raft.propose(decision)

    def _process(self):
        """Save, then send and apply, what Raft has for us; one Ready at a time, in order."""
        if self._saving is not None:
            self._again = True
            return
        ready = self.raft.ready()
        if ready.empty():
            return
        d = self._saving = self.disk.save(ready)
        d.addCallback(lambda _: self._after_save(ready))
        d.addErrback(self._save_failed)

    def _after_save(self, ready):
        self._saving = None
        for message in ready.messages:
            self._send(message)
        changed = False
        snapshot = ready.snapshot
        if snapshot is not None and snapshot.data is not None and snapshot.index > self._state_index:
            # A snapshot from the leader replaces the state it summarises.
            self.state = ClusterState.from_snapshot(snapshot.data)
            self._state_index = snapshot.index
            changed = True
        for entry in ready.committed:
            if entry.index > self._state_index:
                if entry.kind == "normal" and entry.data is not None:
                    changed |= self.state.apply(entry.data)
                self._state_index = entry.index
            waiter = self._waiting.pop(entry.index, None)
            if waiter is not None:
                waiter.callback(entry.index)
        self.raft.advance(ready)
        if ready.committed and self.raft.applied - self.raft.snapshot.index >= self.timing.compact_every:
            self.raft.compact(self.raft.applied, self.state.to_snapshot())
        if changed and self.on_change is not None:
            self.on_change(self.state)
        # A decision that changed nothing (it no longer fitted) is not followed at once by
        # another look: the same proposal again would loop on synced commits.
        if self.raft.state == LEADER and (changed or any(e.kind == "config" for e in ready.committed)):
            self._run_policy_soon()
        self._again = False
        self._process()

    def _save_failed(self, failure):
        self._saving = None
        self._log.failure("could not save Raft state; not sending what depends on it", failure)

    def _send(self, message):
        address = self.address_of(message.target)
        if address is None:
            return
        d = self.transport.call(address, "raft.message", message_to_wire(message), self.timing.tick * 10)
        d.addErrback(lambda failure: None)  # Raft retries by itself; a lost message is fine

    def _serve_message(self, request):
        try:
            message = message_from_wire(request)
        except MessageError as e:
            raise errors.InvalidRequest(f"raft.message: {e}") from None
        if message.target != self.host_id:
            raise errors.InvalidRequest("raft.message: not for this host")
        self.raft.step(message)
        self._process()
        return None

    # -- proposals --------------------------------------------------------------------------

    def propose(self, decision):
        """:return: a Deferred that fires with the decision's log index once applied here."""
        try:
            index = self.raft.propose(decision)
        except NotLeader as e:
            return defer.fail(errors.Unavailable(f"not the voting leader (the leader is {e.leader})"))
        d = self._waiting[index] = defer.Deferred()
        self._process()
        return d

    def _run_policy_soon(self):
        """Look again right after a commit rather than at the next round: a join is then a
        few commits in a row (accept, learner, voter, admit), not one a second."""
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(0, self._run_policy)

    _soon = None

    def _run_policy(self):
        if self.recovering or self.raft.state != LEADER or self.state.cluster_id is None or self.raft.commit < self.raft.last_index():
            return
        now = self.clock.seconds()
        views = self.views()
        decisions, refusals = policy.membership_decisions(self.state, views, now, self.settings)
        for host_id, reason in refusals:
            if host_id not in self._refused:
                self._refused.add(host_id)
                self._log.warn("refusing host {host_id}: {reason}", host_id=host_id, reason=reason)
        for decision in decisions:
            self._log.info("proposing {op} of {host}", op=decision["op"], host=decision["host"])
            self.raft.propose(decision)
        self._fail_over(views, now)
        if not decisions:
            assign = policy.assignment_decision(self.state, views, self.settings)
            if assign is not None:
                self.raft.propose(assign)
            elif not self._electing and not self._moving:
                self._balance(views)
            current = self.raft.current_members()
            for decision in policy.admission_decisions(self.state, self.raft.config.voters, current, views, self.settings):
                self._log.info("admitting {host}: it is a voter where one is wanted and caught up", host=decision["host"])
                self.raft.propose(decision)
        change = policy.next_config(
            self.raft.config.voters, self.raft.config.learners, self.state, views, now, self.settings, self.host_id
        )
        if change is not None:
            voters, learners = change
            try:
                self.raft.propose_config(voters, learners)
                self._log.info(
                    "changing the group to voters {voters}; learners {learners}",
                    voters=", ".join(sorted(voters)),
                    learners=", ".join(sorted(learners)) or "(none)",
                )
            except (ChangeInProgress, ValueError):
                pass
        self._process()

    # -- recovery from a lost majority ------------------------------------------------------

    def _serve_recover(self, request):
        if request.get("force") is not True:
            raise errors.InvalidRequest("admin.recover: force must be true (it may lose acknowledged writes)")
        return defer.ensureDeferred(recovery.recover(self))

    def force_sole_voter(self, learners):
        """Make this host the only voter (see :meth:`Raft.force_sole_voter`). :return: a
        Deferred that fires once everything this host's log held is applied."""
        index = self.raft.force_sole_voter(learners)
        d = self.when_applied(index + 1)  # the leader's no-op follows the configuration
        self._process()
        return d

    def when_applied(self, index):
        """:return: a Deferred that fires once the entry at *index* (already in the log) is
        applied here."""
        if self._state_index >= index:
            return defer.succeed(index)
        d = self._waiting[index] = defer.Deferred()
        return d

    # -- failover ---------------------------------------------------------------------------

    def request_election(self, partition, epoch):
        """The primary of *partition* at *epoch* was fenced by an election that did not
        finish: ask the leader to hold one (it keeps the primary if it is still the best)."""
        if self.raft.state == LEADER:
            self._wanted[partition] = epoch
            return
        address = self.address_of(self.raft.leader) if self.raft.leader else None
        if address is not None:
            d = self.transport.call(address, "voting.elect", {"parts": [[partition, epoch]]}, self.timing.tick * 10)
            d.addErrback(lambda failure: None)  # asked again at the next refusal

    def _serve_elect(self, request):
        parts = request.get("parts")
        if type(parts) is not list or not all(
            type(p) is list and len(p) == 2 and all(type(i) is int and i >= 0 for i in p) for p in parts
        ):
            raise errors.InvalidRequest("voting.elect: parts is a list of [partition, epoch]")
        if self.raft.state != LEADER:
            raise errors.Unavailable("not the voting leader")
        for partition, epoch in parts:
            self._wanted[partition] = epoch
        return None

    def _fail_over(self, views, now):
        if self.elect is None:
            return
        partitions = policy.failover_partitions(self.state, views, now, self.settings, self._wanted) - self._electing
        if not partitions:
            return
        requests = {}
        for partition in sorted(partitions):
            assignment = self.state.assignments[partition]
            requests[partition] = (assignment.epoch + 1, assignment.replicas)
        self._log.info("failing over {count} partitions (first {first})", count=len(requests), first=min(requests))
        self._electing |= set(requests)
        down = {host for host, view in views.items() if not view.available}
        d = self.elect(requests, down)
        d.addCallback(self._elected, requests)
        d.addErrback(lambda failure: self._log.failure("failover election failed", failure))
        d.addBoth(lambda _: self._electing.difference_update(requests))

    def _balance(self, views):
        """Start the planned primary moves the policy suggests: the primary hands over (it
        stops taking writes until the chosen follower has everything), then an election at
        the next epoch picks that follower."""
        if self.elect is None:
            return
        for partition, host in sorted(policy.primary_moves(self.state, views, self.settings).items()):
            assignment = self.state.assignments[partition]
            self._moving.add(partition)
            d = self._handoff(partition, assignment, host)
            requests = {partition: (assignment.epoch + 1, assignment.replicas)}
            down = {h for h, view in views.items() if not view.available}
            d.addCallback(lambda _, requests=requests, host=host, down=down, p=partition: self.elect(
                requests, down, prefer={p: host}))
            d.addCallback(self._elected, requests)
            d.addErrback(lambda failure, p=partition: self._log.info(
                "moving the primary of partition {p} did not happen: {why}", p=p, why=failure.getErrorMessage()))
            d.addBoth(lambda _, p=partition: self._moving.discard(p))

    def _handoff(self, partition, assignment, host):
        arguments = {"p": partition, "e": assignment.epoch, "to": host}
        if assignment.primary == self.host_id and self.handoff is not None:
            return self.handoff(partition, assignment.epoch, host)
        address = self.address_of(assignment.primary)
        if address is None:
            return defer.fail(errors.Unavailable("the primary's address is not known"))
        return self.transport.call(address, "logsync.handoff", arguments, 10 * self.timing.tick + 3.0)

    def _elected(self, chosen, requests):
        if self.raft.state != LEADER:
            return
        changes = {}
        for partition, host in chosen.items():
            assignment = self.state.assignments.get(partition)
            if assignment is None or assignment.epoch + 1 != requests[partition][0]:
                continue  # the map moved on meanwhile
            changes[str(partition)] = policy.failover_assignment(assignment, host).to_data()
            self._wanted.pop(partition, None)
        if changes:
            try:
                self.raft.propose({"op": "assign", "map": changes})
            except NotLeader:
                return
            self._process()

    # -- IVoting ----------------------------------------------------------------------------

    def leader(self):
        return self.raft.leader if self.raft is not None else None

    def voters(self):
        return self.raft.config.voters if self.raft is not None else frozenset()

    def changing_primaries(self):
        return frozenset(self._electing | self._moving)

    def status(self):
        raft = self.raft.status()
        return {
            "leader": raft["leader"],
            "term": raft["term"],
            "role": raft["state"],
            "voters": raft["voters"],
            "learners": raft["learners"],
            "commit": raft["commit"],
            "members": {host: member["address"] for host, member in sorted(self.state.members.items())},
            "holdings": self.state.holdings(),
        }
