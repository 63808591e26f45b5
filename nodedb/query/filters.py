"""Scan filters: ``where`` maps a top-level field to a value (equality) or to ``{op: value}``.

Operators are ``=``, ``<``, ``<=``, ``>``, ``>=`` and ``in`` (the value is a list; the field
matches if it equals any element). Comparisons are type-aware, as in JSON: numbers compare
with numbers, text with text, bytes with bytes; ``true`` never equals ``1``. A field that is
missing, or of another type than the value, does not match. Several operators on one field
must all hold, and so must every field.
"""

import operator

from nodedb.errors import InvalidRequest

MAX_IN_VALUES = 1000

_ORDERED = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
OPERATORS = ("=", "<", "<=", ">", ">=", "in")


def _kind(value):
    kind = type(value)
    if kind is int or kind is float:
        return float
    return kind


def _equal(a, b):
    return _kind(a) is _kind(b) and a == b


def _ordered(compare, value):
    kind = _kind(value)
    if kind not in (float, str, bytes):
        raise InvalidRequest("<, <=, > and >= take a number, text or bytes")

    def test(field):
        return _kind(field) is kind and compare(field, value)

    return test


def _condition(op, value):
    if op == "=":
        return lambda field: _equal(field, value)
    if op == "in":
        if type(value) is not list or len(value) > MAX_IN_VALUES:
            raise InvalidRequest(f"'in' takes a list of at most {MAX_IN_VALUES} values")
        return lambda field: any(_equal(field, candidate) for candidate in value)
    if op in _ORDERED:
        return _ordered(_ORDERED[op], value)
    raise InvalidRequest(f"unknown filter operator {op!r}; use one of {', '.join(OPERATORS)}")


def compile_where(where):
    """A predicate ``doc -> bool`` for *where*, or None when there is nothing to filter.

    :raise InvalidRequest: if *where* is malformed.
    """
    if where is None or where == {}:
        return None
    if type(where) is not dict:
        raise InvalidRequest("where must be a map of field to value or {operator: value}")
    tests = []
    for field, spec in where.items():
        if type(field) is not str:
            raise InvalidRequest("where fields are text")
        if type(spec) is dict:
            if not spec:
                raise InvalidRequest(f"no operator given for field {field!r}")
            tests.extend((field, _condition(op, value)) for op, value in spec.items())
        else:
            tests.append((field, _condition("=", spec)))

    missing = object()

    def predicate(doc):
        for field, test in tests:
            value = doc.get(field, missing)
            if value is missing or not test(value):
                return False
        return True

    return predicate
