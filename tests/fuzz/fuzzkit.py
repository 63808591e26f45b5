"""What the fuzz tests share: their example counts, a count of the examples they ran, and a CBOR
encoder of its own that can write what ``cbor2.dumps`` never would (tags, indefinite lengths,
duplicate keys, invalid UTF-8, integer map keys, reserved bytes, any nesting).

Each generated :class:`Item` carries the bytes, the value ``cbor2`` should decode them to, and
whether docs/protocol.md ("Decoding rules") lets a frame hold them. That verdict is worked out
here from the structure, not by asking :mod:`nodedb.codec`, so the frame tests check the
decoder against the documented rules.

The example counts come from the profile named by ``NODEDB_FUZZ_PROFILE`` (``ci``, the
default, or ``long``); the profiles are registered in ``tests/fuzz/conftest.py``.
"""

import collections
import functools
import math
import os
import struct

import cbor2
from hypothesis import settings
from hypothesis import strategies as st

#: The profile every fuzz property runs under.
PROFILE = os.environ.get("NODEDB_FUZZ_PROFILE", "ci")
#: Examples each property ran in this process, by property name (bench/fuzz.py prints them).
EXAMPLES = collections.Counter()
#: Containers may nest this deep in a frame (docs/protocol.md, "Decoding rules").
MAX_DEPTH = 64


def fuzz_settings(ci_examples, campaign=True):
    """The settings of one property: *ci_examples* examples under the ``ci`` profile, the
    profile's own count (``NODEDB_FUZZ_EXAMPLES``, 20,000 by default) under ``long``.

    :param campaign: False for a check that is not worth more examples in a campaign (it
        runs *ci_examples* under every profile).
    """
    parent = settings.get_profile(PROFILE)
    if PROFILE == "ci" or not campaign:
        return settings(parent, max_examples=ci_examples)
    return settings(parent)


