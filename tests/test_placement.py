"""Block placement: hand-made pools, from one node to a 50-node GPU cluster, checked block by block."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from geoseg.inference.placement import Placement


@dataclass(frozen=True)
class Item:
    key: str
    stripe: int
    index: int


def gpu_cluster(nodes: int, readers_per_node: int = 3) -> tuple[dict[int, str], dict[int, str]]:
    """One model actor per node (one GPU), readers numbered node by node as the executor starts them."""
    actors = {n: f"node{n:02d}" for n in range(nodes)}
    readers = {n * readers_per_node + r: f"node{n:02d}" for n in range(nodes) for r in range(readers_per_node)}
    return actors, readers


def stream(scenes: int, blocks: int, stripes: int = 1) -> Iterator[Item]:
    """Scenes one after another, stripes interleaved as ``scene_work`` does (one stripe of 36: a 10980 px scene
    at 2048 px blocks)."""
    for s in range(scenes):
        for i in range(blocks):
            yield Item(f"scene{s}", i % stripes, i)


class Puller:
    def __init__(self, items: Iterator[Item]) -> None:
        self.items, self.dry = items, False

    def __call__(self) -> Item | None:
        item = next(self.items, None)
        self.dry = item is None
        return item


def test_every_gpu_of_a_large_cluster_stays_full_and_every_stripe_stays_with_one_reader() -> None:
    actors, readers = gpu_cluster(50)
    placement: Placement[Item] = Placement(per_actor=6)
    placement.set_pool(actors, readers)
    pull = Puller(stream(scenes=300, blocks=36))
    in_flight = [placement.next(pull) for _ in range(6 * 50)]
    assert all(c is not None and readers[c[1]] == actors[c[2]] for c in in_flight)  # read where predicted
    assert set(placement.node_loads().values()) == {6}
    readers_of: dict[tuple[str, int], set[int]] = {}
    rng = np.random.default_rng(0)
    placed = 300
    while in_flight:  # blocks finish in any order; each freed place is refilled while blocks are left
        item, reader, slot = in_flight.pop(int(rng.integers(len(in_flight))))
        readers_of.setdefault((item.key, item.stripe), set()).add(reader)
        placement.release(reader, slot)
        choice = placement.next(pull)
        if choice is not None:
            in_flight.append(choice)
            placed += 1
            if not pull.dry:  # until the stream runs dry: the freed GPU is refilled at once, no stripe moves
                assert choice[2] == slot and set(placement.node_loads().values()) == {6}
                assert placement.moves == 0
        assert placement.queued <= 50 * 36  # the lookahead: at most a scene's blocks per node
    assert placed == 300 * 36 and len(readers_of) == 300
    # Then idle nodes split the last stripes: each split gives a stripe one more reader.
    assert sum(len(r) - 1 for r in readers_of.values()) <= placement.moves <= 100


def test_one_node_reads_each_stripe_with_one_reader_and_all_its_readers_at_once() -> None:
    placement: Placement[Item] = Placement(per_actor=6)
    placement.set_pool({0: "gpu"}, {0: "gpu", 1: "gpu", 2: "gpu"})
    pull = Puller(stream(scenes=5, blocks=36, stripes=3))
    window = [placement.next(pull) for _ in range(6)]
    assert sorted(Counter(c[1] for c in window if c).values()) == [2, 2, 2]  # the three readers start at once
    readers_of: dict[tuple[str, int], set[int]] = {}
    while window:
        choice = window.pop(0)
        assert choice is not None
        item, reader, slot = choice
        readers_of.setdefault((item.key, item.stripe), set()).add(reader)
        placement.release(reader, slot)
        if (choice := placement.next(pull)) is not None:
            window.append(choice)
        assert placement.queued <= 36  # looks ahead at most a scene
    assert len(readers_of) == 15 and all(len(r) == 1 for r in readers_of.values()) and placement.moves == 0


def test_a_node_with_room_takes_its_own_stripe_else_a_new_one_else_reads_on() -> None:
    placement: Placement[Item] = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "b"}, {0: "a", 1: "b"})
    items = [Item("s", 0, i) for i in range(4)] + [Item("t", 0, i) for i in range(4)]
    pull = Puller(iter(items))
    first = [placement.next(pull) for _ in range(3)]
    # a takes s; b reads on past s's blocks (queued for a) to a new stripe, t; a takes s's next, queued.
    assert [(c[0], c[1], c[2]) for c in first if c] == [(items[0], 0, 0), (items[4], 1, 1), (items[1], 0, 0)]
    assert placement.queued == 2  # s 2 and s 3 wait for a
    placement.release(0, 0)
    choice = placement.next(pull)
    assert choice and (choice[0], choice[1]) == (items[2], 0)  # a's own stripe, from the queue
    placement.release(1, 1)
    choice = placement.next(pull)
    assert choice and (choice[0], choice[1]) == (items[5], 1) and placement.queued == 1  # b reads on in t


def test_when_the_stream_is_dry_an_idle_node_splits_the_longest_stripe() -> None:
    placement: Placement[Item] = Placement(per_actor=1)
    placement.set_pool({0: "a", 1: "b"}, {0: "a", 1: "b"})
    items = [Item("s", 0, i) for i in range(9)] + [Item("t", 0, 0)]
    pull = Puller(iter(items))
    a = placement.next(pull)
    b = placement.next(pull)  # b reads on through s (a's) to t
    assert a and b and a[0] == Item("s", 0, 0) and b[0] == Item("t", 0, 0) and placement.queued == 8
    placement.release(b[1], b[2])
    stolen = placement.next(pull)  # the stream is dry; b takes the second half of s
    assert stolen and stolen[0] == Item("s", 0, 5) and stolen[1] == 1 and placement.moves == 1
    placement.release(a[1], a[2])
    mine = placement.next(pull)
    assert mine and mine[0] == Item("s", 0, 1) and mine[1] == 0  # a keeps the first half, in order


def test_blocks_lost_with_a_node_go_first_to_whoever_has_room() -> None:
    placement: Placement[Item] = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "b"}, {0: "a", 1: "b"})
    pull = Puller(iter([Item("s", 0, i) for i in range(6)] + [Item("t", 0, i) for i in range(6)]))
    window = [placement.next(pull) for _ in range(4)]
    on_b = [c for c in window if c and c[2] == 1]
    assert [c[0].key for c in on_b] == ["t", "t"]
    placement.set_pool({0: "a"}, {0: "a"})  # b is gone with its actor and reader: t's owner too
    for _, reader, slot in on_b:
        placement.release(reader, slot)
    placement.requeue([c[0] for c in on_b])
    placement.release(0, 0)
    again = placement.next(pull)
    assert again and again[0] == Item("t", 0, 0) and again[1:] == (0, 0)  # the lost block first, on a
    assert placement.node_loads() == {"a": 2}


def test_a_reader_without_model_actors_on_its_node_feeds_any_actor() -> None:
    placement: Placement[Item] = Placement(per_actor=2)
    placement.set_pool({0: "a", 1: "a"}, {0: "b"})  # b's model actors died and no node could take new ones
    pull = Puller(stream(scenes=1, blocks=3))
    assert [(c[1], c[2]) for c in (placement.next(pull) for _ in range(3)) if c] == [(0, 0), (0, 1), (0, 0)]
    with pytest.raises(ValueError, match="at least one reader"):
        placement.set_pool({0: "a"}, {})


def test_every_block_is_delivered_exactly_once_through_completions_in_any_order_and_a_lost_node() -> None:
    rng = np.random.default_rng(7)
    actors = {0: "a", 1: "a", 2: "b", 3: "c", 4: "c", 5: "c"}
    readers = {0: "a", 1: "b", 2: "c", 3: "c"}
    placement: Placement[Item] = Placement(per_actor=3)
    placement.set_pool(actors, readers)
    expected = [
        Item(f"s{s}", i % k, i) for s, k in enumerate(rng.integers(1, 4, 40)) for i in range(rng.integers(1, 30))
    ]
    pull = Puller(iter(expected))
    in_flight: list[tuple[Item, int, int]] = []
    delivered: Counter[Item] = Counter()
    step = 0
    while True:
        while len(in_flight) < 3 * len(actors) and (choice := placement.next(pull)) is not None:
            in_flight.append(choice)
        if not in_flight:
            break
        step += 1
        if step == 60:  # node c is lost with its three actors and two readers, and every block they held
            actors = {s: n for s, n in actors.items() if n != "c"}
            placement.set_pool(actors, {0: "a", 1: "b"})
            lost = [c for c in in_flight if c[2] not in actors or readers[c[1]] == "c"]
            in_flight = [c for c in in_flight if c not in lost]
            for _, reader, slot in lost:
                placement.release(reader, slot)
            placement.requeue([c[0] for c in lost])
            continue
        item, reader, slot = in_flight.pop(int(rng.integers(len(in_flight))))
        assert readers[reader] == actors[slot] != "c" or step < 60
        placement.release(reader, slot)
        delivered[item] += 1
    assert delivered == Counter(expected)
    assert not placement.loads and not placement.reads and placement.queued == 0


def test_a_failed_scene_s_queued_blocks_are_dropped() -> None:
    placement: Placement[Item] = Placement(per_actor=1)
    placement.set_pool({0: "a", 1: "b"}, {0: "a", 1: "b"})
    pull = Puller(iter([Item("s", 0, i) for i in range(5)] + [Item("t", 0, i) for i in range(2)]))
    a, b = placement.next(pull), placement.next(pull)  # b reads past s's blocks (queued for a) to t
    assert a and b and b[0] == Item("t", 0, 0) and placement.queued == 4
    assert placement.drop("s") == 4 and placement.queued == 0
    placement.release(a[1], a[2])
    again = placement.next(pull)
    assert again and again[0] == Item("t", 0, 1)  # nothing of s is placed again
