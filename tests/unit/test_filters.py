"""Scan filters and cursors."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodedb.errors import InvalidRequest
from nodedb.ids import MAX_ID
from nodedb.query.cursor import decode_cursor, encode_cursor
from nodedb.query.filters import MAX_IN_VALUES, OPERATORS, compile_where
from nodedb import codec


def matches(where, doc):
    return compile_where(where)(doc)


class TestCompileWhere:
    @pytest.mark.parametrize("where", [None, {}])
    def test_nothing_to_filter(self, where):
        assert compile_where(where) is None

    def test_equality_shorthand(self):
        assert matches({"name": "ada"}, {"name": "ada", "age": 36})
        assert not matches({"name": "ada"}, {"name": "bob"})
        assert matches({"tags": ["a", "b"]}, {"tags": ["a", "b"]})
        assert not matches({"tags": ["a", "b"]}, {"tags": ["b", "a"]})
        assert matches({"sub": {"=": {"x": 1}}}, {"sub": {"x": 1}})
        assert matches({"nothing": None}, {"nothing": None})
        assert not matches({"nothing": None}, {})

    @pytest.mark.parametrize(
        "op, value, field, expected",
        [
            ("=", 30, 30, True),
            ("=", 30, 31, False),
            ("<", 30, 29, True),
            ("<", 30, 30, False),
            ("<=", 30, 30, True),
            ("<=", 30, 31, False),
            (">", 30, 31, True),
            (">", 30, 30, False),
            (">=", 30, 30, True),
            (">=", 30, 29, False),
            ("<", "m", "a", True),
            ("<", "m", "z", False),
            (">=", b"\x05", b"\x05", True),
            (">", b"\x05", b"\x04", False),
            ("in", [1, "two", None], "two", True),
            ("in", [1, "two", None], None, True),
            ("in", [1, "two", None], 3, False),
            ("in", [], 1, False),
        ],
    )
    def test_every_operator(self, op, value, field, expected):
        assert matches({"f": {op: value}}, {"f": field}) is expected

    def test_numbers_compare_across_int_and_float(self):
        assert matches({"f": 1}, {"f": 1.0})
        assert matches({"f": {"<": 1.5}}, {"f": 1})
        assert matches({"f": {">": 1}}, {"f": 1.5})
        assert matches({"f": {"in": [2.0]}}, {"f": 2})

    @pytest.mark.parametrize(
        "where, doc",
        [
            ({"f": True}, {"f": 1}),
            ({"f": 1}, {"f": True}),
            ({"f": False}, {"f": 0}),
            ({"f": 0}, {"f": False}),
            ({"f": {"in": [1]}}, {"f": True}),
            ({"f": {"in": [True]}}, {"f": 1}),
            ({"f": "30"}, {"f": 30}),
            ({"f": 30}, {"f": "30"}),
            ({"f": b"a"}, {"f": "a"}),
            ({"f": {"<": 10}}, {"f": "5"}),
            ({"f": {">": "a"}}, {"f": 5}),
            ({"f": {"<": b"z"}}, {"f": "a"}),
            ({"f": {">=": 0}}, {"f": True}),
            ({"f": {">=": 0}}, {"f": None}),
            ({"f": {">=": 0}}, {"f": [1]}),
        ],
    )
    def test_comparisons_are_type_aware(self, where, doc):
        assert not matches(where, doc)

    def test_true_equals_true(self):
        assert matches({"f": True}, {"f": True})
        assert not matches({"f": True}, {"f": False})

    @pytest.mark.parametrize("op", OPERATORS)
    def test_a_missing_field_never_matches(self, op):
        value = [None] if op == "in" else 0
        assert not matches({"f": {op: value}}, {"g": 0})

    def test_every_operator_of_a_field_must_hold(self):
        where = {"age": {">=": 18, "<": 65}}
        assert [matches(where, {"age": age}) for age in (17, 18, 40, 64, 65)] == [False, True, True, True, False]

    def test_every_field_must_hold(self):
        where = {"age": {">=": 18}, "name": {"in": ["ada", "bob"]}, "active": True}
        assert matches(where, {"age": 30, "name": "ada", "active": True, "other": 1})
        assert not matches(where, {"age": 30, "name": "eve", "active": True})
        assert not matches(where, {"age": 3, "name": "ada", "active": True})
        assert not matches(where, {"age": 30, "name": "ada", "active": 1})
        assert not matches(where, {"age": 30, "name": "ada"})

    @pytest.mark.parametrize(
        "where, message",
        [
            ([("a", 1)], "where must be a map"),
            ("a=1", "where must be a map"),
            ({1: 2}, "where fields are text"),
            ({"a": {}}, "no operator given for field 'a'"),
            ({"a": {"!=": 1}}, "unknown filter operator '!='"),
            ({"a": {"like": "x%"}}, "unknown filter operator"),
            ({"a": {"in": 1}}, "'in' takes a list"),
            ({"a": {"in": "abc"}}, "'in' takes a list"),
            ({"a": {"in": list(range(MAX_IN_VALUES + 1))}}, f"at most {MAX_IN_VALUES}"),
            ({"a": {"<": None}}, "take a number, text or bytes"),
            ({"a": {">=": True}}, "take a number, text or bytes"),
            ({"a": {">": [1]}}, "take a number, text or bytes"),
            ({"a": {"<=": {"x": 1}}}, "take a number, text or bytes"),
        ],
    )
    def test_malformed_where_is_an_invalid_request(self, where, message):
        with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace("[", r"\[")):
            compile_where(where)

    def test_in_accepts_the_maximum(self):
        assert matches({"a": {"in": list(range(MAX_IN_VALUES))}}, {"a": MAX_IN_VALUES - 1})


# -- a reference model ----------------------------------------------------------------------

_MISSING = object()


def _kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def reference(where, doc):
    """What a filter means, written out plainly."""
    for field, spec in where.items():
        conditions = spec.items() if isinstance(spec, dict) else [("=", spec)]
        value = doc.get(field, _MISSING)
        for op, operand in conditions:
            if value is _MISSING:
                return False
            if op == "in":
                ok = any(_kind(value) == _kind(o) and value == o for o in operand)
            elif _kind(value) != _kind(operand):
                ok = False
            elif op == "=":
                ok = value == operand
            else:
                ok = {"<": value < operand, "<=": value <= operand, ">": value > operand, ">=": value >= operand}[op]
            if not ok:
                return False
    return True


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 1.5, -2.5]),
    st.sampled_from(["", "a", "b", "1"]),
    st.sampled_from([b"", b"a", b"b"]),
)
ordered = st.one_of(st.integers(-3, 3), st.sampled_from([0.0, 1.5, -2.5]), st.sampled_from(["", "a", "b"]), st.sampled_from([b"a", b"b"]))
fields = st.sampled_from(["x", "y", "z"])
conditions = st.one_of(
    scalars,
    st.dictionaries(
        st.sampled_from(["=", "<", "<=", ">", ">=", "in"]),
        st.none(),  # placeholder, replaced below
        min_size=1,
        max_size=3,
    ).flatmap(
        lambda ops: st.fixed_dictionaries(
            {op: (st.lists(scalars, max_size=4) if op == "in" else scalars if op == "=" else ordered) for op in ops}
        )
    ),
)


@given(st.dictionaries(fields, conditions, max_size=3), st.lists(st.dictionaries(fields, scalars, max_size=3), max_size=10))
def test_filters_agree_with_the_reference_model(where, docs):
    predicate = compile_where(where)
    for doc in docs:
        expected = reference(where, doc)
        assert (True if predicate is None else predicate(doc)) is expected, (where, doc)


class TestCursor:
    @pytest.mark.parametrize("after", [0, 1, 2**48, MAX_ID])
    def test_round_trip(self, after):
        cursor = encode_cursor(after)
        assert isinstance(cursor, str)
        assert "=" not in cursor and "/" not in cursor and "+" not in cursor
        assert decode_cursor(cursor) == after

    def test_no_cursor_starts_at_the_beginning(self):
        assert decode_cursor(None) == -1

    def test_cursors_are_versioned_cbor(self):
        raw = base64.urlsafe_b64decode(encode_cursor(5) + "==")
        assert codec.decode(raw) == {"v": 2, "after": 5}

    @staticmethod
    def _make(value):
        return base64.urlsafe_b64encode(codec.encode(value)).rstrip(b"=").decode()

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "!!!",
            "a",
            "x" * 257,
            12,
            b"abc",
            ["x"],
            base64.b64encode(b"\xff\xfe").decode(),
            _make.__func__({"v": 3, "after": 5}),
            _make.__func__({"after": 5}),
            _make.__func__({"v": 1}),
            _make.__func__({"v": 1, "after": -1}),
            _make.__func__({"v": 1, "after": MAX_ID + 1}),
            _make.__func__({"v": 1, "after": "5"}),
            _make.__func__({"v": 1, "after": True}),
            _make.__func__([1, 5]),
            _make.__func__({"v": 1, "after": {"deep": {"er": 1}}}),
            base64.urlsafe_b64encode(codec.encode({"v": 1, "after": 5}) + b"\x00").decode(),
        ],
    )
    def test_malformed_cursors_are_invalid_requests(self, cursor):
        with pytest.raises(InvalidRequest, match="malformed cursor"):
            decode_cursor(cursor)

    @given(st.text(max_size=40))
    def test_any_text_is_a_cursor_or_an_invalid_request(self, text):
        try:
            after = decode_cursor(text)
        except InvalidRequest:
            return
        assert 0 <= after <= MAX_ID
