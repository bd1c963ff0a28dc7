"""Block placement: hand-made pools, from one node to a 50-node GPU cluster, checked block by block."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from geoseg.inference.placement import Placement


def gpu_cluster(nodes: int, readers_per_node: int = 3) -> tuple[dict[int, str], dict[int, str]]:
    """One model actor per node (one GPU), readers numbered node by node as the executor starts them."""
    actors = {n: f"node{n:02d}" for n in range(nodes)}
    readers = {n * readers_per_node + r: f"node{n:02d}" for n in range(nodes) for r in range(readers_per_node)}
    return actors, readers


def stream(scenes: int, blocks: int) -> Iterator[tuple[str, int]]:
    """Scenes one after another, each a single stripe (a 10980 px scene at 2048 px blocks: 6 rows of 6)."""
    for s in range(scenes):
        for _ in range(blocks):
            yield f"scene{s}", 0


def test_a_full_window_holds_the_same_load_on_every_actor_of_a_large_cluster() -> None:
    actors, readers = gpu_cluster(50)
    placement = Placement(per_actor=6)
    placement.set_pool(actors, readers)
    work = stream(scenes=400, blocks=36)
    in_flight = [placement.place(*next(work)) for _ in range(6 * 50)]
    # Every block is predicted on the node that reads it, and every GPU holds exactly its share.
    assert all(readers[r] == actors[s] for r, s in in_flight)
    assert set(placement.node_loads().values()) == {6}
    assert sorted(Counter(s for _, s in in_flight).values()) == [6] * 50
    # Steady state: blocks finish in any order and the window is refilled one for one; every actor stays full.
    rng = np.random.default_rng(0)
    for _ in range(5000):
        done = in_flight.pop(int(rng.integers(len(in_flight))))
        placement.release(*done)
        in_flight.append(placement.place(*next(work)))
        assert in_flight[-1][1] == done[1]  # the freed actor is the one that gets the next block
    assert set(placement.node_loads().values()) == {6}
    assert sum(placement.reads.values()) == 300


def test_a_stripe_stays_with_its_reader_while_its_node_has_room() -> None:
    placement = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "a", 2: "b", 3: "b"}, {0: "a", 1: "b"})
    first = [placement.place("s", 0) for _ in range(4)]
    assert first == [(0, 0), (0, 1), (0, 0), (0, 1)]  # node a fills, its actors in turn
    assert placement.place("s", 0) == (1, 2)  # a is full: the stripe moves to b
    placement.release(0, 0)  # a block on a finishes
    assert placement.place("s", 0) == (1, 3)  # b still has room: the stripe stays there (warm cache)
    placement.release(1, 2)
    placement.release(1, 3)  # b drains: a 3 blocks on 2 actors, b 0
    assert placement.place("t", 0) == (1, 2)  # a new stripe starts on the least loaded node
    placement.place("u", 0)
    placement.place("v", 0)  # b: 3 on 2, as loaded as a; the tie goes to the reader with fewer reads queued
    assert placement.node_loads() == {"a": 3, "b": 3} and placement.reads == Counter({0: 3, 1: 3})
    assert placement.place("w", 0) == (0, 0)  # the actor on a with a free place (the other holds 2)


def test_new_stripes_on_one_node_go_to_its_idlest_reader() -> None:
    placement = Placement(per_actor=6)
    placement.set_pool({0: "gpu"}, {0: "gpu", 1: "gpu", 2: "gpu"})
    assert [placement.place("s", stripe)[0] for stripe in range(3)] == [0, 1, 2]
    assert placement.place("s", 0)[0] == 0 and placement.place("s", 2)[0] == 2  # each stripe keeps its reader
    placement.release(1, 0)
    assert placement.place("t", 0)[0] == 1  # the reader with the fewest reads queued
    assert placement.reads == Counter({0: 2, 1: 1, 2: 2})


def test_a_lost_node_moves_its_stripes_and_its_blocks_are_released() -> None:
    placement = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "b"}, {0: "a", 1: "b"})
    assert [placement.place("s", 0) for _ in range(3)] == [(0, 0), (0, 0), (1, 1)]
    placement.set_pool({0: "a"}, {0: "a"})  # node b is gone with its actor and its reader
    assert placement.node_loads() == {"a": 2}
    assert placement.place("s", 0) == (0, 0)  # b's stripe moves to a (over-full: a resubmitted block)
    placement.release(1, 1)  # the block lost with b leaves the window
    for _ in range(3):
        placement.release(0, 0)
    assert placement.node_loads() == {"a": 0} and not placement.loads and not placement.reads


def test_a_reader_without_model_actors_on_its_node_feeds_any_actor() -> None:
    placement = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "a"}, {0: "b"})  # b's model actors died and no node could take new ones
    assert [placement.place("s", 0) for _ in range(3)] == [(0, 0), (0, 1), (0, 0)]
    with pytest.raises(ValueError, match="at least one reader"):
        placement.set_pool({0: "a"}, {})
