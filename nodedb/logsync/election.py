"""Failover elections: whom to ask for a promise, and whom the answers choose. Pure.

The Voting leader fences the replicas of a partition at a new epoch with ``logsync.promise``
and picks the most complete copy among a majority of answers (docs/replication.md,
"Failover"); :meth:`nodedb.logsync.service.LogSyncService.elect` does the calls.
"""

from nodedb.logsync.state import choose_primary, majority


def promise_requests(requests, skip=()):
    """The ``logsync.promise`` calls an election makes, one per host.

    :param requests: ``{partition: (new_epoch, replicas)}``.
    :param skip: hosts not to ask (known to be down: waiting for them would only delay the
        answer).
    :return: ``[(host, [[partition, epoch], ...]), ...]`` in host order.
    """
    by_host = {}
    for partition, (epoch, replicas) in requests.items():
        for host in replicas:
            by_host.setdefault(host, []).append([partition, epoch])
    return [(host, parts) for host, parts in sorted(by_host.items()) if host not in skip]


def tally(replies, requests, prefer):
    """The new primaries the answers choose.

    :param replies: ``[(host, parts, reply)]``: each call made, with its reply (None if it
        failed).
    :param requests: as for :func:`promise_requests`.
    :param prefer: ``{partition: host}`` to pick when it is among the most complete.
    :return: ``{partition: host}`` for the partitions where a majority of the replicas
        promised (see :func:`nodedb.logsync.state.majority`) and one of them may lead.
    """
    answers = {partition: {} for partition in requests}
    for host, parts, reply in replies:
        if type(reply) is not dict or type(reply.get("parts")) is not list:
            continue
        for (partition, _epoch), answer in zip(parts, reply["parts"]):
            if type(answer) is list and len(answer) == 4 and answer[0] is True:
                answers[partition][host] = (answer[1], answer[2], bool(answer[3]))
    chosen = {}
    for partition, (_epoch, replicas) in requests.items():
        if len(answers[partition]) >= majority(len(replicas)):
            host = choose_primary(answers[partition], prefer.get(partition))
            if host is not None:
                chosen[partition] = host
    return chosen
