"""Finished predict jobs made without a model, for the mosaic tests: each scene's class raster, probability
raster and manifest record written as ``geoseg predict`` writes them (same writers, same record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geoseg.inference.manifest import Manifest
from geoseg.inference.report import SceneReport, Status
from geoseg.inference.scene import file_sha256, scene_grid
from geoseg.io.raster import SceneInfo
from geoseg.io.styles import style_class_raster
from geoseg.io.writer import (
    CLASS_NODATA,
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    class_staging,
    probability_staging,
    publish_cog,
)

CLASSES = {1: "water", 2: "forest", 3: "crops"}
COLOURS = {1: (0, 0, 255), 2: (0, 128, 0), 3: (255, 200, 0)}


@dataclass
class FakeScene:
    name: str
    probabilities: np.ndarray  # [classes, h, w] float in [0, 1]; NaN where the scene has no data (masked)
    transform: Affine
    crs: str = "EPSG:32617"
    acquired: str | None = None


def scene_arrays(probabilities: np.ndarray, class_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The class raster and probability raster bytes predict writes for these probabilities."""
    valid = ~np.isnan(probabilities).any(axis=0)
    p = np.nan_to_num(probabilities)
    classes = np.where(valid, np.asarray(class_ids, np.uint8)[p.argmax(axis=0)], CLASS_NODATA).astype(np.uint8)
    quantised = np.round(p * PROBABILITY_SCALE).astype(np.uint8)
    confidence = quantised.max(axis=0)
    stored = np.concatenate([quantised, confidence[None]])
    stored[:, ~valid] = PROBABILITY_NODATA
    return classes, stored


def write_job(
    folder: Path, scenes: list[FakeScene], probabilities: bool = True, names: dict[int, str] = CLASSES
) -> Path:
    """A finished predict job folder holding ``scenes`` (classes named ``names``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = sorted(names)
    manifest = Manifest(folder)
    for scene in scenes:
        _, h, w = scene.probabilities.shape
        info = SceneInfo(scene.name, w, h, 1, "uint8", CRS.from_user_input(scene.crs), scene.transform, None, (64, 64))
        classes, stored = scene_arrays(scene.probabilities, ids)
        out = folder / f"{scene.name}.tif"
        colours = [COLOURS.get(i, (128, 128, 128)) for i in ids]
        with class_staging(out, info, ids, [names[i] for i in ids], colours, 64) as staging:
            staging.write(_whole(h, w), classes)
        publish_cog(staging.staging, out, "nearest")
        style_class_raster(out)
        prob_path = None
        if probabilities:
            prob_path = folder / f"{scene.name}_probabilities.tif"
            with probability_staging(prob_path, info, [names[i] for i in ids], 64) as pstaging:
                pstaging.write(_whole(h, w), stored)
            publish_cog(pstaging.staging, prob_path, "average")
        report = SceneReport(
            scene=scene.name,
            source=f"/archive/{scene.name}.tif",
            status=Status.OK,
            output=str(out),
            probabilities=str(prob_path) if prob_path else None,
            sha256=file_sha256(out),
            pixels=h * w,
            grid=scene_grid(info),
            acquired=scene.acquired,
        )
        manifest.record(report, "fingerprint", "identity")
    manifest.snapshot()
    return folder


def _whole(h: int, w: int):
    from rasterio.windows import Window

    return Window(0, 0, w, h)


def random_probabilities(rng: np.random.Generator, h: int, w: int, n: int = 3, smooth: int = 4) -> np.ndarray:
    """Spatially coherent class probabilities (blocks of ``smooth`` px), summing to 1."""
    coarse = rng.random((n, -(-h // smooth), -(-w // smooth))) ** 3
    p = np.repeat(np.repeat(coarse, smooth, axis=1), smooth, axis=2)[:, :h, :w]
    return p / p.sum(axis=0, keepdims=True)
