"""Pure functions that size and pace the work, by hand: model-actor CPU shares on a cluster, and the learning-rate
schedule."""

from __future__ import annotations

import itertools

import pytest

from geoseg.inference.distributed import READER_CPUS, actor_capacity, cpu_actor_share
from geoseg.training.loop import learning_rate


def test_actor_capacity_counts_whole_actors_beside_each_nodes_reader() -> None:
    assert READER_CPUS == 0.5
    assert actor_capacity([4.0, 2.0], 1.5) == 2 + 1  # 3.5 / 1.5 -> 2, 1.5 / 1.5 -> 1
    assert actor_capacity([0.5, 1.0], 0.25) == 0 + 2  # a node with only its reader's room holds none


@pytest.mark.parametrize(
    ("nodes", "workers", "share"),
    [
        ([2.0], 2, 0.75),  # this 2-core machine: two actors of 0.75 CPU and the reader's 0.5
        ([16.0, 16.0], 2, 15.5),  # one actor per node, each with the whole node but the reader's room
        ([16.0, 4.0], 3, 15.5 / 3),  # three on the big node beat 3.5-CPU actors spread (which fit 5)
        ([1.0], 4, 0.125),  # more actors than sensible: the largest share that still places them all
        ([0.5], 2, READER_CPUS / 2),  # no room at all: the smallest share, Ray queues the rest
    ],
)
def test_cpu_actor_share_is_the_largest_that_places_every_actor(nodes, workers, share) -> None:
    assert cpu_actor_share(nodes, workers) == pytest.approx(share)
    rooms = [c - READER_CPUS for c in nodes if c > READER_CPUS]
    if rooms:
        assert actor_capacity(nodes, cpu_actor_share(nodes, workers)) >= workers
        assert cpu_actor_share(nodes, workers) <= max(rooms)  # no actor spans nodes


def test_learning_rate_warms_up_then_decays_to_one_percent() -> None:
    peak, total = 0.01, 100  # warm-up: 5 % = 5 steps
    assert [learning_rate(s, total, peak) for s in range(5)] == pytest.approx([peak * k / 5 for k in range(1, 6)])
    assert learning_rate(5, total, peak) == pytest.approx(peak)  # the cosine starts at the peak
    middle = 5 + (total - 5) / 2
    assert learning_rate(int(middle), total, peak) == pytest.approx(peak * (0.01 + 0.99 * 0.5), rel=0.02)
    assert learning_rate(total, total, peak) == pytest.approx(0.01 * peak)
    assert learning_rate(10 * total, total, peak) == pytest.approx(0.01 * peak)  # more epochs: stays at the floor
    rates = [learning_rate(s, total, peak) for s in range(5, total)]
    assert all(a >= b for a, b in itertools.pairwise(rates))  # never rises after the warm-up
