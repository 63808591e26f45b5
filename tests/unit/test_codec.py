"""The strict CBOR codec: what untrusted bytes may contain, and what a document may hold."""

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodedb.errors import InvalidRequest, ProtocolError
from nodedb import codec


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


class TestDecode:
    @pytest.mark.parametrize(
        "value",
        [
            {"id": 1, "op": "get", "type": "user", "key": 2**64 - 1},
            {"a": [1, -1, 1.5, "x", b"\x00", None, True, False, {"b": {}}]},
            [],
            "text",
            -(2**64),
            2**64 - 1,
        ],
    )
    def test_plain_values_round_trip(self, value):
        assert codec.decode(codec.encode(value)) == value

    @pytest.mark.parametrize(
        "data",
        [
            h("c0 74 323031332d30332d32315432303a30343a30305a"),  # tag 0: date/time text
            h("c1 1a 514b67b0"),  # tag 1: epoch date
            h("c2 49 010000000000000000"),  # tag 2: bignum
            h("d9 0102 81 01"),  # tag 258: set
            h("d8 1c 81 d8 1d 00"),  # tag 28/29: a shared array that contains itself
            h("d8 1d 00"),  # tag 29 alone: a reference to nothing
            h("a1 61 61 d8 20 63 61 62 63"),  # tag 32 (URI) inside a map
        ],
        ids=["datetime", "epoch", "bignum", "set", "cycle", "dangling-ref", "nested-uri"],
    )
    def test_every_tag_is_refused(self, data):
        with pytest.raises(ProtocolError, match="tag"):
            codec.decode(data)

    @pytest.mark.parametrize(
        "data",
        [h("9f 01 02 ff"), h("bf 61 61 01 ff"), h("5f 41 01 ff"), h("7f 61 61 ff")],
        ids=["array", "map", "bytes", "text"],
    )
    def test_indefinite_length_is_refused(self, data):
        with pytest.raises(ProtocolError, match="indefinite"):
            codec.decode(data)

    def test_duplicate_keys_are_refused(self):
        with pytest.raises(ProtocolError, match="[Dd]uplicate"):
            codec.decode(h("a2 61 61 01 61 61 02"))

    @pytest.mark.parametrize(
        "data",
        [h("a1 01 01"), h("a1 f4 01"), h("a1 81 01 01"), h("a1 a0 01"), h("a1 f6 01"), h("a1 fb 3ff8000000000000 01")],
        ids=["int", "bool", "array", "map", "null", "float"],
    )
    def test_map_keys_must_be_text_or_bytes(self, data):
        with pytest.raises(ProtocolError, match="key"):
            codec.decode(data)

    def test_bytes_keys_decode_but_are_no_document(self):
        value = codec.decode(h("a1 41 01 01"))
        assert value == {b"\x01": 1}
        with pytest.raises(InvalidRequest, match="not text"):
            codec.check_document(value)

    def test_nesting_is_bounded(self):
        assert codec.decode(b"\x81" * codec.MAX_DEPTH + b"\x00") is not None
        with pytest.raises(ProtocolError, match="depth"):
            codec.decode(b"\x81" * (codec.MAX_DEPTH + 1) + b"\x00")
        with pytest.raises(ProtocolError, match="depth"):
            codec.decode(b"\xa1\x61a" * 3 + b"\x00", max_depth=2)
        assert codec.decode(b"\xa1\x61a" * 2 + b"\x00", max_depth=2) == {"a": {"a": 0}}

    def test_integers_are_limited_to_64_bits(self):
        assert codec.decode(h("1b ffffffffffffffff")) == 2**64 - 1
        assert codec.decode(h("3b ffffffffffffffff")) == -(2**64)
        # Anything wider needs a bignum tag, which is refused.
        with pytest.raises(ProtocolError):
            codec.decode(cbor2.dumps(2**64))
        with pytest.raises(ProtocolError):
            codec.decode(cbor2.dumps(-(2**64) - 1))

    @pytest.mark.parametrize(
        "data",
        [b"", h("ff"), h("1c"), h("f8 18"), h("62 c3 28"), h("a1 61 61"), h("5b 0000000100000000"), h("9b 0000000100000000")],
        ids=["empty", "break", "reserved-info", "bad-simple", "bad-utf8", "truncated-map", "huge-bytes", "huge-array"],
    )
    def test_malformed_input_is_a_protocol_error(self, data):
        with pytest.raises(ProtocolError, match="undecodable CBOR"):
            codec.decode(data)

    def test_trailing_bytes_are_refused(self):
        with pytest.raises(ProtocolError, match="trailing"):
            codec.decode(codec.encode({"a": 1}) + b"\x00")

    @settings(max_examples=300)
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes_only_ever_raise_protocol_error(self, data):
        try:
            codec.decode(data)
        except ProtocolError:
            pass

    @settings(max_examples=200)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
            max_leaves=20,
        )
    )
    def test_encoded_plain_values_decode_to_themselves(self, value):
        assert codec.decode(codec.encode(value)) == value

    @settings(max_examples=200)
    @given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=39))
    def test_corrupted_messages_never_escape_as_other_errors(self, noise, where):
        message = bytearray(codec.encode({"id": 7, "op": "insert", "type": "t", "doc": {"a": [1, 2, {"b": "c"}]}}))
        where %= len(message)
        message[where : where + len(noise)] = noise
        try:
            codec.decode(bytes(message))
        except ProtocolError:
            pass

    def test_stored_documents_decode_without_limits(self):
        deep = codec.encode({"a": [[[[1]]]]})
        assert codec.decode_stored(deep) == {"a": [[[[1]]]]}


