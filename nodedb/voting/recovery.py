"""The way back when a majority is lost for good: ``nodedb recover --force``.

Unsafe by design, as etcd's ``--force-new-cluster`` and CockroachDB's ``debug recover`` are:
one surviving host makes itself the only Voting voter (:meth:`~nodedb.voting.raft.Raft.
force_sole_voter`), gives every partition whose live copies are no longer a majority of its
replica set (or whose primary is gone) a new primary, its most complete live copy, at a new
epoch, and removes the hosts it cannot reach, for good. The normal policy then grows the
voter set and the replica sets again from the live members. Writes that only the lost hosts
had are gone; docs/running.md says what an operator must know.

The pure part is :func:`plan_recovery` and :func:`recover_decision`; :func:`recover` runs them
on the Voting service. :class:`Fence` keeps the removed hosts out: the recovered cluster
refuses their every peer request with :class:`~nodedb.errors.Fenced`, and a removed host
that is refused so stops serving (its data must be wiped before it joins again).
"""

from dataclasses import dataclass

from twisted.logger import Logger

from nodedb import errors
from nodedb.logsync.state import majority
from nodedb.voting.raft import LEADER
from nodedb.voting.state import Assignment

#: What a fenced host still answers: enough to show it is fenced.
STILL_SERVED = frozenset({"hello", "status", "ping"})

_log = Logger()


@dataclass(frozen=True)
class RecoveryPlan:
    """What a recovery through ``host`` would do, as the cluster state and the host's view
    of the others stand.

    :ivar live: the members ``host`` reaches (itself included).
    :ivar dead: the members it does not: they are removed and fenced.
    :ivar voting_lost: too few voters are live for Voting to ever elect a leader.
    :ivar elections: ``{partition: (new epoch, live replicas)}`` of the partitions that get a
        new primary (their live copies are not a majority, or their primary is dead).
    :ivar short: of those, the partitions whose live copies are not a majority.
    """

    host: str
    live: frozenset
    dead: tuple
    voting_lost: bool
    elections: dict
    short: frozenset

    @property
    def needed(self):
        return self.voting_lost or bool(self.short)


def plan_recovery(state, voters, views, host):
    """:return: the :class:`RecoveryPlan` of a recovery through *host*.

    :param voters: the Voting voters as *host*'s Raft knows them.
    :param views: ``{host: HostView}``, *host*'s picture of the others.
    :raise InvalidRequest: when *host* cannot recover its cluster.
    """
    if state.cluster_id is None or host not in state.members:
        raise errors.InvalidRequest("this host is not a member of a cluster; recover through a member")
    live = frozenset({host} | {h for h in state.members if views.get(h) is not None and views[h].available})
    voting_lost = len(set(voters) & live) < len(voters) // 2 + 1
    elections, short = {}, set()
    for partition, assignment in sorted(state.assignments.items()):
        replicas = assignment.replicas
        if not replicas:
            continue
        alive = tuple(h for h in replicas if h in live)
        if len(alive) < majority(len(replicas)):
            short.add(partition)
        elif replicas[0] in live:
            continue
        elections[partition] = (assignment.epoch + 1, alive)
    return RecoveryPlan(host, live, tuple(sorted(set(state.members) - live)), voting_lost, elections, frozenset(short))


def recover_decision(plan, chosen, at):
    """The committed decision of *plan* once the elections chose *chosen* (``{partition:
    host}``): each elected partition led by its choice, the live copies following; a
    partition without a chosen copy starts empty (its data is lost)."""
    assignments = {}
    for partition, (epoch, alive) in plan.elections.items():
        primary = chosen.get(partition)
        replicas = () if primary is None else (primary, *[h for h in alive if h != primary])
        assignments[str(partition)] = Assignment(replicas, epoch).to_data()
    return {"op": "recover", "by": plan.host, "at": at, "remove": list(plan.dead), "map": assignments}


