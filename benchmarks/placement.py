"""Placement benchmark: how busy a cluster's model actors are, and how often stripes change reader (simulated).

    .venv/bin/python benchmarks/placement.py [--scenes 400] [--seed 0] [--cold 2.0]

No cluster here has 50 GPU nodes, so this replays the executor's scheduling in a discrete-event simulation:
the real stream order (:func:`geoseg.inference.scene.stripes`, interleaved as ``scene_work`` does), the real
window (blocks in flight per model actor) and three rules, measured side by side in one run:

  round-robin  the first rule: stripe -> reader by (scene ordinal + stripe) % readers, actor = least loaded
               on the reader's node;
  greedy       each block, in stream order, to the least loaded node (its stripe stays while its node has room);
  placement    :class:`geoseg.inference.placement.Placement`: the least loaded node takes the next block of a
               stripe it owns, looking ahead in the stream.

Each reader and each model actor works through its calls in submission order (as Ray runs an actor's calls);
a prediction starts when its read is done and its actor is free. Times are in units of one block's prediction
(lognormal jitter, sigma 0.2). A read is *cold* when its reader's previous read was of another stripe (its
cache holds the wrong rows) and then costs ``--cold`` times the warm decode time (2.0: a 2048 px block plus
halo on 512 px source tiles decodes ~25-36 tiles cold, ~16-20 warm; a strip-organised TIFF is far worse).

Prints, per scenario and rule: makespan, model-actor utilisation (work / (makespan x actors)), nodes holding
work in the first full window, cold reads per 100 blocks, and the makespan ratio to the placement rule.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from geoseg.inference.placement import Placement
from geoseg.inference.scene import interleave, stripes


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int
    actors_per_node: int
    readers_per_node: int
    per_actor: int  # blocks in flight per actor (IN_FLIGHT_GPU / IN_FLIGHT_CPU)
    scene_px: int
    block_px: int
    decode: float  # one block's read, in units of its prediction


SCENARIOS = [
    # 16-core H100 nodes: one GPU actor, 3 readers (15 free CPUs // 4); Sentinel-2 tiles at 2048 px blocks
    Scenario("50 GPU nodes, 10980 px scenes", 50, 1, 3, 6, 10980, 2048, decode=0.5),
    Scenario("1 GPU node, 10980 px scenes", 1, 1, 3, 6, 10980, 2048, decode=0.5),
    # 16-core CPU nodes: 15 actors of one CPU and one reader each; 1024 px blocks
    Scenario("50 CPU nodes, 10980 px scenes", 50, 15, 1, 2, 10980, 1024, decode=0.02),
    Scenario("3 CPU nodes, 10980 px scenes", 3, 15, 1, 2, 10980, 1024, decode=0.02),
]


class RoundRobin:
    """The first rule: stripe -> reader by (scene ordinal + stripe) % readers, in stream order."""

    def __init__(self, per_actor: int) -> None:
        self.loads: Counter[int] = Counter()
        self._ordinals: dict[str, int] = {}

    def set_pool(self, actors: dict[int, str], readers: dict[int, str]) -> None:
        self._actors, self._readers = actors, readers

    def choose_reader(self, key: str, stripe: int) -> int:
        ordinal = self._ordinals.setdefault(key, len(self._ordinals))
        keys = sorted(self._readers)
        return keys[(ordinal + stripe) % len(keys)]

    def next(self, pull):
        item = pull()
        if item is None:
            return None
        reader = self.choose_reader(item.key, item.stripe)
        local = [s for s, n in self._actors.items() if n == self._readers[reader]] or list(self._actors)
        slot = min(local, key=lambda s: (self.loads[s], s))
        self.loads[slot] += 1
        return item, reader, slot

    def release(self, reader: int, slot: int) -> None:
        self.loads[slot] -= 1


class Greedy(RoundRobin):
    """Each block in stream order; its stripe keeps its reader while that node has room, else moves to the
    reader on the least loaded node (blocks in flight per actor)."""

    def __init__(self, per_actor: int) -> None:
        super().__init__(per_actor)
        self.per_actor = per_actor
        self._stripes: dict[tuple[str, int], int] = {}
        self.reads: Counter[int] = Counter()

    def set_pool(self, actors: dict[int, str], readers: dict[int, str]) -> None:
        super().set_pool(actors, readers)
        self._by_node: dict[str, list[int]] = {}
        for slot, node in actors.items():
            self._by_node.setdefault(node, []).append(slot)

    def choose_reader(self, key: str, stripe: int) -> int:
        reader = self._stripes.get((key, stripe))
        if reader is None or min(self.loads[s] for s in self._by_node[self._readers[reader]]) >= self.per_actor:

            def rank(r: int) -> tuple[float, int, int]:
                slots = self._by_node[self._readers[r]]
                return sum(self.loads[s] for s in slots) / len(slots), self.reads[r], r

            reader = min(self._readers, key=rank)
            self._stripes[(key, stripe)] = reader
        self.reads[reader] += 1
        return reader

    def release(self, reader: int, slot: int) -> None:
        super().release(reader, slot)
        self.reads[reader] -= 1


@dataclass(frozen=True)
class Block:
    key: str
    stripe: int
    index: int


def stream(s: Scenario, scenes: int, readers: int):
    """Square scenes one after another, each cut into stripes and interleaved as ``scene_work`` does."""
    side = math.ceil(s.scene_px / s.block_px)
    for k in range(scenes):
        yield from interleave(
            iter([Block(f"scene{k}", i, b) for b in range(rows.start * side, rows.stop * side)])
            for i, rows in enumerate(stripes(side, readers))
        )


def simulate(s: Scenario, rule, scenes: int, seed: int, cold: float) -> dict[str, float]:
    actors = {n * s.actors_per_node + a: f"n{n}" for n in range(s.nodes) for a in range(s.actors_per_node)}
    readers = {n * s.readers_per_node + r: f"n{n}" for n in range(s.nodes) for r in range(s.readers_per_node)}
    rule.set_pool(actors, readers)
    rng = np.random.default_rng(seed)
    work = stream(s, scenes, len(readers))
    reader_free = dict.fromkeys(readers, 0.0)
    last_read: dict[int, Block] = {}
    actor_free = dict.fromkeys(actors, 0.0)
    done: list[tuple[float, int, int, int]] = []
    serial = 0
    busy = 0.0
    colds = 0

    def pull() -> Block | None:
        return next(work, None)

    def submit(now: float) -> None:
        nonlocal serial, busy, colds
        choice = rule.next(pull)
        if choice is None:
            return
        block, reader, slot = choice
        previous = last_read.get(reader)
        warm = previous is not None and (previous.key, previous.stripe) == (block.key, block.stripe)
        colds += not warm
        last_read[reader] = block
        decode = s.decode * (1.0 if warm else cold) * float(rng.lognormal(0, 0.2))
        read_end = max(now, reader_free[reader]) + decode
        reader_free[reader] = read_end
        cost = float(rng.lognormal(0, 0.2))
        actor_free[slot] = max(read_end, actor_free[slot]) + cost
        busy += cost
        heapq.heappush(done, (actor_free[slot], serial, reader, slot))
        serial += 1

    for _ in range(s.per_actor * len(actors)):
        submit(0.0)
    first_window = {actors[slot] for _, _, _, slot in done}
    now = 0.0
    while done:
        now, _, reader, slot = heapq.heappop(done)
        rule.release(reader, slot)
        submit(now)
    return {
        "makespan": now,
        "utilisation": busy / (now * len(actors)),
        "nodes": len(first_window),
        "cold": 100 * colds / serial,
    }


RULES = {"round-robin": RoundRobin, "greedy": Greedy, "placement": Placement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=400, help="scenes on 50 nodes (fewer on fewer nodes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", type=float, default=2.0, help="a cold read's decode time / a warm one's")
    args = parser.parse_args()
    print(f"{'scenario':32} {'rule':12} {'makespan':>9} {'util':>6} {'nodes busy':>10} {'cold/100':>8}  x placement")
    for s in SCENARIOS:
        scenes = max(8, args.scenes * s.nodes // 50)
        results = {name: simulate(s, rule(s.per_actor), scenes, args.seed, args.cold) for name, rule in RULES.items()}
        for name, r in results.items():
            print(
                f"{s.name:32} {name:12} {r['makespan']:9.0f} {r['utilisation']:6.3f} {r['nodes']:>5}/{s.nodes:<4} "
                f"{r['cold']:8.1f}  {r['makespan'] / results['placement']['makespan']:.2f}"
            )


if __name__ == "__main__":
    main()
