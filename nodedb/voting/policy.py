"""What the Voting leader proposes: pure functions of the cluster state and its view of hosts.

The leader looks at its NI (who exists, where, with how much room) and its reliability view
(who answers), and proposes at most a few decisions per round: accept joining hosts (or
refuse them, with a reason to log), follow a host to a new address, remove a host that stayed
away too long, fill every partition's replica set, change the voter set (one server at a
time, except that a lone voter grows straight to three or five), and admit a member once it
is all the cluster wants it to be. Followers never run this; they apply what commits.
"""

import math
from dataclasses import dataclass

from nodedb.logsync.state import majority
from nodedb.topology.vivaldi import Coordinate, distance
from nodedb.voting.state import MAX_EPOCH, Assignment


@dataclass(frozen=True)
class VotingSettings:
    """Thresholds of the voting leader; documented in docs/voting.md."""

    #: A member unavailable this long loses its place and its partitions (``--remove-after``).
    remove_after: float = 600.0
    #: A voter unavailable this long is replaced by a healthy member.
    replace_voter_after: float = 10.0
    max_voters: int = 5
    #: A host with less free space than this gets no new partitions.
    min_free_bytes: int = 256 * 1024 * 1024
    #: Most partitions given new replicas in one round (so a join does not flood the log).
    assignments_per_round: int = 64
    #: A primary unavailable this long (after the failure detector said so) is replaced by
    #: the most complete of its replicas.
    failover_after: float = 0.5
    #: Most planned primary moves (to even out the load) started in one round.
    moves_per_round: int = 4


@dataclass(frozen=True)
class HostView:
    """What the leader knows of one host (from its NI entry and its reliability)."""

    host_id: str
    address: str
    cluster_id: str = ""
    available: bool = True
    unavailable_since: float | None = None
    free_bytes: int = 0
    cpu_rating: float = 1.0
    coordinate: Coordinate = Coordinate()
    #: Partitions the host has a copy of, and those of them not caught up yet.
    partitions: frozenset = frozenset()
    syncing: frozenset = frozenset()

    def in_sync(self, partition):
        return self.available and partition in self.partitions and partition not in self.syncing


def membership_decisions(state, views, now, settings):
    """:return: ``(decisions, refusals)``: accept, follow-to-new-address and remove decisions,
    and ``(host_id, reason)`` for hosts that cannot be accepted."""
    decisions, refusals = [], []
    live_addresses = {
        m["address"]: h for h, m in state.members.items() if views.get(h) is not None and views[h].available
    }
    for host_id, view in sorted(views.items()):
        member = state.members.get(host_id)
        if member is None:
            if host_id in state.fenced:
                refusals.append((host_id, "a recovery removed it; it must be wiped and join as a new host"))
                continue
            if view.cluster_id and view.cluster_id != state.cluster_id:
                refusals.append((host_id, f"it names cluster {view.cluster_id}, this is {state.cluster_id}"))
                continue
            owner = live_addresses.get(view.address)
            if owner is not None and owner != host_id:
                refusals.append((host_id, f"its address {view.address} belongs to live host {owner}"))
                continue
            if view.available:
                decisions.append({"op": "accept", "host": host_id, "address": view.address, "at": now})
        elif member["address"] != view.address and view.available:
            owner = live_addresses.get(view.address)
            if owner is None or owner == host_id:
                decisions.append({"op": "accept", "host": host_id, "address": view.address, "at": now})
    leading = {a.primary for a in state.assignments.values() if len(a.replicas) > 1}
    for host_id in sorted(state.members):
        view = views.get(host_id)
        if view is None or view.available or view.unavailable_since is None:
            continue
        # A primary with replicas is failed over first (to its most complete replica); only
        # then does it leave.
        if now - view.unavailable_since >= settings.remove_after and len(state.members) > 1 and host_id not in leading:
            decisions.append({"op": "remove", "host": host_id, "at": now})
    return decisions, refusals


def primary_moves(state, views, settings):
    """Planned moves that even out how many partitions each host leads (weighted by CPU
    rating), so that every host's CPU takes writes: ``{partition: new primary}``, at most
    ``moves_per_round``. Only partitions whose replicas are all caught up move, to a follower
    that is caught up too."""
    target = min(state.replicas, len(state.members))
    healthy = {h: v for h, v in views.items() if h in state.members and v.available}
    led = {h: 0 for h in healthy}
    for assignment in state.assignments.values():
        if assignment.primary in led:
            led[assignment.primary] += 1

    def weight(host, extra=0):
        return (led[host] + extra) / max(healthy[host].cpu_rating, 0.1)

    moves = {}
    for partition in sorted(state.assignments):
        if len(moves) >= settings.moves_per_round:
            break
        assignment = state.assignments[partition]
        primary = assignment.primary
        if primary not in healthy or len(assignment.replicas) != target:
            continue
        if not all(h in healthy and healthy[h].in_sync(partition) for h in assignment.replicas[1:]):
            continue
        # The follower that would lead the least after the move, if that evens things out
        # (it would then be less loaded than the primary is now).
        for follower in sorted(assignment.replicas[1:], key=lambda h: (weight(h, 1), h)):
            if weight(follower, 1) < weight(primary) and led[primary] - led[follower] > 1:
                moves[partition] = follower
                led[primary] -= 1
                led[follower] += 1
                break
    return moves


