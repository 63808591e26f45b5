"""The one place where CBOR is decoded from untrusted bytes.

Decoding is strict: no CBOR tags at all (no dates, sets, shared references or other
extensions that could build cycles or surprising objects), no indefinite-length items, no
duplicate map keys, only text or bytes as map keys, and a bounded nesting depth. Documents are
then checked for the plain JSON-like types nodedb stores. Frame size bounds the item count of
a message; :func:`check_document` bounds it again per document.
"""

import io
import re

import cbor2

from nodedb.errors import InvalidRequest, ProtocolError

#: Containers may nest this deep in one message (a document can use all but two levels).
MAX_DEPTH = 64
#: The most items (values, keys included) one document may hold.
MAX_DOCUMENT_ITEMS = 100_000
#: Integers are stored as CBOR major types 0/1, so they must fit in 64 bits.
MIN_INT, MAX_INT = -(1 << 64), (1 << 64) - 1

_TYPE_NAME = re.compile(r"[a-z0-9_]{1,64}\Z")


class _NoTags(dict):
    """A semantic-decoder table that refuses every CBOR tag."""

    def __contains__(self, tag):
        return True

    def __getitem__(self, tag):
        def refuse(decoder):
            raise InvalidRequest(f"CBOR tag {tag} is not accepted")

        return refuse


_NO_TAGS = _NoTags()

encode = cbor2.dumps


def decode(data, max_depth=MAX_DEPTH):
    """Decode one untrusted CBOR item.

    :raise ProtocolError: if *data* is not exactly one well-formed, acceptable CBOR item.
    """
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise ProtocolError(f"undecodable CBOR: {_first_line(e)}") from None
    if stream.tell() != len(data):
        # cbor2.loads would ignore whatever follows the first item.
        raise ProtocolError("undecodable CBOR: trailing bytes after the item")
    return value


def decode_stored(data):
    """Decode a document this node wrote itself (no limits needed, and faster)."""
    return cbor2.loads(data)


def _first_line(error):
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]


_SCALARS = (str, bytes, float, bool, type(None))


def check_document(doc, max_items=MAX_DOCUMENT_ITEMS):
    """Check that *doc* is a storable document: a map with text keys whose values are maps,
    arrays, text, bytes, numbers, booleans or null.

    :raise InvalidRequest: naming the first offending path.
    """
    if type(doc) is not dict:
        raise InvalidRequest("a document must be a map with text keys")
    budget = [max_items]
    _check_map(doc, "", budget)
    return doc


def _check_map(value, path, budget):
    budget[0] -= len(value)
    if budget[0] < 0:
        raise InvalidRequest("document has too many items")
    for key, item in value.items():
        if type(key) is not str:
            raise InvalidRequest(f"document key {path}{key!r} is not text")
        _check_value(item, path + key, budget)


def _check_value(value, path, budget):
    kind = type(value)
    if kind is int:
        if not MIN_INT <= value <= MAX_INT:
            raise InvalidRequest(f"integer at {path} does not fit in 64 bits")
    elif kind in _SCALARS:
        return
    elif kind is dict:
        _check_map(value, path + ".", budget)
    elif kind is list:
        budget[0] -= len(value)
        if budget[0] < 0:
            raise InvalidRequest("document has too many items")
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]", budget)
    else:
        raise InvalidRequest(f"value at {path} has a type nodedb does not store ({kind.__name__})")


def check_type_name(value):
    """*value* as a record type name, or InvalidRequest."""
    if type(value) is not str or not _TYPE_NAME.match(value):
        raise InvalidRequest("a record type is 1-64 characters of a-z, 0-9 and _")
    return value


#: Record types nodedb keeps for itself: the prepare and decision records of transactions
#: that span partitions. Their names are outside what :func:`check_type_name` accepts, so no
#: client can read or write them; replication carries them like any other element.
PREPARED_TYPE = "nodedb.prepared"
DECISION_TYPE = "nodedb.decision"
INTERNAL_TYPES = frozenset({PREPARED_TYPE, DECISION_TYPE})


def check_stored_type(value):
    """*value* as a record type a peer may replicate: a client's type or an internal one."""
    if type(value) is str and value in INTERNAL_TYPES:  # a list or map is not hashable
        return value
    return check_type_name(value)
