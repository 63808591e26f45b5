"""The partition map as clients see it: the ``map`` request (docs/protocol.md).

A partition-aware client asks any host for it and then sends each request straight to the
primary of its element's partition, which saves the hop through a host that would forward it.
The map is the agreed :class:`~nodedb.voting.state.ClusterState`, so every host answers the
same map for the same ``version`` (the index of the last Voting log entry it applied), and a
higher version is a newer map. A client with an older map is still served correctly: the host
it reaches forwards the request, as for any client.
"""

from nodedb import errors


def install(api, agreed, partition_bits):
    """Serve ``map`` to clients on *api* (a :class:`~nodedb.query.api.RequestAPI`).

    :param agreed: ``agreed()`` -> ``(state, version)``: the agreed
        :class:`~nodedb.voting.state.ClusterState` and the index of the last Voting log entry
        it includes.
    :param partition_bits: the high bits of an element id that name its partition.
    """

    def serve(request):
        state, version = agreed()
        return describe(state, version, partition_bits, check_since(request.get("since")))

    api.register("map", serve, client=True)


def check_since(value):
    """The ``since`` field of a ``map`` request: None, or the version the client holds."""
    if value is not None and (type(value) is not int or value < 0):
        raise errors.InvalidRequest("map: since is a non-negative integer")
    return value


def describe(state, version, partition_bits, since=None):
    """The ``map`` reply for the agreed *state* at *version*.

    :param partition_bits: the high bits of an element id that name its partition.
    :param since: the version the client holds: when it is as new as this one, the reply
        is only ``{"version": version}``.
    :raise Unavailable: if this host has no agreed map yet (it is still joining).
    """
    if state.cluster_id is None:
        raise errors.Unavailable("this host has no partition map yet")
    if since is not None and since >= version:
        return {"version": version}
    assignments = state.assignments
    hosts = sorted(set(state.members).union(*(a.replicas for a in assignments.values())))
    index = {host: i for i, host in enumerate(hosts)}
    return {
        "version": version,
        "cluster": state.cluster_id,
        "partition_bits": partition_bits,
        "hosts": [[host, state.members.get(host, {}).get("address")] for host in hosts],
        "partitions": [
            [index[host] for host in assignments[p].replicas] if p in assignments else [] for p in range(state.partitions)
        ],
    }