def failover_partitions(state, views, now, settings, wanted=None):
    """Partitions that need a new primary: theirs has been unavailable for
    ``failover_after``, or it asked for an election (*wanted*: ``{partition: epoch}``)."""
    wanted = wanted or {}
    partitions = set()
    for partition, assignment in state.assignments.items():
        if assignment.primary is None or len(assignment.replicas) < 2 or assignment.epoch >= MAX_EPOCH:
            continue
        view = views.get(assignment.primary)
        down = (
            view is not None
            and not view.available
            and view.unavailable_since is not None
            and now - view.unavailable_since >= settings.failover_after
        )
        if down or wanted.get(partition) == assignment.epoch:
            partitions.add(partition)
    return partitions


def failover_assignment(assignment, chosen):
    """The assignment after a failover to *chosen*: a new epoch, *chosen* first, the old
    primary kept as a follower (it catches up, or is resynced, when it returns)."""
    return Assignment((chosen, *[h for h in assignment.replicas if h != chosen]), assignment.epoch + 1)


def _score(host_id, view, load, others):
    """Higher is better: room, speed, few partitions already, far from the other replicas."""
    room = math.log2(2 + view.free_bytes / (1024 * 1024 * 1024))
    spread = min((distance(view.coordinate, o) for o in others), default=0.0)
    return room * max(view.cpu_rating, 0.1) / (1 + load.get(host_id, 0)) * (1 + 100 * spread)


def assignment_decision(state, views, settings):
    """Fill replica sets up to ``min(replicas, members)`` and give orphaned partitions a
    primary. :return: an ``assign`` decision, or None when nothing needs doing."""
    candidates = {
        h: v
        for h, v in views.items()
        if h in state.members and v.available and v.free_bytes >= settings.min_free_bytes
    }
    if not candidates:
        return None
    target = min(state.replicas, len(state.members))
    load = state.load()
    changes = {}
    for partition in sorted(state.assignments):
        assignment = state.assignments[partition]
        replicas = list(assignment.replicas)
        if len(replicas) >= target or (not replicas and assignment.epoch >= MAX_EPOCH):
            continue
        # One replica at a time, and only to a set whose majority is caught up: consecutive
        # replica sets then always share a majority that holds every acknowledged write,
        # which failover relies on (see nodedb.logsync.state.majority). A newcomer that has
        # not caught up yet holds only what came after it joined.
        if caught_up(assignment, partition, views) < majority(len(replicas)):
            continue
        others = [views[h].coordinate for h in replicas if h in views]
        choices = [h for h in candidates if h not in replicas]
        if choices:
            best = max(sorted(choices), key=lambda h: _score(h, candidates[h], load, others))
            replicas.append(best)
            load[best] = load.get(best, 0) + 1
        epoch = assignment.epoch
        if assignment.primary is None and replicas:
            epoch += 1  # a new primary: a new id range
        new = Assignment(tuple(replicas), epoch)
        if new != assignment:
            changes[str(partition)] = new.to_data()
        if len(changes) >= settings.assignments_per_round:
            break
    if not changes:
        changes = _drop_extra(state, views, target, settings)
    if not changes:
        changes = _rebalance(state, candidates, views, target, settings)
    return {"op": "assign", "map": changes} if changes else None


def caught_up(assignment, partition, views):
    """How many replicas of *partition* are live and caught up, as the views show."""
    return sum(1 for h in assignment.replicas if h in views and views[h].in_sync(partition))


def admission_decisions(state, voters, current, views, settings):
    """``admit`` decisions for the members that are now all the cluster wants them to be:
    following the decisions (in *current*: its Raft log has everything committed), a voter
    if the group wants more voters, every partition it holds caught up, and no partition
    short of replicas (a newcomer is what fills them). So a cluster whose members are all
    admitted can lose any one host (see docs/voting.md)."""
    target = min(state.replicas, len(state.members))
    if any(len(a.replicas) < target for a in state.assignments.values() if a.replicas or a.epoch < MAX_EPOCH):
        return []
    want = voter_count(len(state.members), settings.max_voters)
    decisions = []
    for host_id in sorted(state.members):
        view = views.get(host_id)
        if state.admitted(host_id) or host_id not in current or view is None or not view.available:
            continue
        if host_id not in voters and len(voters) < want:
            continue
        if all(view.in_sync(p) for p in state.replica_partitions(host_id)):
            decisions.append({"op": "admit", "host": host_id})
    return decisions


