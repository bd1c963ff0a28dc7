"""Which reader reads a block and which model actor predicts it: keep every node busy, keep pixels on their node.

The driver keeps a window of ``per_actor`` blocks in flight per model actor and hands out blocks in stream
order: scene after scene, each scene as one or a few *stripes* (runs of block rows that one reader reads in
raster order, so each source block is decoded once; see :func:`geoseg.inference.scene.stripes`). A block is
read by a reader and predicted by a model actor **on the reader's node**: the raw pixels never cross the
network.

Why a policy at all. A fixed rule (stripe -> reader by round-robin) puts the whole window on a handful of
nodes on a large cluster: with 50 GPU nodes (one actor and three readers each), a 10980 px scene at 2048 px
blocks is a single stripe of 36 blocks, consecutive scenes go to consecutive readers, and the 300-block
window (about 8 scenes) lands on about 3 nodes while the other 47 GPUs wait (``benchmarks/placement.py``).

The rule here, per block:

1. A stripe stays with the reader it started on while that reader's node has room: some model actor there
   holds fewer than ``per_actor`` blocks. Staying keeps the reader's file handle and GDAL block cache warm.
2. Otherwise (a new stripe, a full node, a reader that died) the stripe moves to the reader on the least
   loaded node (blocks in flight per model actor), then the reader with the fewest reads queued, then the
   lowest index (deterministic). A moved stripe costs its new reader one row of source blocks decoded again,
   the same as a stripe boundary.
3. The block goes to the least loaded model actor on the reader's node (any actor when that node has none).

Since the window is ``per_actor`` x actors, a full window puts exactly ``per_actor`` blocks on every actor.
This module holds only counts and node names: no Ray, so it is tested without a cluster.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping
from typing import TypeVar

REMEMBERED_SCENES = 64  # scenes whose stripe -> reader choices are kept (a stream holds a few at once)
K = TypeVar("K", bound=Hashable)


class Placement:
    """Places blocks on (reader, model actor) pairs and counts what each holds.

    Args:
        per_actor: blocks in flight per model actor that fill it (the executor's window per actor).
    """

    def __init__(self, per_actor: int) -> None:
        self.per_actor = per_actor
        self.loads: Counter[int] = Counter()  # model slot -> blocks in flight
        self.reads: Counter[int] = Counter()  # reader -> blocks in flight
        self._node_load: Counter[str] = Counter()  # node -> blocks in flight on its model actors
        self._slot_node: dict[int, str] = {}  # every slot ever placed on (slots are never reused)
        self._by_node: dict[str, list[int]] = {}
        self._readers: dict[int, str] = {}
        self._stripes: OrderedDict[str, dict[int, int]] = OrderedDict()

    def set_pool(self, actors: Mapping[int, str], readers: Mapping[int, str]) -> None:
        """The live model actors (slot -> node) and readers (index -> node); call again when either changes."""
        if not readers:
            raise ValueError("a pool needs at least one reader")
        self._slot_node.update(actors)
        self._by_node = {}
        for slot, node in sorted(actors.items()):
            self._by_node.setdefault(node, []).append(slot)
        self._readers = dict(readers)

    def place(self, key: str, stripe: int) -> tuple[int, int]:
        """The (reader, model slot) for the next block of ``stripe`` of scene ``key``; counted as in flight."""
        stripes = self._stripes.setdefault(key, {})
        self._stripes.move_to_end(key)
        while len(self._stripes) > REMEMBERED_SCENES:
            self._stripes.popitem(last=False)
        reader = stripes.get(stripe)
        if reader not in self._readers or self._full(self._readers[reader]):
            reader = min(self._readers, key=self._reader_rank)
            stripes[stripe] = reader
        local = self._by_node.get(self._readers[reader]) or [s for slots in self._by_node.values() for s in slots]
        if not local:
            raise RuntimeError("no model actor is left to place a block on")
        slot = min(local, key=lambda s: (self.loads[s], s))
        self.loads[slot] += 1
        self.reads[reader] += 1
        self._node_load[self._slot_node[slot]] += 1
        return reader, slot

    def release(self, reader: int, slot: int) -> None:
        """A block placed on (reader, slot) left the window: finished, lost or cancelled."""
        _decrement(self.loads, slot)
        _decrement(self.reads, reader)
        _decrement(self._node_load, self._slot_node[slot])

    def node_loads(self) -> dict[str, int]:
        """Blocks in flight per node of the live pool (0 for an idle node)."""
        return {node: self._node_load[node] for node in self._by_node}

    def _full(self, node: str) -> bool:
        slots = self._by_node.get(node)
        return not slots or min(self.loads[s] for s in slots) >= self.per_actor

    def _reader_rank(self, reader: int) -> tuple[float, int, int]:
        node = self._readers[reader]
        slots = self._by_node.get(node)
        pressure = self._node_load[node] / len(slots) if slots else float("inf")
        return pressure, self.reads[reader], reader


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:  # keep only what is in flight, so the counters stay as small as the window
        del counter[key]
