"""How a new cluster is founded: its first Voting decision, made by the host that founds it.

Alone (the default), the founder is the only member and holds every partition; hosts that
join later get copies one replica at a time. With ``--bootstrap-expect N`` the founder waits
until N hosts of its cluster are present and founds the cluster with all of them: every one
a member from the first decision, every partition's replica set placed across them (so
there are min(N, replicas) copies from the first write, and no copy ever has to catch up on
data that only one host holds), and Voting grows from the founder straight to min(N, 5)
voters. Pure functions: the node supplies who is present.
"""


def initial_map(hosts, partitions, replicas):
    """Replica sets of ``min(len(hosts), replicas)`` hosts, primaries and copies spread evenly:
    partition *p* is led by the *p*-th host (round robin) and copied on the hosts after it.

    :return: ``{str(partition): [replicas, epoch]}`` as an ``assign`` decision writes it.
    """
    hosts = sorted(hosts)
    size = min(len(hosts), replicas)
    return {
        str(p): [[hosts[(p + i) % len(hosts)] for i in range(size)], 0] for p in range(partitions)
    }


def bootstrap_decision(identity, address, now, present, expect):
    """The first decision of the cluster *identity* describes, or None while fewer than
    *expect* hosts are present.

    :param present: ``{host id: address}`` of the other hosts of this cluster that this host
        sees now (available, and naming this cluster).
    :param expect: ``--bootstrap-expect`` (1: found it alone, at once).
    """
    founder = identity["host_id"]
    decision = {
        "op": "bootstrap",
        "cluster": identity["cluster_id"],
        "partitions": identity["partitions"],
        "replicas": identity["replicas"],
        "host": founder,
        "address": address,
        "at": now,
    }
    if expect <= 1:
        return decision
    others = {h: a for h, a in present.items() if h != founder}
    if 1 + len(others) < expect:
        return None
    decision["members"] = others
    decision["map"] = initial_map([founder, *others], identity["partitions"], identity["replicas"])
    return decision
