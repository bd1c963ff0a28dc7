"""Predict one scene: windows -> read -> predict -> stitch -> write, with any tile executor.

The executor decides *where* tiles are read and predicted (in this process, or on Ray actors); this module
owns *what* happens to a scene, so both paths produce the same bytes.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from geoseg.inference.reader import Normalisation, TileBatch, read_tiles
from geoseg.io.raster import PadMode, SceneInfo
from geoseg.io.writer import ClassRasterWriter, ProbabilityRasterWriter
from geoseg.stitch import Stitcher, TileResult
from geoseg.tiling import Tile, TileGrid

if TYPE_CHECKING:  # torch stays out of Ray reader processes, which import this module through the executor
    from geoseg.bundle import BundleSpec
    from geoseg.inference.predictor import Predictor

# Strides that are multiples of the models' total down-sampling keep max-pool and transposed-conv grids of
# every tile aligned with those of the whole image, so overlapping tiles compute the same features.
MODEL_STRIDE = 32


@dataclass(frozen=True)
class PredictOptions:
    """How scenes are cut into tiles and batched (the CLI's --tile/--halo/--overlap/--batch-size)."""

    tile: int = 256
    halo: int = 16
    overlap: int = 16
    batch_size: int = 8
    pad_mode: PadMode = "reflect"
    probabilities: bool = False
    vector_format: str | None = None  # also polygonize each class raster into <scene>.<format>

    def effective_overlap(self) -> int:
        """The smallest overlap >= the requested one that makes the stride a multiple of MODEL_STRIDE.

        Falls back to the requested overlap when no such overlap fits in the core.
        """
        core = self.tile - 2 * self.halo
        aligned = self.overlap + (core - self.overlap) % MODEL_STRIDE
        return aligned if core >= 2 * aligned and core - aligned > 0 else self.overlap

    def grid(self, scene: SceneInfo) -> TileGrid:
        return TileGrid(scene.width, scene.height, self.tile, self.halo, self.effective_overlap())


@dataclass
class BatchOutput:
    """What an executor hands back per batch: the tiles and how long reading and the model took."""

    results: list[TileResult]
    read_seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass
class SceneReport:
    """What happened to one scene; serialised into report.json and the job manifest."""

    scene: str
    source: str
    status: str = "pending"
    output: str | None = None
    probabilities: str | None = None
    vectors: str | None = None
    sha256: str | None = None
    tiles: int = 0
    tiles_run: int = 0
    tiles_skipped_nodata: int = 0
    pixels: int = 0
    area_km2: float = 0.0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seam_pixels: int = 0
    seam_disagreement: float | None = None
    classes_found: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class WorkItem:
    """One batch of one scene, as handed to an executor. ``key`` names the scene in a stream of scenes."""

    key: str
    scene: SceneInfo
    tiles: Sequence[Tile]


class TileExecutor(Protocol):
    """Reads and predicts batches of tiles, yielding results in any order."""

    @property
    def parallelism(self) -> int:
        """How many batches it runs at once (its model workers)."""
        ...

    def run(self, work: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, BatchOutput | Exception]]:
        """Read and predict every item; yield each with its output, or with the error it raised.

        An item's error concerns its scene only: the executor carries on with the rest. Errors of the
        executor itself (no model worker left) are raised.
        """
        ...


def predict_batch(predictor: Predictor, batch: TileBatch) -> BatchOutput:
    """Run the model on the tiles that hold valid pixels; all-nodata tiles skip it."""
    started = time.perf_counter()
    runnable = batch.runnable
    probs = iter(predictor.predict(batch.data[runnable])) if runnable.any() else iter(())
    # Only the core of a tile is ever stitched: crop here so the halo never travels back to the driver.
    results = [
        TileResult(
            index, np.ascontiguousarray(next(probs)[:, rows, cols]) if runnable[i] else None, batch.valid[i][rows, cols]
        )
        for i, (index, (rows, cols)) in enumerate(zip(batch.indices, batch.cores, strict=True))
    ]
    return BatchOutput(results, batch.read_seconds, time.perf_counter() - started)


class LocalExecutor:
    """Everything in this process: for tests, notebooks and single-machine debugging."""

    def __init__(
        self, predictor: Predictor, norm: Normalisation, options: PredictOptions, nodata: float | None = None
    ) -> None:
        self.predictor, self.norm, self.options, self.nodata = predictor, norm, options, nodata

    @property
    def parallelism(self) -> int:
        return 1

    def run(self, work: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, BatchOutput | Exception]]:
        for item in work:
            try:
                batch = read_tiles(item.scene, item.tiles, self.norm, self.options.pad_mode, self.nodata)
                output: BatchOutput | Exception = predict_batch(self.predictor, batch)
            except Exception as exc:  # this scene's problem (a corrupt block, ...): the stream goes on
                output = exc
            yield item, output