def counted(test):
    """Count each example *test* runs in :data:`EXAMPLES`, under the test's name (and its
    ``op`` parameter, for the per-operation properties)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        name = test.__name__
        if "op" in kwargs:
            name += f"[{kwargs['op']}]"
        EXAMPLES[name] += 1
        return test(*args, **kwargs)

    return run


# -- CBOR of every shape ----------------------------------------------------------------------


class Item:
    """One encoded CBOR item.

    :ivar data: its bytes.
    :ivar value: what a decoder gives for it (None when it is malformed).
    :ivar ok: True if a frame may hold it (malformed, tagged, indefinite, duplicate or
        non-text keys, bad UTF-8 and reserved bytes are not), nesting aside.
    :ivar depth: how many arrays and maps nest in it (0 for a scalar).
    """

    __slots__ = ("data", "value", "ok", "depth")

    def __init__(self, data, value, ok, depth=0):
        self.data, self.value, self.ok, self.depth = data, value, ok, depth

    def __repr__(self):
        return f"Item({self.data.hex()}, ok={self.ok}, depth={self.depth})"


_WIDTHS = ((24, 1, ">B"), (25, 2, ">H"), (26, 4, ">I"), (27, 8, ">Q"))


def head(major, argument, wider=0):
    """The head of a CBOR item; *wider* > 0 uses a longer argument than needed (allowed)."""
    options = [(argument, None)] if argument < 24 else []
    options += [(info, fmt) for info, size, fmt in _WIDTHS if argument < 1 << (8 * size)]
    info, fmt = options[min(wider, len(options) - 1)]
    if fmt is None:
        return bytes([major << 5 | argument])
    return bytes([major << 5 | info]) + struct.pack(fmt, argument)


_widen = st.integers(0, 4)


@st.composite
def _integer(draw):
    negative = draw(st.booleans())
    argument = draw(st.integers(0, 2**64 - 1) | st.sampled_from([0, 23, 24, 255, 256, 2**32, 2**63, 2**64 - 1]))
    return Item(head(1 if negative else 0, argument, draw(_widen)), -1 - argument if negative else argument, True)


@st.composite
def _bignum(draw):
    """An integer past 64 bits: only as a bignum tag, so refused."""
    magnitude = draw(st.integers(2**64, 2**80))
    value = draw(st.sampled_from([magnitude, -1 - magnitude]))
    return Item(cbor2.dumps(value), value, False)


@st.composite
def _bytes(draw):
    raw = draw(st.binary(max_size=20))
    return Item(head(2, len(raw), draw(_widen)) + raw, raw, True)


@st.composite
def _text(draw):
    text = draw(st.text(max_size=12))
    raw = text.encode()
    return Item(head(3, len(raw), draw(_widen)) + raw, text, True)


@st.composite
def _bad_utf8(draw):
    raw = draw(st.binary(min_size=1, max_size=8).filter(_not_utf8))
    return Item(head(3, len(raw)) + raw, None, False)


def _not_utf8(raw):
    try:
        raw.decode()
    except UnicodeDecodeError:
        return True
    return False


@st.composite
def _indefinite_string(draw):
    major = draw(st.sampled_from([2, 3]))
    chunks = draw(st.lists(st.text(max_size=4), max_size=3))
    body = b"".join(head(major, len(c.encode())) + (c.encode()) for c in chunks)
    return Item(bytes([major << 5 | 31]) + body + b"\xff", None, False)


@st.composite
def _float(draw):
    kind = draw(st.sampled_from(["e", "f", "d"]))
    bits = draw(st.binary(min_size={"e": 2, "f": 4, "d": 8}[kind], max_size={"e": 2, "f": 4, "d": 8}[kind]))
    (value,) = struct.unpack(">" + kind, bits)
    return Item(bytes([{"e": 0xF9, "f": 0xFA, "d": 0xFB}[kind]]) + bits, value, True)


_SIMPLE = [(b"\xf4", False), (b"\xf5", True), (b"\xf6", None), (b"\xf7", cbor2.undefined)]


@st.composite
def _simple(draw):
    choice = draw(st.integers(0, 2))
    if choice == 0:
        data, value = draw(st.sampled_from(_SIMPLE))
        return Item(data, value, True)
    if choice == 1:
        number = draw(st.integers(0, 19))
        return Item(bytes([0xE0 | number]), cbor2.CBORSimpleValue(number), True)
    number = draw(st.integers(32, 255))
    return Item(bytes([0xF8, number]), cbor2.CBORSimpleValue(number), True)


#: Bytes that are never a well-formed item on their own: reserved additional information
#: (28-30) of each major type, a break outside an indefinite item, a two-byte simple value
#: below 32, and a head whose argument is cut off.
_MALFORMED = [bytes([major << 5 | info]) for major in range(8) for info in (28, 29, 30)] + [
    b"\xff",
    b"\xf8\x00",
    b"\xf8\x1f",
    b"\x18",
    b"\x19\x01",
    b"\x1b\x00\x00",
    b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
]


def _malformed():
    return st.sampled_from(_MALFORMED).map(lambda data: Item(data, None, False))


def scalars():
    """Leaves: mostly acceptable scalars, sometimes one a frame may not hold."""
    return st.one_of(
        _integer(),
        _text(),
        _bytes(),
        _float(),
        _simple(),
        _bignum(),
        _bad_utf8(),
        _indefinite_string(),
        _malformed(),
    )


def _array(children):
    @st.composite
    def build(draw):
        items = draw(st.lists(children, max_size=4))
        indefinite = draw(st.integers(0, 9)) == 0
        body = b"".join(i.data for i in items)
        depth = 1 + max((i.depth for i in items), default=0)
        if indefinite:
            return Item(b"\x9f" + body + b"\xff", None, False, depth)
        ok = all(i.ok for i in items)
        return Item(head(4, len(items), draw(_widen)) + body, [i.value for i in items] if ok else None, ok, depth)

    return build()


def _map(children):
    keys = st.one_of(_text(), _text(), _bytes(), children)

    @st.composite
    def build(draw):
        pairs = draw(st.lists(st.tuples(keys, children), max_size=4))
        if pairs and draw(st.integers(0, 9)) == 0:
            pairs.append(draw(st.sampled_from(pairs)))  # a duplicate key
        return map_item(pairs, indefinite=draw(st.integers(0, 12)) == 0, wider=draw(_widen))

    return build()


def map_item(pairs, indefinite=False, wider=0):
    """The map item of *pairs* of items: acceptable only if every key is text or bytes and
    appears once, and every key and value is acceptable."""
    body = b"".join(k.data + v.data for k, v in pairs)
    depth = 1 + max((max(k.depth, v.depth) for k, v in pairs), default=0)
    if indefinite:
        return Item(b"\xbf" + body + b"\xff", None, False, depth)
    ok = all(k.ok and v.ok and type(k.value) in (str, bytes) for k, v in pairs)
    value = None
    if ok:
        value = {}
        for key, item in pairs:
            if key.value in value:
                ok, value = False, None
                break
            value[key.value] = item.value
    return Item(head(5, len(pairs), wider) + body, value, ok, depth)


@st.composite
def _tagged(draw, children):
    number = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 21, 24, 28, 29, 32, 258, 55799]) | st.integers(0, 2**64 - 1))
    child = draw(children)
    return Item(head(6, number) + child.data, None, False, child.depth)


def items(max_leaves=8):
    """Any CBOR item, most of them acceptable, nested a few levels."""
    return st.recursive(
        scalars(),
        lambda children: st.one_of(_array(children), _map(children), _tagged(children)),
        max_leaves=max_leaves,
    )


@st.composite
def deep_items(draw):
    """Arrays and maps nested around the limit of :data:`MAX_DEPTH` levels (a request map
    adds one more around them)."""
    levels = draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))
    maps = draw(st.integers(0, 2**levels - 1))  # bit i set: level i is a map, else an array
    key = draw(_text())
    item = draw(scalars())
    for level in range(levels):
        if maps >> level & 1:
            item = map_item([(key, item)])
        else:
            item = Item(b"\x81" + item.data, [item.value] if item.ok else None, item.ok, item.depth + 1)
    return item


def text_item(text):
    raw = text.encode()
    return Item(head(3, len(raw)) + raw, text, True)


def int_item(value):
    return Item(cbor2.dumps(value), value, True)


def request_items(ops=("echo", "fail")):
    """Maps shaped like a request (``id`` and ``op`` most of the time, of the right types
    most of the time) with more fields of any shape; now and then not a map at all."""
    ids = st.one_of(st.integers(-(2**64), 2**64 - 1).map(int_item), st.integers(0, 30).map(int_item), _SMALL_ITEMS)
    op_items = st.one_of(st.sampled_from(ops).map(text_item), _TINY_ITEMS)
    fields = st.lists(st.tuples(st.one_of(_TEXT, _TEXT, _TINY_ITEMS), _FIELD_VALUES), max_size=3)

    @st.composite
    def build(draw):
        if draw(st.integers(0, 14)) == 0:
            return draw(_ANY_ITEMS)
        pairs = []
        if draw(st.integers(0, 9)):
            pairs.append((text_item("id"), draw(ids)))
        if draw(st.integers(0, 9)):
            pairs.append((text_item("op"), draw(op_items)))
        pairs += draw(fields)
        order = draw(st.permutations(range(len(pairs))))
        return map_item([pairs[i] for i in order], indefinite=draw(st.integers(0, 30)) == 0)

    return build()


_TEXT = _text()
_TINY_ITEMS = items(2)
_SMALL_ITEMS = items(4)
_ANY_ITEMS = st.one_of(items(), deep_items())
_SCALARS = scalars()
_FIELD_VALUES = st.one_of(_SCALARS, _SCALARS, items(), deep_items())


def acceptable(item):
    """Whether a frame holding just *item* decodes, per docs/protocol.md."""
    return item.ok and item.depth <= MAX_DEPTH


def same(a, b):
    """Equal values of equal types, NaN equal to itself: how a decoded value compares with
    the one it was encoded from."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# -- logged errors, example by example --------------------------------------------------------


