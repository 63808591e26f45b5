"""When a call goes straight to its host and when through another one: the relay rules.

A host that cannot reach another directly (its connection to it is down, or that host is
unavailable from here) while the cluster still has it in the partition map asks a third
host to pass the call on (``query.relay``). The relay calls the target once, over its own
connection, and never relays again, so a call takes at most two hops and never loops.

Whether a call may try another path depends on what its last attempt did to the target:

- :data:`FINAL`: the target answered (an error it raised travels back ``remote``), or this
  host refused the call itself: that is the answer.
- :data:`UNSENT`: the call certainly never reached the target (no connection, so nothing was
  written): nothing was applied, and any call may try another path.
- :data:`UNKNOWN`: the call may have reached the target (it timed out, or the connection
  dropped with it in flight). A read may try another path; a write must not (it could be
  applied twice) and fails with Timeout, the outcome unknown.

Nothing here does I/O; :class:`nodedb.query.router.Router` acts on these answers.
"""

from nodedb import errors

FINAL = "final"
UNSENT = "unsent"
UNKNOWN = "unknown"

#: How many relays one call tries at most (each only while the call's time lasts).
MAX_RELAYS = 3
#: The share of the time left that a relay gets for its own call to the target, so that its
#: answer ("no answer in time") reaches this host before this host's own call to it expires.
RELAY_SHARE = 0.8
#: Less time left than this is not worth an attempt.
MIN_ATTEMPT = 0.05


def classify(error):
    """:return: :data:`FINAL`, :data:`UNSENT` or :data:`UNKNOWN` for a failed peer call.

    The transport fails a call with a local ``Unavailable`` only when it never wrote it (no
    connection came up in time, or the one it had was already gone); ``ConnectionLost``
    (a subclass of Unavailable) and ``Timeout`` may come after it was written.
    """
    if not isinstance(error, errors.NodeDBError) or error.remote:
        return FINAL
    if isinstance(error, errors.ConnectionLost) or isinstance(error, errors.Timeout):
        return UNKNOWN
    if isinstance(error, errors.Unavailable):
        return UNSENT
    return FINAL


def relay_reply(error):
    """What a relay answers when its call to the target failed with *error*: a map that
    keeps the target's own answer apart from the relay's failure to get one.

    :return: ``{"error": wire error}`` (the target's answer), ``{"unsent": text}`` or
        ``{"unknown": text}``.
    """
    if not isinstance(error, errors.NodeDBError):
        return {UNKNOWN: "internal error"}  # a bug here, after the call may have gone out
    kind = classify(error)
    if kind == FINAL:
        return {"error": errors.to_wire(error)}
    return {kind: str(error)}


def read_relay_reply(reply):
    """The outcome a relay reported.

    :return: ``(FINAL, value)`` for the target's result, ``(FINAL, error)`` for the error
        the target answered (``remote``), ``(UNSENT, text)`` or ``(UNKNOWN, text)``. A reply
        that is none of these counts as UNKNOWN: the call may have reached the target.
    """
    if type(reply) is dict and len(reply) == 1:
        (kind, value), = reply.items()
        if kind == "ok":
            return FINAL, value
        if kind == "error":
            return FINAL, errors.from_wire(value)
        if kind in (UNSENT, UNKNOWN) and type(value) is str:
            return kind, value
    return UNKNOWN, "the relay answered something unexpected"


def rank_relays(target, candidates, assignments, score):
    """Order the hosts that could relay a call to *target*, best first.

    :param candidates: host ids this host reaches (neither itself nor *target*).
    :param assignments: ``{partition: Assignment}`` of the agreed partition map.
    :param score: ``score(host_id)`` -> that host's unreliability as seen from here.
    :return: the candidates sharing a replica set with *target* first (replication keeps
        them in touch with it, so they most likely still reach it), then by unreliability,
        then by id so that the order is stable.
    """
    near = set()
    for assignment in assignments.values():
        if target in assignment.replicas:
            near.update(assignment.replicas)
    return sorted(candidates, key=lambda host: (host not in near, score(host), host))