def batched(grid: TileGrid, size: int, parallel: int = 1) -> Iterator[Sequence[Tile]]:
    """The grid's tiles in order, in batches of ``size``; with ``parallel`` workers the tail is cut finer.

    Each worker has about two batches queued, so when the last batch is handed out the workers can differ by a
    whole batch of remaining work, and all but one wait through it when nothing follows (a single scene, the
    last scene of a job: ~5 % of a 4 Mpx scene on two CPU workers, measured). Cutting the last
    ``2 x parallel`` batches' tiles into half-size batches halves that wait. Batch composition never changes
    the output bytes.
    """
    end = len(grid)
    tail = min(end, 2 * parallel * size) if parallel > 1 else 0
    for start in range(0, end - tail, size):
        yield grid[start : min(start + size, end - tail)]
    step = max(1, size // 2)
    for start in range(end - tail, end, step):
        yield grid[start : start + step]


def predict_scene(
    scene: SceneInfo,
    spec: BundleSpec,
    executor: TileExecutor,
    out_path: Path,
    options: PredictOptions,
    progress: Callable[[int], None] | None = None,
) -> SceneReport:
    """Predict ``scene`` into a class COG at ``out_path`` (and ``<stem>_probabilities.tif`` when asked).

    Raises GeoSegError for a scene that cannot work; nothing is left under the output names then.
    """
    return stitch_scene(scene, spec, executor, out_path, options, progress).finish()


def stitch_scene(
    scene: SceneInfo,
    spec: BundleSpec,
    executor: TileExecutor,
    out_path: Path,
    options: PredictOptions,
    progress: Callable[[int], None] | None = None,
) -> SceneStitch:
    """Run every tile of ``scene`` through ``executor`` into the staging files; :meth:`SceneStitch.finish`
    publishes them. On any error the staging files are removed and the error propagates."""
    [(_, outcome)] = list(stitch_scenes([(scene.name, scene, out_path)], spec, executor, options, progress))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def stitch_scenes(
    targets: Iterable[tuple[str, SceneInfo, Path]],
    spec: BundleSpec,
    executor: TileExecutor,
    options: PredictOptions,
    progress: Callable[[int], None] | None = None,
) -> Generator[tuple[str, SceneStitch | Exception], None, None]:
    """Stream ``(key, scene, out_path)`` targets through one executor; yield each key with its stitched scene,
    or with the error that failed it, as each completes.

    The batches of all scenes form one stream, so the workers take the next scene's first batches while the
    last ones of a scene are still running: no worker idles at scene boundaries, which in an archive of small
    scenes (chips of a few hundred pixels) would otherwise cost a large share of the time. A scene that fails
    is dropped from the stream (its staging files removed, no more of its batches sent); the others go on.
    Scenes open at once are those with batches in flight, so at most two for scenes larger than the
    executor's queue.
    """
    open_scenes: dict[str, SceneStitch] = {}
    settled: deque[tuple[str, SceneStitch | Exception]] = deque()

    def work() -> Iterator[WorkItem]:
        remaining = iter(targets)
        following = next(remaining, None)
        while following is not None:
            (key, scene, out_path), following = following, next(remaining, None)
            try:
                open_scenes[key] = SceneStitch(scene, spec, out_path, options)
            except Exception as exc:  # bad bands, unwritable output folder, ...
                settled.append((key, exc))
                continue
            # Only the last scene needs a finer tail: the next scene's batches fill the workers otherwise.
            parallel = executor.parallelism if following is None else 1
            for tiles in batched(open_scenes[key].grid, options.batch_size, parallel):
                if key not in open_scenes:
                    break  # the scene failed meanwhile: send no more of it
                yield WorkItem(key, scene, tiles)

    def drop(key: str, error: Exception) -> None:
        open_scenes.pop(key).abort()
        settled.append((key, error))

    try:
        for item, output in executor.run(work()):
            current = open_scenes.get(item.key)
            if current is None:
                pass  # a batch of a scene that already failed
            elif isinstance(output, Exception):
                drop(item.key, output)
            else:
                try:
                    current.add(output)
                except Exception as exc:  # the staging file could not be written (disk full, ...)
                    drop(item.key, exc)
                else:
                    if progress:
                        progress(len(output.results))
                    if current.done:
                        settled.append((item.key, open_scenes.pop(item.key)))
            while settled:
                yield settled.popleft()
        for key, current in list(open_scenes.items()):
            stats = current.stats
            missing = f"executor returned {stats.tiles_run + stats.tiles_skipped} of {len(current.grid)} tiles"
            drop(key, RuntimeError(f"{current.scene.path}: {missing}"))
        while settled:
            yield settled.popleft()
    finally:  # an executor failure or a consumer that stops early: no staging file is left behind
        for current in open_scenes.values():
            current.abort()


class SceneStitch:
    """One scene from its first batch to its published files: staging writers, stitcher, read/model times.

    Opened when the scene enters the stream; once :attr:`done`, :meth:`finish` publishes it. Publishing
    (COG build, optional polygons) needs no model, so an archive job runs :meth:`finish` in a background
    thread while the actors start on the next scene instead of idling through it; :meth:`abort` removes the
    staging files instead.
    """

    def __init__(self, scene: SceneInfo, spec: BundleSpec, out_path: Path, options: PredictOptions) -> None:
        Normalisation.from_spec(spec).check(scene)
        self.started = time.perf_counter()
        self.scene, self.spec, self.options, self.out_path = scene, spec, options, out_path
        self.grid = options.grid(scene)
        class_ids = np.array([c.id for c in spec.classes])
        names = [c.name for c in spec.classes]
        self.prob_path = out_path.with_name(f"{out_path.stem}_probabilities.tif") if options.probabilities else None
        self.read_seconds = self.model_seconds = 0.0
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(
                ClassRasterWriter(out_path, scene, class_ids.tolist(), names, [c.color for c in spec.classes])
            )
            prob_writer = (
                stack.enter_context(ProbabilityRasterWriter(self.prob_path, scene, names)) if self.prob_path else None
            )
            self._stitcher: Stitcher | None = Stitcher(self.grid, class_ids, writer, prob_writer)
            self.writers = stack.pop_all()  # open until finish() or abort()
        self.stats = self._stitcher.stats

    @property
    def done(self) -> bool:
        return self._stitcher is None

    def add(self, output: BatchOutput) -> None:
        self.read_seconds += output.read_seconds
        self.model_seconds += output.model_seconds
        if self._stitcher is None:
            return  # already complete: duplicate tiles of a retried batch
        for result in output.results:
            self._stitcher.add(result)
        if self._stitcher.done:
            self._stitcher = None  # frees its band: a scene waiting to be published holds none

    def abort(self) -> None:
        """Remove the staging files."""
        aborted = RuntimeError("scene aborted")
        self.writers.__exit__(type(aborted), aborted, None)  # the writers' error path: drop, never publish

    def finish(self) -> SceneReport:
        """Build the COGs and move them into place (then polygons when asked); returns the scene's report.

        If a COG cannot be built, every output of the scene is removed and the error propagates.
        """
        close_started = time.perf_counter()
        self.writers.close()  # a failing close hands the error to the writers still open: they abort
        write_s = self.stats.write_seconds + time.perf_counter() - close_started
        vectorize_started = time.perf_counter()
        vectors = None
        if self.options.vector_format:
            from geoseg.vectorize_job import VectorizeOptions, vectorize_raster

            vectors = self.out_path.with_suffix(f".{self.options.vector_format}")
            vectorize_raster(self.out_path, [vectors], VectorizeOptions(fmt=self.options.vector_format), workers=1)
        stats, scene = self.stats, self.scene
        by_id = {c.id: c.name for c in self.spec.classes}
        return SceneReport(
            scene=scene.name,
            source=str(scene.path),
            status="ok",
            output=str(self.out_path),
            probabilities=str(self.prob_path) if self.prob_path else None,
            vectors=str(vectors) if vectors else None,
            tiles=len(self.grid),
            tiles_run=stats.tiles_run,
            tiles_skipped_nodata=stats.tiles_skipped,
            pixels=scene.width * scene.height,
            area_km2=scene.width * scene.height * scene.pixel_area_m2 / 1e6,
            seconds=round(time.perf_counter() - self.started, 3),
            stage_seconds={
                "read": round(self.read_seconds, 3),
                "model": round(self.model_seconds, 3),
                "stitch": round(stats.stitch_seconds, 3),
                "write": round(write_s, 3),
                "vectorize": round(time.perf_counter() - vectorize_started, 3),
            },
            seam_pixels=stats.seam_pixels,
            seam_disagreement=None if stats.seam_disagreement is None else round(stats.seam_disagreement, 6),
            classes_found={by_id[c]: n for c, n in sorted(stats.class_pixels.items())},
        )