async def recover(voting):
    """Recover *voting*'s cluster through this host. :return: the report for the reply.

    :raise InvalidRequest: when there is nothing to recover, or it cannot be done here.
    """
    if voting.recovering:
        raise errors.InvalidRequest("a recovery is already under way on this host")
    plan = plan_recovery(voting.state, voting.raft.config.voters, voting.views(), voting.host_id)
    if not plan.needed:
        raise errors.InvalidRequest("the cluster has a live majority; nothing to recover")
    if not plan.voting_lost and voting.raft.state != LEADER:
        raise errors.InvalidRequest(
            f"Voting has a live majority: send recover to its leader {voting.raft.leader or '(being elected)'}"
        )
    voting.recovering = True
    try:
        if plan.voting_lost:
            _log.warn(
                "recovery: making this host the only voter (voters {voters} lost their majority)",
                voters=", ".join(sorted(voting.raft.config.voters)),
            )
            await voting.force_sole_voter(plan.live - {plan.host})
            plan = plan_recovery(voting.state, voting.raft.config.voters, voting.views(), voting.host_id)
        chosen = {}
        if plan.elections and voting.elect is not None:
            chosen = await voting.elect(plan.elections, set(plan.dead))
        decision = recover_decision(plan, chosen, voting.clock.seconds())
        await voting.propose(decision)
    finally:
        voting.recovering = False
    report = {
        "recovery": voting.state.recoveries,
        "forced_voting": plan.voting_lost,
        "voters": sorted(voting.raft.config.voters),
        "removed": list(plan.dead),
        "new_primaries": sorted(chosen),
        "lost": sorted(set(plan.elections) - set(chosen)),
    }
    _log.warn(
        "recovery {recovery} done: voters {voters}; removed hosts {removed}; {count} partitions have new "
        "primaries; {lost} partitions lost every copy",
        recovery=report["recovery"],
        voters=", ".join(report["voters"]),
        removed=", ".join(report["removed"]) or "(none)",
        count=len(report["new_primaries"]),
        lost=len(report["lost"]),
    )
    return report


def removal_reason(state, host):
    """Why *host* is fenced, as the recovered cluster tells it (None if it is not)."""
    fenced = state.fenced.get(host) if state is not None else None
    if fenced is None:
        return None
    return (
        f"host {host} was removed from cluster {state.cluster_id} by recovery {fenced['recovery']} through "
        f"host {fenced['by']}: wipe its data directory and start it with --seed to join again as a new host"
    )


class Fence:
    """Both ends of the fence a recovery puts up.

    In the recovered cluster, :meth:`admit` refuses every peer request from a removed host
    with :class:`~nodedb.errors.Fenced`. On a removed host, calls made through
    :meth:`watch` notice that refusal: the host then stops serving (``on_fenced(reason)``;
    :meth:`admit` answers everything but ``status`` and ``ping`` with Unavailable from then
    on).

    :param state: ``state()`` -> the agreed :class:`~nodedb.voting.state.ClusterState`
        (None before Voting started).
    """

    def __init__(self, state, on_fenced, reason=None):
        self.state = state
        self.on_fenced = on_fenced
        self.reason = reason

    def admit(self, op, channel):
        if self.reason is not None and op not in STILL_SERVED:
            # Unavailable, not Fenced: only the recovered cluster says Fenced, to the host it
            # removed, so a host that hears Fenced knows it is the one removed.
            raise errors.Unavailable(self.reason)
        if channel.role == "peer":
            reason = removal_reason(self.state(), channel.peer_host)
            if reason is not None:
                raise errors.Fenced(reason)

    def watch(self, transport):
        """*transport*, its calls' Fenced refusals noticed."""
        return _Watched(transport, self._refused)

    def _refused(self, failure):
        error = failure.value
        if isinstance(error, errors.Fenced) and error.remote and self.reason is None:
            self.reason = error.message
            self.on_fenced(error.message)
        return failure


class _Watched:
    def __init__(self, transport, refused):
        self.transport = transport
        self.refused = refused

    def call(self, address, op, arguments, timeout):
        return self.transport.call(address, op, arguments, timeout).addErrback(self.refused)

    def __getattr__(self, name):
        return getattr(self.transport, name)
