"""The driver's side of prediction: hand out blocks, write the uint8 results, publish finished scenes.

The driver never touches a float pixel. It walks each scene's block grid, hands the blocks to an executor
(which reads and predicts them elsewhere), writes the uint8 block it gets back into the scene's staging
GeoTIFF (one compressed internal tile per block, written once), and when a scene's last block is in, hands
the staging files to :func:`publish_scene` (COG build, polygons), which needs neither the model nor driver
state and so runs beside the workers. Every block of every scene is one stream through one executor: no
worker idles at scene boundaries.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.inference.executor import BlockExecutor, WorkItem
from geoseg.inference.options import PredictOptions
from geoseg.inference.reader import column_band_blocks
from geoseg.inference.report import SceneReport, Status
from geoseg.inference.result import BlockResult
from geoseg.inference.tiling import BlockGrid
from geoseg.io.raster import SceneInfo, keep_gdal_environment
from geoseg.io.styles import ClassStyle, dress_class_raster
from geoseg.io.writer import class_staging, probability_staging, publish_cog, temp_sibling
from geoseg.vector.polygonize import VectorizeOptions

if TYPE_CHECKING:  # torch stays out of processes that only read or publish
    from geoseg.bundle import BundleSpec

T = TypeVar("T")
MIN_STRIPE_ROWS = 4  # block rows per reader stripe: each stripe boundary decodes one row of source blocks twice


def stripes(block_rows: int, readers: int) -> list[range]:
    """Contiguous runs of block rows, one per reader: each reader decodes its run's source blocks once."""
    count = max(1, min(readers, block_rows // MIN_STRIPE_ROWS))
    bounds = [round(i * block_rows / count) for i in range(count + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def interleave(runs: Iterable[Iterator[T]]) -> Iterator[T]:
    """One item of each run in turn, dropping runs as they end (the order in which a scene's stripes stream)."""
    live = list(runs)
    while live:
        for current in list(live):
            item = next(current, None)
            if item is None:
                live.remove(current)
            else:
                yield item


def scene_work(key: str, scene: SceneInfo, blocks: BlockGrid, readers: int) -> Iterator[WorkItem]:
    """The blocks of a scene: each reader's stripe (a run of block rows) in vertical bands of block columns,
    each band in raster order (what the reader's cache is sized for, :func:`geoseg.inference.reader.
    block_cache_bytes`); stripes interleaved so all readers start at once."""
    band = column_band_blocks(blocks.size)

    def run(stripe: int, rows: range) -> Iterator[WorkItem]:
        for first in range(0, blocks.cols, band):
            for row in rows:
                for col in range(first, min(first + band, blocks.cols)):
                    yield WorkItem(key, scene, blocks, blocks[row * blocks.cols + col], stripe)

    return interleave(run(s, rows) for s, rows in enumerate(stripes(blocks.rows, readers)))


@dataclass
class HeldBlock:
    """The one block of a one-block scene, held in memory instead of written to staging files by the driver:
    whoever publishes the scene builds its COG from a memory raster of it (:meth:`StagedScene.sources`), so an
    archive of small scenes pays no staging file (its creation, write, close and reopen: 2-3 ms a scene,
    measured; more than the model of a 256² scene on a GPU). Same pixels and metadata, so the same COG."""

    scene: SceneInfo
    classes: list[tuple[int, str, tuple[int, int, int]]]  # (id, name, colour)
    tile: int
    window: Window
    pixels: np.ndarray
    probabilities: np.ndarray | None


@dataclass
class StagedScene:
    """A scene whose blocks are all written: its staging files and where they go. Picklable, so it can be
    published in another process. A one-block scene may come with its block in ``held`` instead of files."""

    classes: tuple[Path, Path]  # (staging, final)
    probabilities: tuple[Path, Path] | None
    vectors: VectorizeOptions | None
    held: HeldBlock | None = None

    @contextlib.contextmanager
    def sources(self) -> Iterator[tuple[Path | DatasetWriter, Path | DatasetWriter | None]]:
        """What the COGs are built from: the staging files, or a held block as memory rasters."""
        held = self.held
        if held is None:
            yield self.classes[0], self.probabilities[0] if self.probabilities else None
            return
        ids, names, colors = (list(column) for column in zip(*held.classes, strict=True))
        with contextlib.ExitStack() as stack:
            classes = class_staging(self.classes[1], held.scene, ids, names, colors, held.tile, memory=True)
            stack.callback(classes.abort)
            classes.write(held.window, held.pixels)
            probabilities = None
            if self.probabilities is not None and held.probabilities is not None:
                probabilities = probability_staging(self.probabilities[1], held.scene, names, held.tile, memory=True)
                stack.callback(probabilities.abort)
                probabilities.write(held.window, held.probabilities)
            yield classes.dataset, None if probabilities is None else probabilities.dataset


@dataclass
class Published:
    outputs: dict[str, str]
    sha256: str
    write_seconds: float
    vectorize_seconds: float
    vectors_error: str | None = None  # the polygons failed; the rasters are published all the same


def publish_scene(staged: StagedScene) -> Published:
    """Build the COGs, move them into place, polygonize when asked, hash the class raster.

    If a raster fails, every output of the scene is removed and the error propagates. If only the polygons
    fail (a minimum mapping unit larger than the scene, a full disk while writing them), the finished rasters
    stay published and the cause is returned in ``vectors_error``: an hour of model time is never thrown away
    for a product that a rerun makes from the class raster alone.
    """
    started = time.perf_counter()
    keep_gdal_environment()
    final_paths = [staged.classes[1]] + ([staged.probabilities[1]] if staged.probabilities else [])
    try:
        with staged.sources() as (classes, probabilities):
            publish_cog(classes, staged.classes[1], "nearest")
            if staged.probabilities and probabilities is not None:
                publish_cog(probabilities, staged.probabilities[1], "average")
        held = None
        if staged.held is not None:
            held = ([ClassStyle(*c) for c in staged.held.classes], staged.held.pixels)
        final_paths += dress_class_raster(staged.classes[1], held)  # <scene>.png, category names, a QGIS style
        digest = file_sha256(staged.classes[1])
    except BaseException:
        for path in final_paths:
            path.unlink(missing_ok=True)
        staged.classes[0].unlink(missing_ok=True)
        if staged.probabilities:
            staged.probabilities[0].unlink(missing_ok=True)
        raise
    write_seconds = time.perf_counter() - started
    started = time.perf_counter()
    outputs = {"output": str(staged.classes[1])}
    if staged.probabilities:
        outputs["probabilities"] = str(staged.probabilities[1])
    vectors_error = None
    if staged.vectors is not None:
        try:
            outputs["vectors"] = str(polygonize_scene(staged.classes[1], staged.vectors))
        except Exception as exc:  # the writer removed its own staging; the rasters stay
            vectors_error = polygons_error(exc, staged.classes[1])
    return Published(outputs, digest, write_seconds, time.perf_counter() - started, vectors_error)


def polygons_error(exc: BaseException, class_raster: Path) -> str:
    """The one line a scene's report gives for polygons that failed (its rasters are published)."""
    cause = exc.cause if isinstance(exc, GeoSegError) else f"{type(exc).__name__}: {exc}"
    return f"polygons failed, class raster kept ({class_raster}): {cause}"


def polygonize_scene(class_raster: Path, options: VectorizeOptions) -> Path:
    """Polygonize a published class raster into its polygons beside it (``vector.formats.polygons_beside``), in
    this process."""
    from geoseg.vector.formats import polygons_beside
    from geoseg.vector.job import vectorize_raster

    vectors = polygons_beside(class_raster, options.fmt or "gpkg")
    vectorize_raster(class_raster, [vectors], options, workers=1)
    return vectors


def scene_grid(scene: SceneInfo) -> dict[str, Any]:
    """A scene's grid as its report records it: CRS (EPSG code or WKT), GDAL geotransform, size."""
    return {
        "crs": scene.crs.to_string(),
        "transform": list(scene.transform.to_gdal()),
        "width": scene.width,
        "height": scene.height,
    }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Counts:
    tiles_run: int = 0
    tiles_skipped: int = 0
    seam_pixels: int = 0
    seam_disagreements: int = 0
    read_seconds: float = 0.0
    model_seconds: float = 0.0
    write_seconds: float = 0.0
    masked_pixels: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class SceneRun:
    """One scene on the driver, from its first block to its staged files (then :meth:`report`).

    Blocks may arrive in any order and more than once (a retried batch): each is written once, at its window.
    """

    def __init__(self, scene: SceneInfo, spec: BundleSpec, out_path: Path, options: PredictOptions) -> None:
        spec.normalisation().check(scene)
        self.started = time.perf_counter()
        self.scene, self.spec, self.options, self.out_path = scene, spec, options, out_path
        self.blocks = options.blocks(scene)
        self.prob_path = out_path.with_name(f"{out_path.stem}_probabilities.tif") if options.probabilities else None
        class_ids = [c.id for c in spec.classes]
        names = [c.name for c in spec.classes]
        self._missing = set(range(len(self.blocks)))
        self.counts = _Counts(class_pixels=np.zeros(len(class_ids), np.int64))
        self._held: HeldBlock | None = None
        if len(self.blocks) == 1:  # written by whoever publishes it (see HeldBlock)
            self._class_table = [(c.id, c.name, c.color) for c in spec.classes]
            self.classes = self.probabilities = None
            self._writers = contextlib.ExitStack()
            return
        with contextlib.ExitStack() as stack:
            tile = self.blocks.size
            self.classes = stack.enter_context(
                class_staging(out_path, scene, class_ids, names, [c.color for c in spec.classes], tile)
            )
            self.probabilities = (
                stack.enter_context(probability_staging(self.prob_path, scene, names, tile)) if self.prob_path else None
            )
            self._writers = stack.pop_all()  # open until stage() or abort()

    @property
    def done(self) -> bool:
        return not self._missing

    def add(self, result: BlockResult) -> None:
        """Write one finished block (a duplicate of a retried block is ignored)."""
        if result.index not in self._missing:
            return
        started = time.perf_counter()
        window = self.blocks[result.index].output
        if self.classes is None:  # a one-block scene
            tile, probabilities = self.blocks.size, result.probabilities if self.prob_path else None
            self._held = HeldBlock(self.scene, self._class_table, tile, window, result.classes, probabilities)
        else:
            self.classes.write(window, result.classes)
        if self.probabilities is not None and result.probabilities is not None:
            self.probabilities.write(window, result.probabilities)
        c = self.counts
        c.write_seconds += time.perf_counter() - started
        c.tiles_run += result.tiles_run
        c.tiles_skipped += result.tiles_skipped
        c.seam_pixels += result.seam_pixels
        c.seam_disagreements += result.seam_disagreements
        c.read_seconds += result.read_seconds
        c.model_seconds += result.model_seconds
        c.class_pixels += result.class_pixels
        c.masked_pixels += result.masked_pixels
        self._missing.discard(result.index)

    def abort(self) -> None:
        """Remove the staging files."""
        aborted = RuntimeError("scene aborted")
        self._writers.__exit__(type(aborted), aborted, None)  # the writers' error path: drop, never publish

    def stage(self) -> StagedScene:
        """Close the staging files (all blocks are in); the result is ready for :func:`publish_scene`."""
        started = time.perf_counter()
        self._writers.close()  # a failing close hands the error to the writers still open: they abort
        self.counts.write_seconds += time.perf_counter() - started
        if self.classes is None:  # no staging file: names that no file has (sources() builds the rasters)
            unwritten = temp_sibling(self.out_path)
            probabilities = (unwritten, self.prob_path) if self.prob_path else None
            return StagedScene((unwritten, self.out_path), probabilities, self.options.vectors, self._held)
        probabilities = (self.probabilities.staging, self.prob_path) if self.probabilities and self.prob_path else None
        return StagedScene((self.classes.staging, self.out_path), probabilities, self.options.vectors)

    def report(self, published: Published) -> SceneReport:
        c, scene = self.counts, self.scene
        by_index = [cls.name for cls in self.spec.classes]
        seam = c.seam_disagreements / c.seam_pixels if c.seam_pixels else None
        pixels = scene.width * scene.height
        # A scene its mask hides entirely is finished, with nothing in it: "empty", not failed.
        empty = scene.mask is not None and c.masked_pixels > 0 and not c.class_pixels.any()
        return SceneReport(
            scene=scene.name,
            source=str(scene.path),
            status=Status.EMPTY if empty else Status.OK,
            output=published.outputs.get("output"),
            probabilities=published.outputs.get("probabilities"),
            vectors=published.outputs.get("vectors"),
            sha256=published.sha256,
            tiles=len(self.blocks.grid),
            tiles_run=c.tiles_run,
            tiles_skipped_nodata=c.tiles_skipped,
            blocks=len(self.blocks),
            pixels=pixels,
            area_km2=pixels * scene.pixel_area_m2 / 1e6,
            seconds=round(time.perf_counter() - self.started, 3),
            stage_seconds={
                "read": round(c.read_seconds, 3),
                "model": round(c.model_seconds, 3),
                "write": round(c.write_seconds + published.write_seconds, 3),
                "vectorize": round(published.vectorize_seconds, 3),
            },
            seam_pixels=c.seam_pixels,
            seam_disagreement=None if seam is None else round(seam, 6),
            classes_found={by_index[i]: int(n) for i, n in enumerate(c.class_pixels) if n},
            error=published.vectors_error,
            grid=scene_grid(scene),
            masked_pixels=c.masked_pixels if scene.mask is not None else None,
            masked_share=round(c.masked_pixels / pixels, 6) if scene.mask is not None else None,
        )

    def finish(self) -> SceneReport:
        """Stage and publish here, in this thread (tests, notebooks)."""
        return self.report(publish_scene(self.stage()))


def run_scenes(
    targets: Iterable[tuple[str, SceneInfo, Path]],
    spec: BundleSpec,
    executor: BlockExecutor,
    options: PredictOptions,
    progress: Callable[[int], None] | None = None,
) -> Generator[tuple[str, SceneRun | Exception], None, None]:
    """Stream ``(key, scene, out_path)`` targets through one executor; yield each key with its finished
    :class:`SceneRun` (all blocks written, not yet published), or with the error that failed it.

    ``options`` must be resolved. The blocks of all scenes form one stream, so the workers take the next
    scene's first blocks while the last ones of a scene are still running. A scene that fails is dropped from
    the stream (its staging files removed, no more of its blocks sent); the others go on. ``progress`` is
    called with the pixels of every finished block.
    """
    open_scenes: dict[str, SceneRun] = {}
    settled: deque[tuple[str, SceneRun | Exception]] = deque()

    def work() -> Iterator[WorkItem]:
        for key, scene, out_path in targets:
            try:
                open_scenes[key] = SceneRun(scene, spec, out_path, options)
            except Exception as exc:  # bad bands, unwritable output folder, ...
                settled.append((key, exc))
                continue
            for item in scene_work(key, scene, open_scenes[key].blocks, executor.readers):
                if key not in open_scenes:
                    break  # the scene failed meanwhile: send no more of it
                yield item

    def drop(key: str, error: Exception) -> None:
        open_scenes.pop(key).abort()
        settled.append((key, error))

    try:
        for item, output in executor.run(work(), options):
            current = open_scenes.get(item.key)
            if current is None:
                pass  # a block of a scene that already failed
            elif isinstance(output, Exception):
                drop(item.key, output)
            else:
                try:
                    current.add(output)
                except Exception as exc:  # the staging file could not be written (disk full, ...)
                    drop(item.key, exc)
                else:
                    if progress:
                        progress(int(item.block.output.width * item.block.output.height))
                    if current.done:
                        settled.append((item.key, open_scenes.pop(item.key)))
            while settled:
                yield settled.popleft()
        for key, current in list(open_scenes.items()):
            missing = f"executor returned {len(current.blocks) - len(current._missing)} of {len(current.blocks)} blocks"
            drop(key, RuntimeError(f"{current.scene.path}: {missing}"))
        while settled:
            yield settled.popleft()
    finally:  # an executor failure or a consumer that stops early: no staging file is left behind
        for current in open_scenes.values():
            current.abort()


def run_scene(
    scene: SceneInfo, spec: BundleSpec, executor: BlockExecutor, out_path: Path, options: PredictOptions
) -> SceneRun:
    """Every block of one scene through ``executor`` into its staging files; :meth:`SceneRun.finish` publishes.

    On any error the staging files are removed and the error propagates.
    """
    [(_, outcome)] = list(run_scenes([(scene.name, scene, out_path)], spec, executor, options))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def predict_scene(
    scene: SceneInfo, spec: BundleSpec, executor: BlockExecutor, out_path: Path, options: PredictOptions
) -> SceneReport:
    """Predict ``scene`` into a class COG at ``out_path`` (and ``<stem>_probabilities.tif`` when asked), here.

    ``options`` may leave tiling to the model (``None`` fields); nothing is left under the output names when
    the scene fails.
    """
    resolved = options.resolved(spec.geometry(), executor.gpu)
    return run_scene(scene, spec, executor, out_path, resolved).finish()
