"""Which block goes next, which reader reads it and which model actor predicts it.

The driver keeps a window of ``per_actor`` blocks in flight per model actor. Blocks arrive in stream order:
scene after scene, each scene as one or a few *stripes* (runs of block rows that one reader reads in raster
order, so each source block is decoded once with its file open and GDAL's block cache warm; see
:func:`geoseg.inference.scene.stripes`). A block is read by a reader and predicted by a model actor **on the
reader's node**: raw pixels never cross the network.

Two things have to hold on a cluster, and a fixed rule gets neither:

- **every actor busy**: each slot that frees is refilled on its own node. A round-robin rule (stripe ->
  reader by scene ordinal) put the whole window of a 50-GPU-node cluster on about 3 nodes, because scenes
  stream one after another and readers are numbered node by node (``benchmarks/placement.py``);
- **stripes kept whole**: a stripe that changes reader costs the new reader a row of source blocks decoded
  again (for a strip-organised TIFF, the block row's whole width). Refilling slots from the stream in order
  moved a stripe on nearly every block.

So the placement looks ahead. It keeps the blocks it has taken from the stream in per-stripe queues, and when
a slot is to be filled:

1. the node is the least loaded one with room (blocks in flight per model actor; room = an actor holding
   fewer than ``per_actor``);
2. the block is, in this order: the next of the blocks lost with an actor or a node (re-queued first: their
   scenes wait for them); the next of the stripe one of this node's readers read last (its cache holds those
   rows); the next of the earliest queued stripe this node's readers own; the next of the earliest queued
   stripe nobody owns, which this node's idlest reader *not in the middle of a stripe* now owns. When none
   exists, more blocks are taken from the stream (their stripes queue for the nodes that own them). A
   reader is in the middle of a stripe when that stripe belongs to the scene the stream is in (a scene's
   stripes come interleaved, scenes one after another), so reading on stops at that scene's end;
3. once the stream is exhausted, a node with room and nothing of its own splits the longest queued stripe of
   another node and takes its second half (a stripe boundary: one more row of source blocks decoded);
4. the actor is the least loaded one on the reader's node.

The lookahead holds blocks' descriptions, not their pixels: at most the rest of the scene the stream is in
plus the queued blocks of stripes being read (a scene's blocks per node at most). This module holds only
counts, names and queues: no Ray, so it is tested without a cluster.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

REMEMBERED_SCENES = 64  # scenes whose stripes' owners are kept once their queues are empty


class Placeable(Protocol):
    @property
    def key(self) -> str: ...  # the scene

    @property
    def stripe(self) -> int: ...  # the run of block rows it belongs to


T = TypeVar("T", bound=Placeable)
K = TypeVar("K", bound=Hashable)
StripeId = tuple[str, int, int]  # (scene, stripe, part): 0 as streamed, > 0 split-off halves, < 0 re-queued


class Placement(Generic[T]):
    """Chooses the next block and its (reader, model actor), and counts what each holds.

    Args:
        per_actor: blocks in flight per model actor that fill it (the executor's window per actor).
    """

    def __init__(self, per_actor: int) -> None:
        self.per_actor = per_actor
        self.loads: Counter[int] = Counter()  # model slot -> blocks in flight
        self.reads: Counter[int] = Counter()  # reader -> blocks in flight
        self.moves = 0  # stripes split or handed to another reader (each decodes a row of source blocks again)
        self._node_load: Counter[str] = Counter()  # node -> blocks in flight on its live model actors
        self._room: Counter[str] = Counter()  # node -> places below per_actor on its live model actors
        self._slot_node: dict[int, str] = {}
        self._by_node: dict[str, list[int]] = {}
        self._readers: dict[int, str] = {}
        self._reader_nodes: set[str] = set()
        self._queues: dict[StripeId, deque[T]] = {}  # in the order the stripes were first queued
        self._owner: dict[StripeId, int] = {}
        self._current: dict[int, StripeId] = {}  # reader -> the stripe it read last
        self._stream_scene = ""  # the scene of the stream's latest block
        self._scenes: OrderedDict[str, list[StripeId]] = OrderedDict()
        self._parts = 0
        self._exhausted = False

    # -- the pool ---------------------------------------------------------------------------------------------
    def set_pool(self, actors: Mapping[int, str], readers: Mapping[int, str]) -> None:
        """The live model actors (slot -> node) and readers (index -> node); call again when either changes.

        Stripes owned by a reader that is gone are owned by nobody and go to whichever node takes them next.
        """
        if not readers:
            raise ValueError("a pool needs at least one reader")
        self._slot_node = dict(actors)
        self._by_node = {}
        for slot, node in sorted(actors.items()):
            self._by_node.setdefault(node, []).append(slot)
        self._readers = dict(readers)
        self._reader_nodes = set(self._readers.values())
        self._node_load = Counter({n: sum(self.loads[s] for s in slots) for n, slots in self._by_node.items()})
        self._room = Counter(
            {n: sum(max(0, self.per_actor - self.loads[s]) for s in slots) for n, slots in self._by_node.items()}
        )
        self._owner = {sid: r for sid, r in self._owner.items() if r in self._readers}

    def node_loads(self) -> dict[str, int]:
        """Blocks in flight per node of the live pool (0 for an idle node)."""
        return {node: self._node_load[node] for node in self._by_node}

    # -- blocks in and out --------------------------------------------------------------------------------------
    def next(self, pull: Callable[[], T | None]) -> tuple[T, int, int] | None:
        """The next block and its (reader, model slot), counted as in flight; ``None`` when no block is left.

        ``pull`` gives the stream's next block, or ``None`` once it is exhausted (it is not called again).
        """
        node = self._roomiest_node()
        readers = [r for r, n in self._readers.items() if n == node] if node is not None else list(self._readers)
        sid = self._stripe_for(readers, pull)
        if sid is None:
            return None
        queue = self._queues[sid]
        item = queue.popleft()
        if not queue:
            del self._queues[sid]
        reader = self._owner[sid]
        self._current[reader] = sid
        local = self._by_node.get(self._readers[reader]) or list(self._slot_node)
        if not local:
            raise RuntimeError("no model actor is left to place a block on")
        slot = min(local, key=lambda s: (self.loads[s], s))
        if self.loads[slot] < self.per_actor:
            self._room[self._slot_node[slot]] -= 1
        self.loads[slot] += 1
        self.reads[reader] += 1
        self._node_load[self._slot_node[slot]] += 1
        return item, reader, slot

    def release(self, reader: int, slot: int) -> None:
        """A block placed on (reader, slot) left the window: finished, lost or cancelled."""
        _decrement(self.loads, slot)
        _decrement(self.reads, reader)
        node = self._slot_node.get(slot)  # None: the actor has left the pool
        if node is not None:
            _decrement(self._node_load, node)
            if self.loads[slot] < self.per_actor:
                self._room[node] += 1

    def requeue(self, items: Iterable[T]) -> None:
        """Blocks to place again (lost with an actor or a node), ahead of everything queued, owned by nobody."""
        lost: dict[tuple[str, int], deque[T]] = {}
        for item in items:
            lost.setdefault((item.key, item.stripe), deque()).append(item)
        parts: dict[StripeId, deque[T]] = {}
        for (key, stripe), queue in lost.items():
            self._parts += 1
            parts[(key, stripe, -self._parts)] = queue
        self._queues = {**parts, **self._queues}

    def drop(self, key: str) -> int:
        """Forget the queued blocks of scene ``key`` (it failed: none of its blocks is wanted); how many."""
        gone = [sid for sid in self._queues if sid[0] == key]
        return sum(len(self._queues.pop(sid)) for sid in gone)

    @property
    def queued(self) -> int:
        """Blocks taken from the stream (or re-queued) and not placed yet."""
        return sum(len(q) for q in self._queues.values())

    # -- choices --------------------------------------------------------------------------------------------------
    def _roomiest_node(self) -> str | None:
        open_nodes = [n for n in self._by_node if self._room[n] > 0 and n in self._reader_nodes]
        if not open_nodes:  # every actor is full or no reader shares a node with one: any reader, any actor
            return None
        return min(open_nodes, key=lambda n: (self._node_load[n] / len(self._by_node[n]), n))

    def _stripe_for(self, readers: list[int], pull: Callable[[], T | None]) -> StripeId | None:
        mine = set(readers)
        for sid in self._queues:  # re-queued blocks first (they are queued first): their scenes wait for them
            if sid[2] >= 0:
                break
            if self._owner.get(sid) in mine or sid not in self._owner:
                return sid if sid in self._owner else self._bind(sid, readers)
        going_on = [r for r in readers if (c := self._current.get(r)) in self._queues and self._owner.get(c) == r]
        if going_on:  # a reader goes on with the stripe it read last: its cache holds those rows
            return self._current[self._idlest(going_on)]
        free = None
        for sid in self._queues:
            owner = self._owner.get(sid)
            if owner in mine:
                return sid
            if owner is None and free is None:
                free = sid
        while True:
            if free is not None and (unbusy := self._unbusy(readers)):
                return self._bind(free, unbusy)
            item = None if self._exhausted else pull()
            if item is None:
                self._exhausted = True
                return self._bind(free, readers) if free is not None else self._steal(readers)
            sid = self._queue(item)
            owner = self._owner.get(sid)
            if owner in mine:
                return sid
            if owner is None and free is None:
                free = sid

    def _unbusy(self, readers: list[int]) -> list[int]:
        """Readers not in the middle of a stripe whose next blocks the stream has still to give.

        The stream gives a scene's stripes interleaved and scenes one after another, so a reader's stripe of
        the scene the stream is in may go on; a stripe of an earlier scene is complete.
        """
        return [
            r
            for r in readers
            if (current := self._current.get(r)) is None
            or current[0] != self._stream_scene
            or self._owner.get(current) != r
        ]

    def _bind(self, sid: StripeId, readers: list[int]) -> StripeId:
        self._owner[sid] = self._idlest(readers)
        return sid

    def _queue(self, item: T) -> StripeId:
        self._stream_scene = item.key
        sid = (item.key, item.stripe, 0)
        self._queues.setdefault(sid, deque()).append(item)
        if item.key not in self._scenes:
            self._scenes[item.key] = []
            while len(self._scenes) > REMEMBERED_SCENES:  # forget old owners, never queued blocks
                for old in self._scenes.popitem(last=False)[1]:
                    if old not in self._queues:
                        self._owner.pop(old, None)
        if sid not in self._scenes[item.key]:
            self._scenes[item.key].append(sid)
        return sid

    def _steal(self, readers: list[int]) -> StripeId | None:
        if not self._queues:
            return None
        longest = max(self._queues, key=lambda s: len(self._queues[s]))
        queue = self._queues[longest]
        reader = self._idlest(readers)
        self.moves += 1
        if len(queue) == 1:
            self._owner[longest] = reader
            return longest
        self._parts += 1
        half = (longest[0], longest[1], self._parts)
        tail = [queue.pop() for _ in range(len(queue) // 2)][::-1]
        self._queues[half] = deque(tail)
        self._owner[half] = reader
        return half

    def _idlest(self, readers: list[int]) -> int:
        return min(readers, key=lambda r: (self.reads[r], r))


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:  # keep only what is in flight, so the counters stay as small as the window
        del counter[key]
