"""Fault tolerant from the first second (issue 12), in the simulator: faults start as the
hosts start, not on a settled cluster. Once every host advertises ``write`` or ``read``, the
loss of any one host for good loses no acknowledged write, writes resume through the
survivors within 10 s and a new host can still join; right after formation, during a join,
while a voter is replaced, during a replica move and during a primary handoff."""

import random

import pytest
from twisted.internet import task

from nodedb import errors
from nodedb.testing.cluster import SimCluster
from nodedb.testing.simulation import Faults, seeds
from nodedb.testing.workload import FaultSchedule, Workload

pytestmark = pytest.mark.usefixtures("seed_report")

#: The contract: writes through the survivors resume within this many seconds of a crash.
RESUME_WITHIN = 10.0
#: How often the moment to crash at is looked for (handoffs last a few milliseconds).
FINE = 0.001


def host_id(host):
    return host.node.identity.host_id


def voting(host):
    return host.node.voting


def state_of(cluster):
    return voting(cluster.live()[0]).state


def forming(seed, hosts, **options):
    """*hosts* hosts started at once (the first bootstraps, the others join through it) with
    a workload running from the first moment."""
    cluster = SimCluster(seed, **options)
    cluster.start_hosts(hosts)
    workload = Workload(cluster, random.Random(seed))
    workload.start()
    return cluster, workload


def victim_of(cluster, choice, rng):
    if choice == "leader":
        return cluster.leader()
    if choice == "busiest primary":
        return cluster.busiest_primary()
    return rng.choice(cluster.live())


async def write_every_partition(cluster, client):
    """Insert one element into every partition through *client*, retrying each until it is
    acknowledged."""
    layout = cluster.live()[0].node.storage.layout
    pending = list(range(cluster.live()[0].node.voting.state.partitions))
    while pending:
        for partition in list(pending):
            try:
                await client.insert("probe", {"p": partition}, near=layout.first_id(partition))
                pending.remove(partition)
            except errors.NodeDBError:
                pass
        if pending:
            await task.deferLater(cluster.clock, 0.1, lambda: None)


def crash_and_check(cluster, workload, victim):
    """Crash *victim* for good, then hold the cluster to the contract: writes to every
    partition through the survivors within :data:`RESUME_WITHIN`, no acknowledged write lost,
    every history linearizable, and a host joining through a survivor is admitted."""
    crashed_at = cluster.clock.seconds()
    cluster.crash(victim)
    survivors = cluster.live()
    cluster.wait(write_every_partition(cluster, cluster.client(hosts=survivors, timeout=1.0)), timeout=60)
    resumed = cluster.clock.seconds() - crashed_at
    print(f"writes to every partition resumed {resumed:.2f} s after {victim.name} crashed")
    assert resumed <= RESUME_WITHIN, f"writes stopped for {resumed:.1f} s after {victim.name} crashed ({cluster})"
    cluster.run(2.0)
    workload.stop()
    cluster.run_until(workload.finished, timeout=30)
    report = workload.check()
    assert report.lost == [], f"acknowledged writes lost: {report.lost}"
    assert report.acknowledged > 0
    newcomer = cluster.add_host(seeds=[survivors[0].address])
    cluster.run_until(cluster.admitted, timeout=60)
    assert host_id(newcomer) in state_of(cluster).members


def formed(seed, hosts, **options):
    """:func:`forming`, run until every host is admitted and not a moment longer."""
    cluster, workload = forming(seed, hosts, **options)
    cluster.run_until(cluster.admitted, timeout=30, check_every=FINE)
    return cluster, workload


def join(cluster):
    """A new host, given every live host as a seed (as an operator would list several): one
    of them may be the host about to be lost."""
    return cluster.add_host(seeds=[h.address for h in cluster.live()])


def by_id(cluster, wanted):
    return next(h for h in cluster.live() if host_id(h) == wanted)


# -- the moments, each a function of the cluster: the host to crash then, or None ------------


def joining(newcomer):
    """The newcomer is a member and not admitted yet: crash the Voting leader."""

    def moment(cluster):
        member = state_of(cluster).members.get(host_id(newcomer))
        return cluster.leader() if member is not None and not member["admitted"] else None

    return moment


def moving_copy(choice):
    """A replica set has a copy more than it needs, not caught up yet (a copy moving in):
    crash the host it moves to (*choice* ``"to"``) or the partition's primary."""

    def moment(cluster):
        leader = cluster.leader()
        if leader is None:
            return None
        state, views = voting(leader).state, leader.node.placement.host_views()
        target = min(state.replicas, len(state.members))
        for partition, assignment in sorted(state.assignments.items()):
            newest = assignment.replicas[-1]
            if len(assignment.replicas) > target and newest in views and not views[newest].in_sync(partition):
                return by_id(cluster, newest if choice == "to" else assignment.primary)
        return None

    return moment


def handing_over(choice, to):
    """A primary is handing a partition over to the host *to* for a planned move: crash the
    primary (*choice* ``"from"``) or *to*."""

    def moment(cluster):
        for host in cluster.live():
            leads = host.node.logsync.primaries.leads if host.node.logsync is not None else {}
            if any(lead.handing_over_to == host_id(to) for lead in leads.values()):
                return host if choice == "from" else to
        return None

    return moment


