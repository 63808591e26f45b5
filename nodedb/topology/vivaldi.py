"""Vivaldi network coordinates (Dabek et al., SIGCOMM 2004), 2D plus height.

Each host keeps a coordinate and an error estimate. Every measured round-trip time to a peer
pulls or pushes the local coordinate along the line to the peer's, weighted by how sure each
side is. The predicted latency between two hosts is then the distance between their
coordinates: the Euclidean distance in the plane plus both heights (the height models the
access link that every path from a host has to cross).

The design brief's "direction" of a host is read off the same plane: :func:`direction` is the
bearing of one host as seen from another, and :func:`angle_at` is the brief's triangle formula
in its correct form, ``cos(angle at a) = (ab^2 + ac^2 - bc^2) / (2 * ab * ac)``.

Pure: no clock, no I/O; randomness (only for coincident coordinates) comes from the caller.
"""

import math
from dataclasses import dataclass

#: The weight of a new sample against the current error estimate (ce in the paper).
ERROR_GAIN = 0.25
#: How far one sample moves the coordinate (cc in the paper).
MOVE_GAIN = 0.25
MIN_HEIGHT = 1e-5
INITIAL_ERROR = 1.0
MAX_ERROR = 1.5


@dataclass(frozen=True)
class Coordinate:
    """A position in the latency space (seconds), and how wrong it may be (relative)."""

    x: float = 0.0
    y: float = 0.0
    height: float = MIN_HEIGHT
    error: float = INITIAL_ERROR

    def to_wire(self):
        return [self.x, self.y, self.height, self.error]

    @classmethod
    def from_wire(cls, value):
        """:raise ValueError: unless *value* is four finite numbers with sane ranges."""
        if type(value) is not list or len(value) != 4:
            raise ValueError("a coordinate is [x, y, height, error]")
        numbers = []
        for item in value:
            if type(item) not in (int, float) or not math.isfinite(item):
                raise ValueError("coordinate parts are finite numbers")
            numbers.append(float(item))
        x, y, height, error = numbers
        if abs(x) > 1e3 or abs(y) > 1e3 or not 0 <= height <= 1e3 or not 0 < error <= MAX_ERROR:
            raise ValueError("coordinate out of range")
        return cls(x, y, max(height, MIN_HEIGHT), error)


def distance(a, b):
    """Predicted round-trip time between the hosts at *a* and *b*."""
    return math.hypot(a.x - b.x, a.y - b.y) + a.height + b.height


def displacement(a, b):
    """How far a coordinate moved from *a* to *b* (seconds of latency)."""
    return math.hypot(a.x - b.x, a.y - b.y) + abs(a.height - b.height)


def update(local, remote, rtt, rng):
    """The new local coordinate after measuring *rtt* seconds to the host at *remote*.

    :param rng: a ``random.Random``, used only when the two coordinates coincide.
    """
    if rtt <= 0 or not math.isfinite(rtt):
        return local
    weight = local.error / (local.error + remote.error)
    predicted = distance(local, remote)
    sample_error = abs(predicted - rtt) / rtt
    error = min(MAX_ERROR, sample_error * ERROR_GAIN * weight + local.error * (1 - ERROR_GAIN * weight))
    force = MOVE_GAIN * weight * (rtt - predicted)
    dx, dy = local.x - remote.x, local.y - remote.y
    dh = local.height + remote.height
    length = math.sqrt(dx * dx + dy * dy + dh * dh)
    if math.hypot(dx, dy) < 1e-9:
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        length = math.sqrt(1 + dh * dh)
    ux, uy, uh = dx / length, dy / length, dh / length
    return Coordinate(
        local.x + force * ux,
        local.y + force * uy,
        max(MIN_HEIGHT, local.height + force * uh),
        max(error, 1e-6),
    )


def direction(origin, target):
    """Bearing (radians, -pi..pi) of *target* seen from *origin* in the coordinate plane."""
    return math.atan2(target.y - origin.y, target.x - origin.x)


def angle_at(ab, ac, bc):
    """The angle at ``a`` (radians) of the triangle with sides *ab*, *ac*, *bc*.

    :raise ValueError: if a side is not positive.
    """
    if ab <= 0 or ac <= 0 or bc < 0:
        raise ValueError("triangle sides must be positive")
    cosine = (ab * ab + ac * ac - bc * bc) / (2 * ab * ac)
    return math.acos(max(-1.0, min(1.0, cosine)))
