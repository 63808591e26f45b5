"""Declarative schemas of wire operations: which fields a request may carry, of what kind,
and which it must carry.

A request is checked against its operation's :class:`Schema` once, where it is dispatched
(:class:`nodedb.query.api.RequestAPI`), and its handler gets the checked values as keyword
arguments; the layers below trust them. The same schemas list each operation's fields in
docs/protocol.md, which a test holds to them.
"""

from dataclasses import dataclass
from typing import Callable

from nodedb.errors import InvalidRequest

#: The fields of a request that are not the operation's arguments: its request id and name.
ENVELOPE = frozenset({"id", "op"})
_ABSENT = object()


@dataclass(frozen=True)
class Kind:
    """A kind of value on the wire.

    :ivar name: the kind as docs/protocol.md's tables name it (``key``, ``document``, ...).
    :ivar check: ``check(value)`` -> the value to hand on; raises InvalidRequest.
    """

    name: str
    check: Callable


def integer(message, name="int", low=None, high=None):
    """The kind of an integer (never a bool or float) from *low* to *high*, both included
    when given; anything else is refused with *message*."""

    def check(value):
        if type(value) is not int or (low is not None and value < low) or (high is not None and value > high):
            raise InvalidRequest(message)
        return value

    return Kind(name, check)


def of_type(python_type, name, message):
    """The kind of a value of exactly *python_type* (``str`` for text, ``dict`` for a map)."""

    def check(value):
        if type(value) is not python_type:
            raise InvalidRequest(message)
        return value

    return Kind(name, check)


@dataclass(frozen=True)
class Field:
    """One argument of an operation.

    :ivar name: its name on the wire.
    :ivar kind: what its value must be.
    :ivar required: whether a request must carry it. An optional field given as null counts
        as absent, and its handler gets None; a required one given as null is refused by
        its kind.
    :ivar check_missing: for a required field, refuse its absence as its kind refuses null,
        in the kind's own words, rather than as a missing field.
    :ivar argument: the handler's parameter for it, when that is not *name*.
    """

    name: str
    kind: Kind
    required: bool = False
    check_missing: bool = False
    argument: str = None

    def __post_init__(self):
        if self.check_missing and not self.required:
            raise ValueError(f"field {self.name!r}: only a required field's absence is checked")

    @property
    def parameter(self):
        return self.argument or self.name


@dataclass(frozen=True)
class Schema:
    """The fields of one operation.

    :ivar label: names the operation in refusals (``insert: missing field 'doc'``).
    :ivar fields: its :class:`Field` s, in the order they are checked (and documented).
    :ivar ignore_unknown: let fields it does not know through (``status``, ``ping``);
        otherwise a request carrying one is refused.
    """

    label: str
    fields: tuple = ()
    ignore_unknown: bool = False

    def __post_init__(self):
        # Worked out once: every request of the operation is checked against them.
        object.__setattr__(self, "_names", frozenset(field.name for field in self.fields))
        object.__setattr__(self, "_parameters", frozenset(field.parameter for field in self.fields))
        rows = tuple((f.name, f.parameter, f.kind.check, f.required, f.check_missing) for f in self.fields)
        object.__setattr__(self, "_rows", rows)

    def check(self, message, envelope=ENVELOPE):
        """The checked values of the fields *message* carries, by wire name (None for an
        optional one given as null).

        :param envelope: the fields of *message* that are not arguments.
        :raise InvalidRequest: for a missing, mistyped or unknown field.
        """
        return self._check(message, envelope, by_parameter=False)

    def arguments(self, message, envelope=ENVELOPE):
        """The keyword arguments of the operation's handler: every field's checked value by
        parameter name, None for an optional field that is absent."""
        return self._check(message, envelope, by_parameter=True)

    def _check(self, message, envelope, by_parameter):
        if not self.ignore_unknown:
            unknown = message.keys() - self._names
            if unknown and (unknown := unknown - envelope):
                # repr first: the keys may mix text and bytes, which do not sort together.
                raise InvalidRequest(f"{self.label}: unknown field {sorted(map(repr, unknown))[0]}")
        checked = {}
        for name, parameter, check, required, check_missing in self._rows:
            value = message.get(name, _ABSENT)
            if value is _ABSENT:
                if check_missing:
                    value = check(None)
                elif required:
                    raise InvalidRequest(f"{self.label}: missing field {name!r}")
                elif not by_parameter:
                    continue
                else:
                    value = None
            elif value is not None or required:
                value = check(value)
            checked[parameter if by_parameter else name] = value
        return checked

    def to_wire(self, **arguments):
        """The fields of a request from the handler's keyword *arguments*, leaving out those
        that are None (absent): what :meth:`arguments` reads back."""
        unexpected = arguments.keys() - self._parameters
        if unexpected:
            raise TypeError(f"{self.label} has no argument {sorted(unexpected)[0]!r}")
        return {field.name: arguments[field.parameter] for field in self.fields if arguments.get(field.parameter) is not None}
