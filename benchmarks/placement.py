"""Placement benchmark: how busy a cluster's model actors are under a block placement rule (simulated).

    .venv/bin/python benchmarks/placement.py [--scenes 400] [--seed 0]

No cluster here has 50 GPU nodes, so this replays the executor's scheduling in a discrete-event simulation:
the real stream order (:func:`geoseg.inference.scene.scene_work`'s stripes), the real window (blocks in flight
per model actor), the real placement (:class:`geoseg.inference.placement.Placement`) against the rule it
replaced (stripe -> reader by round-robin over scene ordinal + stripe, actor = least loaded on the reader's
node). Each reader and each model actor works through its calls in submission order (as Ray runs an actor's
calls); a block's prediction starts when its read is done and its actor is free. Times are in units of one
block's prediction (lognormal jitter, sigma 0.2); decode time per block is given per scenario.

Prints, per scenario and rule: makespan, model-actor utilisation (work / (makespan x actors)), nodes holding
work in the first full window, and the ratio of makespans (old / new) measured in this run.
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from geoseg.inference.placement import Placement
from geoseg.inference.scene import stripes


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
    """The rule before :class:`Placement`: stripe -> reader by (scene ordinal + stripe) % readers."""

    def __init__(self) -> None:
        self.loads: Counter[int] = Counter()
        self._ordinals: dict[str, int] = {}

    def set_pool(self, actors: dict[int, str], readers: dict[int, str]) -> None:
        self._actors, self._readers = actors, readers

    def place(self, key: str, stripe: int) -> tuple[int, int]:
        ordinal = self._ordinals.setdefault(key, len(self._ordinals))
        keys = sorted(self._readers)
        reader = keys[(ordinal + stripe) % len(keys)]
        local = [s for s, n in self._actors.items() if n == self._readers[reader]] or list(self._actors)
        slot = min(local, key=self.loads.__getitem__)
        self.loads[slot] += 1
        return reader, slot

    def release(self, reader: int, slot: int) -> None:
        self.loads[slot] -= 1


def stream(s: Scenario, scenes: int, readers: int):
    side = math.ceil(s.scene_px / s.block_px)
    for k in range(scenes):
        runs = [[(f"scene{k}", i)] * (len(rows) * side) for i, rows in enumerate(stripes(side, readers))]
        while runs:  # interleaved as scene_work interleaves them
            for run in list(runs):
                yield run.pop()
                if not run:
                    runs.remove(run)


def simulate(s: Scenario, rule, scenes: int, seed: int) -> dict[str, float]:
    actors = {n * s.actors_per_node + a: f"n{n}" for n in range(s.nodes) for a in range(s.actors_per_node)}
    readers = {n * s.readers_per_node + r: f"n{n}" for n in range(s.nodes) for r in range(s.readers_per_node)}
    rule.set_pool(actors, readers)
    rng = np.random.default_rng(seed)
    work = stream(s, scenes, len(readers))
    reader_free = dict.fromkeys(readers, 0.0)
    actor_free = dict.fromkeys(actors, 0.0)
    done: list[tuple[float, int, int, int]] = []
    serial = 0
    busy = 0.0

    def submit(now: float) -> bool:
        nonlocal serial, busy
        item = next(work, None)
        if item is None:
            return False
        reader, slot = rule.place(*item)
        read_end = max(now, reader_free[reader]) + s.decode * float(rng.lognormal(0, 0.2))
        reader_free[reader] = read_end
        cost = float(rng.lognormal(0, 0.2))
        actor_free[slot] = max(read_end, actor_free[slot]) + cost
        busy += cost
        heapq.heappush(done, (actor_free[slot], serial, reader, slot))
        serial += 1
        return True

    for _ in range(s.per_actor * len(actors)):
        submit(0.0)
    first_window = {actors[slot] for _, _, _, slot in done}
    now = 0.0
    while done:
        now, _, reader, slot = heapq.heappop(done)
        rule.release(reader, slot)
        submit(now)
    return {"makespan": now, "utilisation": busy / (now * len(actors)), "nodes": len(first_window)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'scenario':34} {'rule':12} {'makespan':>9} {'util':>6} {'nodes busy':>10}  old/new")
    for s in SCENARIOS:
        scenes = max(8, args.scenes * s.nodes // 50)
        old = simulate(s, RoundRobin(), scenes, args.seed)
        new = simulate(s, Placement(s.per_actor), scenes, args.seed)
        for name, r in (("round-robin", old), ("placement", new)):
            print(
                f"{s.name:34} {name:12} {r['makespan']:9.0f} {r['utilisation']:6.3f} "
                f"{r['nodes']:>5}/{s.nodes:<4}" + (f"  {old['makespan'] / new['makespan']:.2f}" if r is new else "")
            )


if __name__ == "__main__":
    main()
