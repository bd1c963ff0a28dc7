"""Predict one scene: windows -> read -> predict -> stitch -> write, with any tile executor.

The executor decides *where* tiles are read and predicted (in this process, or on Ray actors); this module
owns *what* happens to a scene, so both paths produce the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from geoseg.bundle import BundleSpec
from geoseg.inference.predictor import Predictor
from geoseg.inference.reader import Normalisation, TileBatch, read_tiles
from geoseg.io.raster import PadMode, SceneInfo
from geoseg.io.writer import ClassRasterWriter
from geoseg.stitch import Stitcher, TileResult
from geoseg.tiling import Tile, TileGrid


@dataclass(frozen=True)
class PredictOptions:
    """How scenes are cut into tiles and batched (the CLI's --tile/--halo/--overlap/--batch-size)."""

    tile: int = 256
    halo: int = 16
    overlap: int = 16
    batch_size: int = 8
    pad_mode: PadMode = "reflect"

    def grid(self, scene: SceneInfo) -> TileGrid:
        return TileGrid(scene.width, scene.height, self.tile, self.halo, self.overlap)


@dataclass
class SceneReport:
    """What happened to one scene; serialised into report.json."""

    scene: str
    source: str
    status: str = "pending"
    output: str | None = None
    tiles: int = 0
    tiles_run: int = 0
    tiles_skipped_nodata: int = 0
    pixels: int = 0
    area_km2: float = 0.0
    seconds: float = 0.0
    classes_found: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class TileExecutor(Protocol):
    """Reads and predicts batches of tiles, yielding results in any order."""

    def run(self, scene: SceneInfo, batches: Iterable[Sequence[Tile]]) -> Iterator[list[TileResult]]: ...


def predict_batch(predictor: Predictor, batch: TileBatch) -> list[TileResult]:
    """Run the model on the tiles that hold valid pixels; all-nodata tiles skip it."""
    runnable = batch.runnable
    probs = predictor.predict(batch.data[runnable]) if runnable.any() else None
    results, k = [], 0
    for i, index in enumerate(batch.indices):
        if runnable[i]:
            assert probs is not None
            results.append(TileResult(index, probs[k], batch.valid[i]))
            k += 1
        else:
            results.append(TileResult(index, None, batch.valid[i]))
    return results


class LocalExecutor:
    """Everything in this process: for tests, notebooks and single-machine debugging."""

    def __init__(
        self, predictor: Predictor, norm: Normalisation, options: PredictOptions, nodata: float | None = None
    ) -> None:
        self.predictor, self.norm, self.options, self.nodata = predictor, norm, options, nodata

    def run(self, scene: SceneInfo, batches: Iterable[Sequence[Tile]]) -> Iterator[list[TileResult]]:
        for tiles in batches:
            batch = read_tiles(scene, tiles, self.norm, self.options.pad_mode, self.nodata)
            yield predict_batch(self.predictor, batch)


def batched(grid: TileGrid, size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(grid), size):
        yield grid[start : start + size]


def predict_scene(
    scene: SceneInfo, spec: BundleSpec, executor: TileExecutor, out_path: Path, options: PredictOptions
) -> SceneReport:
    """Predict ``scene`` into a class COG at ``out_path``; raises GeoSegError for a scene that cannot work."""
    Normalisation.from_spec(spec).check(scene)
    started = time.perf_counter()
    grid = options.grid(scene)
    class_ids = np.array([c.id for c in spec.classes])
    with ClassRasterWriter(
        out_path, scene, class_ids.tolist(), [c.name for c in spec.classes], [c.color for c in spec.classes]
    ) as writer:
        stitcher = Stitcher(grid, class_ids, writer)
        for results in executor.run(scene, batched(grid, options.batch_size)):
            for result in results:
                stitcher.add(result)
        if not stitcher.done:
            raise RuntimeError(f"{scene.path}: executor returned {stitcher.stats.tiles_run} of {len(grid)} tiles")
    names = {c.id: c.name for c in spec.classes}
    return SceneReport(
        scene=scene.name,
        source=str(scene.path),
        status="ok",
        output=str(out_path),
        tiles=len(grid),
        tiles_run=stitcher.stats.tiles_run,
        tiles_skipped_nodata=stitcher.stats.tiles_skipped,
        pixels=scene.width * scene.height,
        area_km2=scene.width * scene.height * scene.pixel_area_m2 / 1e6,
        seconds=round(time.perf_counter() - started, 3),
        classes_found={names[c]: n for c, n in sorted(stitcher.stats.class_pixels.items())},
    )
