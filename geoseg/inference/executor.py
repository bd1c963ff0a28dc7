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