def replacing_voter(gone):
    """The voter *gone* (a host id) has stepped down and its replacement has not stepped up
    yet: crash another voter, the leader."""

    def moment(cluster):
        leader = cluster.leader()
        if leader is None:
            return None
        config = voting(leader).raft.config
        return leader if gone not in config.voters and len(config.voters) < 5 else None

    return moment


def crash_at(cluster, workload, moment, timeout=60):
    """Run until *moment* names a host, and crash it at once."""
    victims = []
    cluster.run_until(lambda: victims.append(moment(cluster)) or victims[-1] is not None, timeout, check_every=FINE)
    crash_and_check(cluster, workload, victims[-1])


@pytest.mark.parametrize(
    "seed, hosts, choice",
    [(seed, 3, choice) for seed in seeds(2) for choice in ("leader", "busiest primary")]
    + [(seed, 4, "random") for seed in seeds(2)],
)
def test_one_host_lost_right_after_formation(seed, hosts, choice):
    cluster, workload = formed(seed, hosts)
    crash_and_check(cluster, workload, victim_of(cluster, choice, random.Random(seed)))


@pytest.mark.parametrize("seed", seeds(2))
def test_one_host_lost_during_a_join(seed):
    cluster, workload = formed(seed, 3)
    newcomer = join(cluster)
    crash_at(cluster, workload, joining(newcomer))


@pytest.mark.parametrize("seed, choice", [(seed, choice) for seed in seeds(2) for choice in ("to", "primary")])
def test_one_host_lost_during_a_replica_move(seed, choice):
    cluster, workload = formed(seed, 3)
    join(cluster)
    crash_at(cluster, workload, moving_copy(choice))


@pytest.mark.parametrize("seed, choice", [(seed, choice) for seed in seeds(2) for choice in ("from", "to")])
def test_one_host_lost_during_a_primary_handoff(seed, choice):
    cluster, workload = formed(seed, 3)
    newcomer = join(cluster)
    crash_at(cluster, workload, handing_over(choice, to=newcomer))


@pytest.mark.parametrize("seed", seeds(2))
def test_a_second_host_lost_while_a_voter_is_replaced(seed):
    """Six hosts, five voters, five replicas of every partition: two hosts may fail. A voter
    is lost, and the leader too while the spare host is taking its place."""
    cluster, workload = formed(seed, 6, replicas=5)
    voters = voting(cluster.leader()).raft.config.voters
    gone = random.Random(seed).choice([h for h in cluster.live() if host_id(h) in voters])
    gone_id = host_id(gone)
    cluster.crash(gone)
    crash_at(cluster, workload, replacing_voter(gone_id))


#: After the last fault heals, writes to every partition must succeed again within this.
UNSTUCK_WITHIN = 30.0


@pytest.mark.parametrize(
    "seed, hosts, kinds",
    [(seed, 3, ("crash", "partition", "pause")) for seed in seeds(4)]
    + [(seed, hosts, ("crash", "partition", "pause", "join")) for hosts in (4, 5) for seed in seeds(2)],
)
def test_faults_from_the_first_second_lose_nothing_and_leave_nothing_stuck(seed, hosts, kinds):
    """The fault schedule starts with the hosts and the workload (the first fault within 4 s,
    while the cluster is forming), on a lossy, reordering network; afterwards every
    acknowledged write is there, every element's history is linearizable, and once every
    host is back, writes go through within :data:`UNSTUCK_WITHIN` and every host is admitted."""
    cluster, workload = forming(seed, hosts, faults=Faults(drop=0.01, reorder=0.05))
    schedule = FaultSchedule(cluster, random.Random(seed), kinds)
    schedule.run(30.0, gap=(0.0, 4.0))
    cluster.network.faults = Faults()
    cluster.wait(write_every_partition(cluster, cluster.client(timeout=1.0)), timeout=UNSTUCK_WITHIN)
    cluster.run_until(cluster.admitted, timeout=60)
    workload.stop()
    cluster.run_until(workload.finished, timeout=30)
    report = workload.check()
    assert report.lost == [], f"acknowledged writes lost: {report.lost}; faults {schedule.events}"
    assert report.acknowledged > 50, f"the workload barely ran; faults {schedule.events}"


@pytest.mark.parametrize("seed", seeds(1))
def test_a_host_joining_through_a_host_still_joining_joins_once_that_one_has(seed):
    """Hosts started at once, each through the one before: the seed of the third names no
    cluster yet when it is first asked. The third asks again, rather than failing to start
    while it goes on gossiping (the leader would admit it and move copies to a host that
    never takes them)."""
    cluster = SimCluster(seed)
    first, second = cluster.start_hosts(2)
    cluster.network.partition([first.host], [second.host])
    third = cluster.add_host(seeds=[second.address])
    cluster.run(3.0)
    assert third.node.voting is None  # its seed had no cluster to describe
    with pytest.raises(errors.Unavailable, match="still joining"):
        cluster.wait(cluster.client(hosts=[third]).get("item", 1))
    cluster.network.heal()
    cluster.run_until(cluster.admitted, timeout=60)
    assert host_id(third) in state_of(cluster).members
