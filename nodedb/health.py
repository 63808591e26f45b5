"""Is the cluster healthy, as this host sees it? A pure function of what it knows.

Healthy means writes can go on: Voting has a leader with a live majority of its voters, and
every partition has a live primary with a live majority of its replica set caught up. The
answer also says how close to the edge the cluster is (``fault_tolerance``: how many hosts
may fail now without Voting or any partition losing its majority) and what is wrong, in a
few plain lines: per-partition trouble is counted, not listed partition by partition.
``/status`` (its ``health`` object), ``GET /health`` and ``nodedb status`` show it.
"""

from nodedb.logsync.state import majority
from nodedb.voting.policy import voter_count

#: Partitions named in a problem line or a ``first`` list before it is cut short.
SHOWN = 5


def _live(views, host):
    view = views.get(host)
    return view is not None and view.available


def _live_copies(partition, assignment, views):
    """The replicas of *partition* that are live and caught up (its live primary is, by
    definition: the others follow it)."""
    primary = assignment.primary
    followers = sum(1 for h in assignment.replicas[1:] if h in views and views[h].in_sync(partition))
    return followers + (primary is not None and _live(views, primary))


def _without_primary_text(partitions):
    if len(partitions) == 1:
        return f"partition {partitions[0]} has no live primary"
    shown = ", ".join(str(p) for p in partitions[:SHOWN]) + (", ..." if len(partitions) > SHOWN else "")
    return f"{len(partitions)} partitions have no live primary: {shown}"


def _copies_text(partitions, one, many, copies, size):
    """``partition 7 <one> (...)`` or ``12 partitions <many> (...)``."""
    subject = f"partition {partitions[0]} {one}" if len(partitions) == 1 else f"{len(partitions)} partitions {many}"
    return f"{subject} ({copies} of {size} copies live and caught up)"


def _first(partitions):
    return {"count": len(partitions), "first": partitions[:SHOWN]}


def _voting(leader, voters, views, want):
    """:return: ``(fatal problems, other problems, live voters, fault tolerance)`` of the Raft
    group."""
    live = sum(1 for h in voters if _live(views, h))
    needed = majority(len(voters))
    fatal = []
    if leader is None:
        fatal.append("no Voting leader")
    elif not _live(views, leader):
        fatal.append(f"the Voting leader {leader} is down")
    if live < needed:
        fatal.append(f"voting has {live} of {len(voters)} live voters, needs {needed}")
    other = [f"voting has {len(voters)} voter{'s' * (len(voters) != 1)}, wants {want}"] if len(voters) < want else []
    return fatal, other, live, live - needed


def assess(state, leader, voters, views, max_voters):
    """The health of the cluster.

    :param state: the agreed :class:`~nodedb.voting.state.ClusterState`.
    :param leader: the Voting leader this host knows of, or None.
    :param voters: the voters of the Raft group.
    :param views: ``{host id: HostView}``: which hosts this host sees available, and which
        partitions each holds caught up.
    :param max_voters: the most voters the policy wants.
    :return: a JSON-ready dict: ``healthy``, ``problems`` (plain words: what makes it
        unhealthy first, then what only lowers its fault tolerance), ``leader``, ``voters``
        (``have``: live voters, ``want``: as many as the policy wants), ``partitions``,
        ``partitions_without_primary`` and ``under_replicated`` (``count`` and the ``first``
        few), ``fault_tolerance``.
    """
    want = voter_count(len(state.members), max_voters)
    fatal, degraded, live_voters, tolerance = _voting(leader, voters, views, want)
    if state.cluster_id is None:
        fatal.insert(0, "this host has not learned the cluster state yet")
    target = min(state.replicas, len(state.members))
    without_primary, under_replicated = [], []
    without_majority, short = {}, {}  # (live copies, of how many) -> partitions
    for partition in sorted(state.assignments):
        assignment = state.assignments[partition]
        copies = _live_copies(partition, assignment, views)
        size = len(assignment.replicas)
        if copies < target:
            under_replicated.append(partition)
        if assignment.primary is None or not _live(views, assignment.primary):
            without_primary.append(partition)
        elif copies < majority(size):
            without_majority.setdefault((copies, size), []).append(partition)
        else:
            tolerance = min(tolerance, copies - majority(size))
            if copies < target:
                short.setdefault((copies, target), []).append(partition)
    if without_primary:
        fatal.append(_without_primary_text(without_primary))
    for (copies, size), partitions in sorted(without_majority.items()):
        fatal.append(_copies_text(partitions, "has no live majority", "have no live majority", copies, size))
    for (copies, size), partitions in sorted(short.items()):
        degraded.append(_copies_text(partitions, "is under-replicated", "under-replicated", copies, size))
    healthy = not fatal
    return {
        "healthy": healthy,
        "problems": fatal + degraded,
        "leader": leader,
        "voters": {"have": live_voters, "want": want},
        "partitions": len(state.assignments),
        "partitions_without_primary": _first(without_primary),
        "under_replicated": _first(under_replicated),
        "fault_tolerance": max(0, tolerance) if healthy else 0,
    }


def cluster_health(voting, views):
    """:func:`assess` of what a running :class:`~nodedb.interfaces.IVoting` knows."""
    return assess(voting.state, voting.leader(), voting.voters(), views, voting.settings.max_voters)


#: The ``problems`` of a node that answers but has no health to tell yet.
STARTING = ["the node is still starting"]


def summary(health):
    """The one line ``nodedb status`` and the admin page start with, of a ``health`` object
    (None: the node is still starting)."""
    if health is None:
        return "unhealthy: " + STARTING[0]
    if not health["healthy"]:
        return "unhealthy: " + "; ".join(health["problems"])
    tolerance = health["fault_tolerance"]
    full = health["partitions"] - health["under_replicated"]["count"]
    return (
        f"healthy: can lose {tolerance} host{'s' * (tolerance != 1)}; "
        f"{full}/{health['partitions']} partitions fully replicated"
    )


def shown_status(host):
    """A ``/status`` host entry's status as people read it: ``write (down)`` when this host
    sees it unavailable, whatever it last advertised."""
    return host["status"] if host.get("available", True) else f"{host['status']} (down)"
