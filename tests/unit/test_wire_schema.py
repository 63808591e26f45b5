"""Schema: how a request's fields are checked, once, into a handler's keyword arguments."""

import pytest

from nodedb.errors import InvalidRequest
from nodedb.wire.schema import Field, Kind, Schema, integer, of_type


def _items(value):
    if type(value) is not list:
        raise InvalidRequest("items is a list")
    return value


COUNT = integer("count is a small integer", low=1, high=10)
SCHEMA = Schema(
    "thing",
    (
        Field("name", of_type(str, "text", "name is text"), required=True, argument="thing_name"),
        Field("count", COUNT),
        Field("items", Kind("array", _items), required=True, check_missing=True),
    ),
)


def test_the_arguments_are_the_checked_fields_by_parameter_name():
    assert SCHEMA.arguments({"id": 1, "op": "thing", "name": "a", "count": 3, "items": [1]}) == {
        "thing_name": "a",
        "count": 3,
        "items": [1],
    }
    assert SCHEMA.check({"name": "a", "items": []}) == {"name": "a", "items": []}


def test_an_optional_field_absent_or_null_is_none_unchecked():
    assert SCHEMA.arguments({"name": "a", "items": []})["count"] is None
    assert SCHEMA.check({"name": "a", "count": None, "items": []}) == {"name": "a", "count": None, "items": []}


@pytest.mark.parametrize(
    "message, match",
    [
        ({"items": []}, "thing: missing field 'name'"),
        ({"name": None, "items": []}, "name is text"),
        ({"name": 5, "items": []}, "name is text"),
        ({"name": "a"}, "items is a list"),  # its absence refused in its kind's words
        ({"name": "a", "items": None}, "items is a list"),
        ({"name": "a", "items": [], "count": 0}, "count is a small integer"),
        ({"name": "a", "items": [], "count": 11}, "count is a small integer"),
        ({"name": "a", "items": [], "count": True}, "count is a small integer"),
        ({"name": "a", "items": [], "count": 2.0}, "count is a small integer"),
        ({"name": "a", "items": [], "colour": 1}, "thing: unknown field 'colour'"),
        ({"name": "a", "items": [], "x": 1, b"x": 2}, "thing: unknown field"),  # text and bytes keys
    ],
)
def test_bad_fields_are_refused(message, match):
    with pytest.raises(InvalidRequest, match=match):
        SCHEMA.arguments(message)


def test_the_envelope_is_not_an_argument_and_can_be_narrowed():
    SCHEMA.check({"id": 1, "op": "thing", "name": "a", "items": []})
    with pytest.raises(InvalidRequest, match="unknown field 'id'"):
        SCHEMA.check({"id": 1, "op": "thing", "name": "a", "items": []}, envelope={"op"})


def test_a_schema_may_ignore_fields_it_does_not_know():
    assert Schema("ping", ignore_unknown=True).arguments({"op": "ping", "anything": 1}) == {}


def test_to_wire_is_what_arguments_reads_back():
    fields = SCHEMA.to_wire(thing_name="a", count=None, items=[2])
    assert fields == {"name": "a", "items": [2]}
    assert SCHEMA.arguments(fields) == {"thing_name": "a", "count": None, "items": [2]}
    with pytest.raises(TypeError):
        SCHEMA.to_wire(name="a")


def test_only_a_required_fields_absence_is_checked():
    with pytest.raises(ValueError):
        Field("x", COUNT, check_missing=True)