class no_errors_logged:
    """Fail the example (not just the test) if it logged an error: the ``logged_errors``
    fixture of tests/conftest.py collects them; what this example logged is taken out of it
    and reported, so that hypothesis shrinks the example that logged."""

    def __init__(self, logged_errors):
        self.logged = logged_errors

    def __enter__(self):
        self.before = len(self.logged.events)
        return self

    def __exit__(self, *exc_info):
        new = self.logged.events[self.before :]
        del self.logged.events[self.before :]
        if new and exc_info[0] is None:
            from twisted.logger import formatEvent

            described = []
            for event in new:
                text = formatEvent(event)
                if event.get("log_failure") is not None:
                    text += "\n" + event["log_failure"].getTraceback()
                described.append(text)
            raise AssertionError(f"{len(new)} error(s) logged:\n\n" + "\n\n".join(described))
        return False


# -- values a decoded frame can hold, and mutations of valid messages -------------------------

#: Integers at the edges of what fields take: around 0, 2**31, 2**32, 2**53, 2**63, 2**64.
BOUNDARY_INTS = [0, 1, -1, 2, 63, 64, 65, 1023, 1024, 2**31 - 1, 2**31, 2**32, 2**53 + 1]
BOUNDARY_INTS += [2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**64)]


def wire_values(max_leaves=8):
    """Any value a frame can carry once decoded: what the decoder lets through (64-bit
    integers, text or bytes keys, undefined and the other simple values, any float)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.sampled_from(BOUNDARY_INTS),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=10),
        st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(0), cbor2.CBORSimpleValue(255)]),
    )
    keys = st.text(max_size=6) | st.binary(max_size=3)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=max_leaves,
    )


WIRE_VALUES = wire_values()


def paths(value, prefix=()):
    """Every place in *value* (a message): ``()`` for the value itself, then a tuple of keys
    and indices for each field, item and nested value."""
    yield prefix
    if type(value) is dict:
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif type(value) is list:
        for index, item in enumerate(value):
            yield from paths(item, prefix + (index,))


def _at(value, path):
    for step in path:
        value = value[step]
    return value


_KINDS = ["replace", "int", "delete", "extra", "wrap", "empty", "retype", "plausible", "duplicate"]


def _retyped(value):
    if type(value) is int:
        return [float(value), str(value), value != 0, [value]]
    if type(value) is str:
        return [value.encode(), [value], {value: value}, value.upper() + "\x00"]
    if type(value) is list:
        return [{str(i): v for i, v in enumerate(value)}, tuple_free(value[::-1]), value[:-1]]
    if type(value) is dict:
        return [list(value.items()), list(value), list(value.values())]
    return [str(value), [value], 0]


def tuple_free(value):
    """*value* with tuples as lists (as the decoder would give them)."""
    if type(value) in (list, tuple):
        return [tuple_free(v) for v in value]
    if type(value) is dict:
        return {k: tuple_free(v) for k, v in value.items()}
    return value


def pick(draw, sequence, label=None):
    """One item of *sequence*, drawn so that the draw does not depend on its length: the
    sequences here come from a live cluster, which may have moved on when hypothesis
    replays an example, and a replay must draw the same way."""
    return sequence[draw(st.integers(0, 2**16 - 1), label=label) % len(sequence)]


def picks(sequence):
    """The strategy of :func:`pick`."""
    sequence = list(sequence)
    return st.integers(0, 2**16 - 1).map(lambda i: sequence[i % len(sequence)])


def mutate(draw, message, plausible=(), fixed=("op", "id")):
    """*message* (a dict) with one place changed: replaced by any value, by an edge integer
    or by a plausible value (another host's id, a partition number...), dropped, given an
    extra unknown key or item, wrapped in a list, emptied, given another type, or (in a
    list) an item repeated. The top-level *fixed* fields stay as they are.

    :return: ``(mutated message, description)``.
    """
    import copy

    message = copy.deepcopy(message)
    places = [p for p in paths(message) if not (p and p[0] in fixed)]
    path = pick(draw, places, label="place")
    kind = draw(st.sampled_from(_KINDS), label="mutation")
    if not path and kind not in ("extra",):
        kind = "extra"
    parent = _at(message, path[:-1]) if path else None
    current = _at(message, path)
    if kind == "delete":
        del parent[path[-1]]
        return message, f"drop {list(path)}"
    if kind == "extra":
        if type(current) is dict:
            key = draw(st.text(min_size=1, max_size=8) | st.binary(max_size=4), label="extra key")
            current[key] = draw(WIRE_VALUES, label="extra value")
            return message, f"extra field {key!r} at {list(path)}"
        if type(current) is list:
            current.insert(draw(st.integers(0, len(current))), draw(WIRE_VALUES, label="extra item"))
            return message, f"extra item at {list(path)}"
        kind = "replace"
    if kind == "duplicate" and type(current) is list and current:
        current.append(copy.deepcopy(pick(draw, current, label="repeated")))
        return message, f"repeated item at {list(path)}"
    if kind == "int":
        new = draw(st.sampled_from(BOUNDARY_INTS) | st.integers(-(2**64), 2**64 - 1), label="int")
    elif kind == "wrap":
        new = [current]
    elif kind == "empty":
        new = draw(st.sampled_from([{}, [], "", b"", None, 0]), label="empty")
    elif kind == "retype":
        new = pick(draw, _retyped(current), label="retyped")
    elif kind == "plausible" and plausible:
        new = pick(draw, list(plausible), label="plausible")
    else:
        new = draw(WIRE_VALUES, label="value")
    parent[path[-1]] = new
    return message, f"{kind} at {list(path)}: {new!r}"


def arbitrary_message(draw, names, plausible=()):
    """A message of the given field *names* (each present or not) plus unknown ones, every
    value arbitrary, plausible or an edge integer."""
    values = st.one_of(WIRE_VALUES, st.sampled_from(BOUNDARY_INTS), picks(plausible or [None]))
    message = {}
    for name in names:
        if draw(st.integers(0, 3), label=f"has {name}"):
            message[name] = draw(values, label=name)
    for key in draw(st.lists(st.text(max_size=8) | st.binary(max_size=3), max_size=2), label="unknown fields"):
        message[key] = draw(values, label=repr(key))
    return message


# -- byte-level mutations of frame streams ------------------------------------------------------


def frame(data, length=None):
    """*data* behind its 4-byte length prefix (or a prefix saying *length*)."""
    return struct.pack(">I", len(data) if length is None else length) + data


def byte_mutations(size):
    """Changes to a stream of frames: bits flipped, cut short, bytes inserted, dropped or
    repeated, a length prefix changed, a frame's CBOR replaced by an item of any shape."""
    position = st.integers(0, max(0, size - 1))
    return st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), position, st.integers(1, 16)),
        st.tuples(st.just("duplicate"), position, st.integers(1, 32)),
        st.tuples(st.just("length"), st.integers(0, 3), st.integers(0, 2**32 - 1) | st.integers(0, 64)),
        st.tuples(st.just("replace"), st.integers(0, 3), _REPLACEMENTS),
    )


_REPLACEMENTS = st.one_of(items(6), deep_items())


def mutate_stream(frames, mutation):
    """Apply *mutation* (of :func:`byte_mutations`) to the list of frame payloads *frames*;
    :return: the stream of bytes."""
    kind = mutation[0]
    if kind in ("length", "replace"):
        index = mutation[1] % len(frames)
        if kind == "replace":
            # CBOR of another shape where a request was: the frame's length stays right.
            frames = frames[:index] + [mutation[2].data] + frames[index + 1 :]
            return b"".join(frame(f) for f in frames)
        return b"".join(frame(f, mutation[2] if i == index else None) for i, f in enumerate(frames))
    stream = bytearray(b"".join(frame(f) for f in frames))
    position = mutation[1] % max(1, len(stream))
    if kind == "flip":
        stream[position] ^= 1 << mutation[2]
    elif kind == "truncate":
        del stream[position:]
    elif kind == "insert":
        stream[position:position] = mutation[2]
    elif kind == "delete":
        del stream[position : position + mutation[2]]
    else:
        stream[position:position] = stream[position : position + mutation[2]]
    return bytes(stream)
