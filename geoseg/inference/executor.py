"""Executors: where blocks are read and predicted. The job (driver) only hands out blocks and writes results.

An executor takes a stream of :class:`WorkItem` (one block of one scene each) and yields every item with its
:class:`~geoseg.inference.blend.BlockResult`, or with the error that failed it, in any order. Two exist and
give the same bytes: :class:`LocalExecutor` (everything in this process: tests, notebooks, debugging) and
:class:`geoseg.inference.distributed.RayExecutor` (reader actors and model actors on a Ray cluster).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from geoseg.inference.options import PredictOptions
from geoseg.inference.reader import BlockPixels, read_block
from geoseg.inference.result import BlockResult
from geoseg.inference.tiling import Block, BlockGrid
from geoseg.io.raster import SceneInfo

if TYPE_CHECKING:  # torch stays out of reader processes, which import this module
    from geoseg.inference.worker import ModelWorker


@dataclass(frozen=True)
class WorkItem:
    """One block of one scene. ``key`` names the scene in a stream of scenes; ``stripe`` is the run of block
    rows that one reader reads in order (its blocks share decoded source blocks; see the reader)."""

    key: str
    scene: SceneInfo
    blocks: BlockGrid
    block: Block
    stripe: int = 0


#: What one group of small scenes carries at most: a GPU node's block (2048² output pixels), so that a group
#: costs the readers, the object store and the model actors no more than one block of a large scene does.
GROUP_PX = 2048 * 2048
SMALL_BLOCK_PX = GROUP_PX // 4  # a one-block scene whose read window is at most this shares its calls
GROUP_BLOCKS = 8  # scenes per group at most: Ray's cost per call is then an eighth per scene


@dataclass(frozen=True)
class WorkGroup:
    """Consecutive one-block scenes of an archive of small scenes, read in one call and predicted in one call.

    A pool of workers in other processes pays a fixed cost per call, beside the pixels: on Ray, ~5 ms of CPU
    over the caller, the raylet and the worker for each of a block's two calls (measured on 256² scenes, where
    the model and the COG cost ~20 ms). A group spreads it over :data:`GROUP_BLOCKS` scenes. It is placed as one
    block: its scenes have no other blocks, so no stripe is split by it.
    """

    items: tuple[WorkItem, ...]

    @property
    def key(self) -> str:
        return self.items[0].key

    @property
    def stripe(self) -> int:
        return 0


def is_small(item: WorkItem) -> bool:
    """A scene of one block whose read window (halo included) is at most :data:`SMALL_BLOCK_PX`."""
    return len(item.blocks) == 1 and _read_px(item) <= SMALL_BLOCK_PX


def grouped(
    work: Iterable[WorkItem], size: int = GROUP_BLOCKS, pixels: int = GROUP_PX
) -> Iterator[WorkItem | WorkGroup]:
    """``work`` in the same order, runs of consecutive small scenes (:func:`is_small`) gathered into groups of
    at most ``size`` scenes and ``pixels`` read pixels; a run of one stays a plain item. Nothing waits for a
    group to fill but the stream itself: a group closes at the first item that is not small and at the end."""
    run: list[WorkItem] = []
    held = 0

    def close() -> Iterator[WorkItem | WorkGroup]:
        nonlocal run, held
        if run:
            yield run[0] if len(run) == 1 else WorkGroup(tuple(run))
        run, held = [], 0

    for item in work:
        if not is_small(item):
            yield from close()
            yield item
            continue
        read = _read_px(item)
        if len(run) == size or held + read > pixels:
            yield from close()
        run.append(item)
        held += read
    yield from close()


def _read_px(item: WorkItem) -> int:
    return int(item.block.read.width * item.block.read.height)


class BlockExecutor(Protocol):
    """Reads and predicts blocks, yielding results in any order."""

    @property
    def parallelism(self) -> int:
        """How many blocks it predicts at once (its model workers)."""
        ...

    @property
    def readers(self) -> int:
        """How many readers it has (a scene is read as this many stripes at most)."""
        ...

    @property
    def gpu(self) -> bool:
        """Whether its model workers run on GPUs (defaults such as the block size follow)."""
        ...

    def run(
        self, work: Iterable[WorkItem], options: PredictOptions
    ) -> Iterator[tuple[WorkItem, BlockResult | Exception]]:
        """Read and predict every item; yield each with its result, or with the error it raised.

        An item's error concerns its scene only: the executor carries on with the rest. Errors of the
        executor itself (no model worker left) are raised.
        """
        ...


class LocalExecutor:
    """Everything in this process, one block after another, the next block read while this one is predicted.

    The read runs in a thread of its own, one block ahead: GDAL decodes and torch computes without the GIL, so
    the two overlap on two cores, and the model's thread no longer waits for the disk and the decoder (an
    archive of 256² scenes spent a quarter of the model thread's time opening and reading, measured). Items
    are pulled from ``work`` in this thread, in order, one ahead of the one predicted; results come back in
    the same order. At most two blocks' pixels are held at once.
    """

    parallelism = 1
    readers = 1

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self.norm = worker.spec.normalisation()

    @property
    def gpu(self) -> bool:
        return self.worker.device.type == "cuda"

    def run(
        self, work: Iterable[WorkItem], options: PredictOptions
    ) -> Iterator[tuple[WorkItem, BlockResult | Exception]]:
        def read(item: WorkItem) -> BlockPixels:
            return read_block(item.scene, item.block, self.norm, options.pad_mode)

        items = iter(work)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoseg-read") as reader:
            upcoming = next(items, None)
            ahead = None if upcoming is None else (upcoming, reader.submit(read, upcoming))
            while ahead is not None:
                item, pixels = ahead
                upcoming = next(items, None)
                ahead = None if upcoming is None else (upcoming, reader.submit(read, upcoming))
                try:
                    output: BlockResult | Exception = self.worker.run(item.blocks, item.block, pixels.result(), options)
                except Exception as exc:  # this scene's problem (a corrupt block, ...): the stream goes on
                    output = exc
                del pixels  # the block's pixels go before the next block's are read
                yield item, output