class TestCheckDocument:
    def test_accepts_plain_documents(self):
        document = {"name": "ada", "age": 36, "ratio": 0.5, "tags": ["a", 1, None], "raw": b"\x00", "ok": True, "sub": {"x": {}}}
        assert codec.check_document(document) is document

    @pytest.mark.parametrize("value", [[], "text", 1, None, b"x", [("a", 1)]])
    def test_a_document_is_a_map(self, value):
        with pytest.raises(InvalidRequest, match="a document must be a map"):
            codec.check_document(value)

    @pytest.mark.parametrize(
        "document, path",
        [
            ({1: "x"}, "1"),
            ({"a": {"b": {2: 0}}}, "a.b.2"),
            ({"a": {b"k": 0}}, "a.b'k'"),
        ],
    )
    def test_keys_must_be_text(self, document, path):
        with pytest.raises(InvalidRequest, match="is not text") as info:
            codec.check_document(document)
        assert path in str(info.value)

    @pytest.mark.parametrize(
        "document, path",
        [
            ({"a": 2**64}, "a"),
            ({"a": {"b": -(2**64) - 1}}, "a.b"),
            ({"a": [0, [1, 2**70]]}, "a[1][1]"),
        ],
    )
    def test_integers_must_fit_in_64_bits(self, document, path):
        with pytest.raises(InvalidRequest, match="64 bits") as info:
            codec.check_document(document)
        assert f"at {path} " in str(info.value)

    def test_integer_bounds_are_inclusive(self):
        codec.check_document({"max": 2**64 - 1, "min": -(2**64)})

    @pytest.mark.parametrize(
        "value, name",
        [({1, 2}, "set"), ((1, 2), "tuple"), (cbor2.CBORTag(0, "x"), "CBORTag"), (cbor2.undefined, "UndefinedType"), (object(), "object")],
    )
    def test_other_types_are_refused(self, value, name):
        with pytest.raises(InvalidRequest, match=f"value at x.y has a type nodedb does not store \\({name}\\)"):
            codec.check_document({"x": {"y": value}})

    def test_simple_values_from_the_wire_are_refused(self):
        value = codec.decode(h("a1 61 61 f0"))  # {"a": simple(16)}
        with pytest.raises(InvalidRequest):
            codec.check_document(value)

    def test_item_count_is_bounded(self):
        codec.check_document({"a": list(range(99))}, max_items=100)
        with pytest.raises(InvalidRequest, match="too many items"):
            codec.check_document({"a": list(range(100))}, max_items=100)
        with pytest.raises(InvalidRequest, match="too many items"):
            codec.check_document({str(n): {"x": 1} for n in range(60)}, max_items=100)
        with pytest.raises(InvalidRequest, match="too many items"):
            codec.check_document({"a": [[0] * 30 for _ in range(4)]}, max_items=100)


class TestCheckTypeName:
    @pytest.mark.parametrize("name", ["a", "user", "order_line", "t0", "0", "_", "x" * 64])
    def test_accepts(self, name):
        assert codec.check_type_name(name) == name

    @pytest.mark.parametrize("name", ["", "x" * 65, "User", "a-b", "a b", "é", "a\n", b"user", 1, None, ["user"]])
    def test_refuses(self, name):
        with pytest.raises(InvalidRequest, match="a record type is 1-64 characters"):
            codec.check_type_name(name)


class TestCheckStoredType:
    @pytest.mark.parametrize("name", ["user", codec.PREPARED_TYPE, codec.DECISION_TYPE])
    def test_accepts_client_and_internal_types(self, name):
        assert codec.check_stored_type(name) == name

    @pytest.mark.parametrize("name", ["nodedb.other", b"nodedb.prepared", ["user"], {"a": 1}, None, 1])
    def test_refuses(self, name):
        # Lists and maps included (found by tests/fuzz: they are not hashable, and looking
        # one up among the internal types raised TypeError).
        with pytest.raises(InvalidRequest, match="a record type is 1-64 characters"):
            codec.check_stored_type(name)
