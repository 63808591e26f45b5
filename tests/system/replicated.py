"""A replicated cluster of real nodes for the system tests: starting it, reading /status,
waiting until replication is complete, and watching primaries fail over."""

import json
import time

from .harness import TIMEOUT, WaitTimeout, wait_for

PARTITIONS = 64


def start_cluster(processes, count, first=None):
    """*count* nodes, the first bootstrapping with ``--replicas 3`` (or *first*, a node not
    started yet), the others joining through it."""
    seed = first or processes.node("n0")
    seed.args += ["--replicas", "3"]
    seed.start()
    return [seed] + [processes.start_node(f"n{i}", args=["--seed", seed.address]) for i in range(1, count)]


def status(node, timeout=5.0):
    """The node's ``/status``, with a short timeout (a node may be frozen or cut off)."""
    code, _content_type, body = node.http_get("/status", timeout=timeout)
    assert code == 200, (code, body)
    return json.loads(body)


def replication_problems(nodes, caught_up):
    """Why replication among *nodes* (the live ones) is not complete; [] when it is.

    Complete: the hosts agree on the Voting leader and its term, all of them are members and
    there are min(5, members) voters; every partition has a replica set of min(3, members)
    hosts and exactly one host that is its ready, unfenced primary with that many followers,
    none in a full resync; no host lists a partition it has not caught up on (``inactive``).
    With *caught_up*, also every follower's match is the primary's last commit (once the
    load has stopped).
    """
    try:
        views = {node.host_id: status(node) for node in nodes}
    except (OSError, AssertionError) as e:
        return [f"/status failed: {e!r}"]
    problems = []
    leaders = {(v["voting"]["leader"], v["voting"]["term"]) for v in views.values()}
    if len(leaders) != 1 or None in {leader for leader, _ in leaders}:
        problems.append(f"leaders {leaders}")
    replicas = min(3, len(nodes))
    for host, view in views.items():
        voting = view["voting"]
        if set(voting["members"]) != set(views):
            problems.append(f"{host}: members {sorted(voting['members'])}")
        if len(voting["voters"]) != min(5, len(nodes)):
            problems.append(f"{host}: voters {voting['voters']}")
        held = sum(h["replicas"] for h in voting["holdings"].values())
        if held != PARTITIONS * replicas:
            problems.append(f"{host}: {held} replicas in all, not {PARTITIONS * replicas}")
        if view["replication"]["inactive"]:
            problems.append(f"{host}: inactive {view['replication']['inactive']}")
    claimed = {}
    for host, view in views.items():
        for partition, primary in view["replication"]["primary"].items():
            claimed.setdefault(int(partition), []).append((host, primary))
    for partition in range(PARTITIONS):
        claims = claimed.get(partition, [])
        if len(claims) != 1:
            problems.append(f"partition {partition}: primary claimed by {[h for h, _ in claims]}")
            continue
        host, primary = claims[0]
        followers = primary.get("followers", {})
        if not primary["ready"] or primary["fenced"]:
            problems.append(f"partition {partition}: primary {host} ready={primary['ready']} fenced={primary['fenced']}")
        elif len(followers) != replicas - 1 or host in followers or not set(followers) <= set(views):
            problems.append(f"partition {partition}: followers {sorted(followers)} of {host}")
        else:
            for follower, state in followers.items():
                if state["resync"] is not None:
                    problems.append(f"partition {partition}: {follower} in a full resync {state['resync']}")
                elif caught_up and state["match"] != primary["last"]:
                    problems.append(f"partition {partition}: {follower} at {state['match']}, primary at {primary['last']}")
    return problems


def wait_replicated(nodes, caught_up=False, timeout=TIMEOUT, what="replication to be complete"):
    """Wait until :func:`replication_problems` is empty; :return: how long it took."""
    started = time.monotonic()
    last = []

    def complete():
        last[:] = replication_problems(nodes, caught_up)
        return not last

    try:
        wait_for(complete, timeout=timeout, what=what, interval=0.2)
    except WaitTimeout as e:
        raise AssertionError(f"{e}; still: {last[:12]}{' ...' if len(last) > 12 else ''}") from None
    return time.monotonic() - started


def primaries_of(nodes):
    """``{host_id: number of partitions it leads}`` in the agreed map, as a live node sees it."""
    holdings = status(nodes[0])["voting"]["holdings"]
    return {host: h["primary"] for host, h in holdings.items()}


def led_by(node):
    """``{partition: epoch}`` that *node* leads now."""
    return {int(p): primary["epoch"] for p, primary in status(node)["replication"]["primary"].items()}


def assert_stepped_down(node, led_before):
    """*node* leads none of the partitions it led before (*led_before*) in the same epoch."""
    stale = {p: e for p, e in led_by(node).items() if p in led_before and e <= led_before[p]}
    assert not stale, f"{node.name} still leads partitions in their old epochs: {stale}"


def failed_over(survivors, victim):
    """Every partition has a ready primary among *survivors*, none is led by *victim* in the
    survivors' map, and they agree on it."""
    try:
        views = [status(node) for node in survivors]
    except (OSError, AssertionError):
        return False
    if any(v["voting"]["holdings"].get(victim.host_id, {}).get("primary") for v in views):
        return False
    ready = set()
    for view in views:
        ready |= {int(p) for p, primary in view["replication"]["primary"].items() if primary["ready"]}
    return ready == set(range(PARTITIONS))
