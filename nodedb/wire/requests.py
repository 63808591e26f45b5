"""The schemas of the client requests (docs/protocol.md, "Operations"), but that of
``transaction``, whose operations are checked with these
(:func:`nodedb.wire.transaction.parse_transaction`): shared by the request API that serves them, the
router that forwards them to a partition's primary, and the operations of a transaction.

Each handler parameter is named as in :class:`nodedb.interfaces.IQuery`.
"""

from nodedb import codec, errors
from nodedb.ids import check_element_id
from nodedb.wire.schema import ENVELOPE, Field, Kind, Schema, integer, of_type

TYPE = Kind("type", codec.check_type_name)
KEY = Kind("key", check_element_id)
DOCUMENT = Kind("document", codec.check_document)
VERSION = integer("a version is a non-negative integer", name="version", low=0)


def _consistency(value):
    if value not in ("linearizable", "replica"):
        raise errors.InvalidRequest('consistency is "linearizable" (the default) or "replica"')
    return None if value == "linearizable" else value


_TYPE = Field("type", TYPE, required=True, argument="record_type")
_KEY = Field("key", KEY, required=True, argument="element_id")
_DOC = Field("doc", DOCUMENT, required=True)
_IF_VERSION = Field("if_version", VERSION)

INSERT = Schema("insert", (_TYPE, _DOC, Field("near", KEY)))
GET = Schema("get", (_TYPE, _KEY, Field("consistency", Kind("text", _consistency))))
UPDATE = Schema("update", (_TYPE, _KEY, _DOC, _IF_VERSION))
DELETE = Schema("delete", (_TYPE, _KEY, _IF_VERSION))
SCAN = Schema(
    "scan",
    (
        _TYPE,
        Field("where", of_type(dict, "map", "where is a map")),
        Field("limit", integer("limit is an integer")),
        Field("cursor", of_type(str, "text", "cursor is text")),
    ),
)
#: ``status`` and ``ping`` take no fields and ignore any they are given.
STATUS = Schema("status", ignore_unknown=True)
PING = Schema("ping", ignore_unknown=True)

REQUESTS = {"insert": INSERT, "get": GET, "update": UPDATE, "delete": DELETE, "scan": SCAN}


def parse_arguments(op, message, ignore=ENVELOPE):
    """The checked arguments of *op* (one of :data:`REQUESTS`) taken from *message*, by wire
    name.

    :raise InvalidRequest: for a missing, mistyped or unknown field.
    """
    return REQUESTS[op].check(message, ignore)
