"""Vivaldi coordinates: predicted latencies converge on the measured ones."""

import math
import random
import statistics

import pytest

from nodedb.topology.vivaldi import Coordinate, angle_at, direction, distance, update


def _layout(rng, hosts):
    """A hidden 2D layout plus an access delay per host: the 'real' latencies."""
    positions = [(rng.uniform(0, 0.1), rng.uniform(0, 0.1)) for _ in range(hosts)]
    access = [rng.uniform(0.001, 0.005) for _ in range(hosts)]
    return lambda i, j: math.dist(positions[i], positions[j]) + access[i] + access[j]


def relative_errors(seed, hosts=20, samples_per_host=200):
    rng = random.Random(seed)
    rtt = _layout(rng, hosts)
    coordinates = [Coordinate() for _ in range(hosts)]
    for _ in range(hosts * samples_per_host):
        i, j = rng.sample(range(hosts), 2)
        coordinates[i] = update(coordinates[i], coordinates[j], rtt(i, j) * rng.uniform(0.95, 1.05), rng)
    return [
        abs(distance(coordinates[i], coordinates[j]) - rtt(i, j)) / rtt(i, j)
        for i in range(hosts)
        for j in range(i + 1, hosts)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_most_predictions_are_within_twenty_percent(seed):
    errors = relative_errors(seed)
    within = sum(error < 0.2 for error in errors) / len(errors)
    assert within >= 0.8, f"only {within:.0%} of pairs within 20% (seed {seed})"
    assert statistics.median(errors) < 0.1


def test_error_estimate_falls_as_samples_agree():
    rng = random.Random(0)
    a, b = Coordinate(), Coordinate(x=0.01)
    for _ in range(50):
        a = update(a, b, 0.02, rng)
    assert a.error < 0.5
    assert distance(a, b) == pytest.approx(0.02, rel=0.1)


def test_coincident_coordinates_are_pushed_apart():
    a = update(Coordinate(), Coordinate(), 0.05, random.Random(1))
    assert math.hypot(a.x, a.y) > 0


def test_bad_samples_change_nothing():
    a = Coordinate(x=0.1)
    assert update(a, Coordinate(), 0.0, random.Random(1)) == a
    assert update(a, Coordinate(), float("nan"), random.Random(1)) == a


def test_wire_form_round_trips_and_rejects_nonsense():
    c = Coordinate(0.01, -0.02, 0.003, 0.4)
    assert Coordinate.from_wire(c.to_wire()) == c
    for bad in ([1, 2, 3], [float("inf"), 0, 0, 1], [0, 0, -1, 1], [0, 0, 0, 0], "x", [0, 0, 0, True]):
        with pytest.raises(ValueError):
            Coordinate.from_wire(bad)


def test_angle_at_is_the_law_of_cosines():
    assert angle_at(3, 4, 5) == pytest.approx(math.pi / 2)
    assert angle_at(1, 1, 1) == pytest.approx(math.pi / 3)
    with pytest.raises(ValueError):
        angle_at(0, 1, 1)


def test_direction_is_the_bearing_in_the_plane():
    assert direction(Coordinate(0, 0), Coordinate(0, 1)) == pytest.approx(math.pi / 2)