def _follower_load(assignments):
    load = {}
    for assignment in assignments.values():
        for host in assignment.replicas[1:]:
            load[host] = load.get(host, 0) + 1
    return load


def _drop_extra(state, views, target, settings):
    """A partition with a replica more than it needs (one being moved: the newcomer was
    added last) drops the busiest other follower, once every replica has caught up, so that
    redundancy never dips on a move."""
    load = _follower_load(state.assignments)
    changes = {}
    for partition in sorted(state.assignments):
        assignment = state.assignments[partition]
        if len(assignment.replicas) <= target:
            continue
        if not all(views.get(h) is not None and views[h].in_sync(partition) for h in assignment.replicas[1:]):
            continue
        others = assignment.replicas[1:-1]
        if not others:
            continue
        leaving = max(others, key=lambda h: (load.get(h, 0), h))
        replicas = tuple(h for h in assignment.replicas if h != leaving)
        changes[str(partition)] = Assignment(replicas, assignment.epoch).to_data()
        load[leaving] -= 1
        if len(changes) >= settings.assignments_per_round:
            break
    return changes


def _rebalance(state, candidates, views, target, settings):
    """Move follower replicas from the host with the most to the hosts with the fewest (a new
    host gets its share): the new replica is added first, and the old one is dropped only
    once the new one has caught up (:func:`_drop_extra`). Only full replica sets whose every
    replica is caught up move: adding a replica is a change of the set, under the same rule
    as filling it (see :func:`assignment_decision`)."""
    if any(len(a.replicas) > target for a in state.assignments.values()):
        return {}  # one move at a time
    assignments = dict(state.assignments)
    counted = _follower_load(assignments)
    load = {h: counted.get(h, 0) for h in candidates}
    changes = {}
    while len(changes) < settings.assignments_per_round and len(load) > 1:
        busiest = max(sorted(load), key=lambda h: load[h])
        movable = []
        for idlest in sorted(load, key=lambda h: (load[h], h)):
            if load[busiest] - load[idlest] <= 1:
                break
            movable = [
                p
                for p in sorted(assignments)
                if busiest in assignments[p].replicas[1:]
                and idlest not in assignments[p].replicas
                and str(p) not in changes
                # A set with a host that is down (or behind) would need the newcomer for a
                # majority until it caught up, and the move could not finish: wait for it.
                and len(assignments[p].replicas) == target
                and caught_up(assignments[p], p, views) == target
            ]
            if movable:
                break
        if not movable:
            break
        partition = movable[0]
        current = assignments[partition]
        assignments[partition] = Assignment((*current.replicas, idlest), current.epoch)
        changes[str(partition)] = assignments[partition].to_data()
        load[busiest] -= 1
        load[idlest] += 1
    return changes


def voter_count(healthy, maximum):
    """The largest odd number of voters the healthy members allow (at least one)."""
    count = min(maximum, max(1, healthy))
    return count if count % 2 else count - 1


def next_config(voters, learners, state, views, now, settings, leader_id):
    """The next single membership change of the Raft group, or None.

    :return: ``(voters, learners)`` to propose.
    """
    voters, learners = set(voters), set(learners)
    members = set(state.members)

    def healthy(host):
        view = views.get(host)
        return host == leader_id or (view is not None and view.available)

    def long_gone(host):
        view = views.get(host)
        if host == leader_id or view is None or view.available or view.unavailable_since is None:
            return False
        return now - view.unavailable_since >= settings.replace_voter_after

    # Hosts no longer members leave the group: learners all at once (they do not vote),
    # voters one at a time.
    if learners - members:
        return voters, learners & members
    for host in sorted(voters - members):
        if len(voters) > 1:
            return voters - {host}, learners
    # Every member follows the decisions, as a learner until it is made a voter.
    if members - voters - learners:
        return voters, learners | (members - voters)
    # A voter that is gone is replaced when a healthy member can take its place: first it
    # steps down to learner, then the other steps up. (The voter count follows the number of
    # members, not of healthy ones, so a host that is down does not shrink the quorum.)
    spare = sorted(h for h in learners if healthy(h))
    for host in sorted(voters):
        if long_gone(host) and spare:
            return voters - {host}, learners | {host}
    want = voter_count(len(members), settings.max_voters)
    if len(voters) == 1 and want > 1:
        # A lone voter grows straight to three (or five): two voters would be a step that
        # one failure stops for good. Until two healthy members can join, it stays alone.
        joining = set(spare[: voter_count(1 + len(spare), want) - 1])
        if joining:
            return voters | joining, learners - joining
    elif len(voters) < want:
        if spare:
            return voters | {spare[0]}, learners - {spare[0]}
    elif len(voters) > want:
        extra = sorted(voters - {leader_id}, key=lambda h: (healthy(h), h))
        if extra:
            return voters - {extra[0]}, learners | {extra[0]}
    return None
