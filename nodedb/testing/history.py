"""Client histories and their checks: is every acknowledged write there, and is each
element's history linearizable?

A history is a list of :class:`Operation`: what a client asked (a write of a value, a read,
a delete), when it started and ended, and what came back. An operation that failed for sure
(``ok=False``) did not happen; one whose outcome is unknown (a timeout, a lost connection:
``ok=None``) may have taken effect at any moment after it started, or never.

:func:`check_linearizable` runs the Wing & Gong search with memoisation (as Knossos and
Porcupine do) on each element separately: it looks for an order of the operations, each at
some instant between its start and its end, in which every read returns the value of the
latest write before it. Elements are registers, so the search per element stays small.
"""

from dataclasses import dataclass

ABSENT = None  # the value of an element that does not exist (never written, or deleted)


@dataclass(frozen=True)
class Operation:
    """One client operation on one element.

    :ivar kind: ``"write"`` (insert or update: *value* is the document), ``"delete"`` or
        ``"read"`` (*value* is what it returned, :data:`ABSENT` for NotFound).
    :ivar ok: True (acknowledged), False (refused: it did not happen) or None (unknown).
    """

    key: object
    kind: str
    value: object
    start: float
    end: float
    ok: bool | None = True


class NotLinearizable(AssertionError):
    def __init__(self, key, operations):
        super().__init__(f"the history of {key!r} is not linearizable: {len(operations)} operations")
        self.key = key
        self.operations = operations


def lost_writes(history, final):
    """Acknowledged writes missing at the end.

    :param final: ``{key: value}`` read after the run (absent keys missing).
    :return: the acknowledged writes whose element's final value is neither their value nor
        that of any write or delete that may have come after them.
    """
    lost = []
    by_key = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    for key, ops in by_key.items():
        for op in ops:
            if op.kind != "write" or op.ok is not True:
                continue
            # A write of unknown outcome may take effect at any time after it started.
            later = [
                o
                for o in ops
                if o is not op and o.kind in ("write", "delete") and o.ok is not False and (o.ok is None or o.end > op.start)
            ]
            possible = [op.value] + [o.value if o.kind == "write" else ABSENT for o in later]
            if _freeze(final.get(key, ABSENT)) not in {_freeze(v) for v in possible}:
                lost.append(op)
    return lost


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def check_linearizable(history, initial=ABSENT):
    """:raise NotLinearizable: naming the first element whose history cannot be ordered."""
    by_key = {}
    for op in history:
        if op.ok is not False:
            by_key.setdefault(op.key, []).append(op)
    for key, ops in by_key.items():
        if not _linearizable(_that_matter(ops), initial):
            raise NotLinearizable(key, ops)


def _that_matter(ops):
    """*ops* without those that cannot change the verdict: reads of unknown outcome (they
    read nothing one can check) and writes of unknown outcome whose value no read returned.
    Such a write, if it took effect, was overwritten before any read: an order with it is an
    order without it. Each unknown write doubles the orders to search, and a run where a
    host hangs makes dozens of them on one element."""
    seen = {_freeze(op.value) for op in ops if op.kind == "read" and op.ok is True}
    return [
        op
        for op in ops
        if op.ok is True or (op.kind == "write" and _freeze(op.value) in seen) or op.kind == "delete"
    ]


def _linearizable(ops, initial):
    ops = sorted(ops, key=lambda o: o.start)
    count = len(ops)
    # Unknown-outcome operations never end: they may take effect arbitrarily late.
    ends = [o.end if o.ok is True else float("inf") for o in ops]
    seen = set()

    def search(done, state):
        if len(done) == count or all(ops[i].ok is None and ops[i].kind != "read" for i in range(count) if i not in done):
            return True
        memo = (done, _freeze(state))
        if memo in seen:
            return False
        seen.add(memo)
        # Any pending operation that started before every pending operation's end may go next.
        horizon = min(ends[i] for i in range(count) if i not in done)
        for i in range(count):
            if i in done or ops[i].start > horizon:
                continue
            op = ops[i]
            if op.kind == "read":
                if op.ok is True and _freeze(op.value) != _freeze(state):
                    continue
                next_state = state
            elif op.kind == "write":
                next_state = op.value
            else:
                next_state = ABSENT
            if search(done | frozenset((i,)), next_state):
                return True
        return False

    return search(frozenset(), initial)
