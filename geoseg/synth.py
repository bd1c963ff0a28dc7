"""Synthetic but realistic archives: georeferenced multi-band scenes with exact class labels.

Each scene is a landscape painted from vector features (fields, forest, lakes and a river, roads,
buildings), so the truth exists as polygons first; the label raster is their rasterisation, and the label
GeoPackage is the exact polygonisation of that raster. Spectra are surface reflectances typical of each
cover in blue/green/red/NIR, with per-object variation, smooth texture and sensor noise, stored as uint16
(reflectance x 10000, 0 = nodata) in tiled, compressed GeoTIFFs. Scenes alternate between UTM zones in
both hemispheres so nothing downstream can assume a single CRS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import LineString, Point, Polygon, box

from geoseg.io.guard import claim_folder, record_folder
from geoseg.io.writer import class_tags
from geoseg.vector.export import to_geodataframe, write_polygons
from geoseg.vector.polygonize import polygonize


@dataclass(frozen=True)
class LandCover:
    id: int
    name: str
    color: tuple[int, int, int]
    reflectance: tuple[float, float, float, float]  # blue, green, red, nir


CLASSES: tuple[LandCover, ...] = (
    LandCover(0, "grassland", (170, 204, 102), (0.040, 0.075, 0.055, 0.330)),
    LandCover(1, "water", (52, 101, 164), (0.065, 0.055, 0.035, 0.012)),
    LandCover(2, "forest", (28, 94, 45), (0.022, 0.040, 0.025, 0.240)),
    LandCover(3, "cropland", (230, 196, 91), (0.080, 0.110, 0.140, 0.210)),
    LandCover(4, "road", (128, 128, 128), (0.120, 0.125, 0.130, 0.150)),
    LandCover(5, "building", (204, 51, 51), (0.190, 0.180, 0.210, 0.240)),
)
BANDS = ("blue", "green", "red", "nir")
LABEL_NODATA = 255
PIXEL_SIZE = 2.0  # metres
# (EPSG, origin easting, origin northing): UTM 33N, 17N and 55S
ZONES = ((32633, 500_000.0, 5_800_000.0), (32617, 620_000.0, 3_900_000.0), (32755, 330_000.0, 6_250_000.0))


@dataclass(frozen=True)
class SynthScene:
    image: Path
    labels: Path
    polygons: Path
    epsg: int


def _blob(rng: np.random.Generator, center: tuple[float, float], radius: float) -> Polygon:
    """An irregular lobed shape: a union of overlapping discs around a centre."""
    cx, cy = center
    discs = [
        Point(cx + rng.normal(0, radius / 2), cy + rng.normal(0, radius / 2)).buffer(
            radius * rng.uniform(0.4, 0.8), quad_segs=8
        )
        for _ in range(int(rng.integers(3, 7)))
    ]
    return shapely.union_all(discs)


def _rotated_rect(rng: np.random.Generator, center: tuple[float, float], w: float, h: float) -> Polygon:
    rect = box(center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2)
    return shapely.affinity.rotate(rect, float(rng.uniform(0, 180)), origin="centroid")


def landscape(rng: np.random.Generator, extent: float) -> list[tuple[Polygon, int, float]]:
    """(geometry in scene metres, class id, brightness factor) in painting order: later wins."""

    def pt() -> tuple[float, float]:
        return float(rng.uniform(0, extent)), float(rng.uniform(0, extent))

    area_scale = (extent / 2000.0) ** 2
    shapes: list[tuple[Polygon, int, float]] = []
    for _ in range(max(1, int(14 * area_scale))):
        shapes.append(
            (_rotated_rect(rng, pt(), rng.uniform(120, 380), rng.uniform(80, 260)), 3, rng.uniform(0.85, 1.15))
        )
    for _ in range(max(1, int(5 * area_scale))):
        shapes.append((_blob(rng, pt(), rng.uniform(90, 220)), 2, rng.uniform(0.9, 1.1)))
    for _ in range(max(1, int(2 * area_scale))):
        shapes.append((_blob(rng, pt(), rng.uniform(50, 130)), 1, rng.uniform(0.9, 1.1)))
    river = LineString([(0, rng.uniform(0, extent))] + [pt() for _ in range(2)] + [(extent, rng.uniform(0, extent))])
    shapes.append((river.buffer(rng.uniform(10, 18)), 1, 1.0))
    roads = []
    for _ in range(max(2, int(3 * area_scale))):
        a, b = pt(), pt()
        direction = np.subtract(b, a) / (np.linalg.norm(np.subtract(b, a)) + 1e-9)
        line = LineString([np.subtract(a, direction * 3 * extent), np.add(a, direction * 3 * extent)])
        roads.append(line.intersection(box(0, 0, extent, extent)))
        shapes.append((line.buffer(rng.uniform(4, 7), cap_style="flat"), 4, rng.uniform(0.9, 1.1)))
    for road in roads:
        if road.is_empty:
            continue
        for _ in range(max(6, int(30 * area_scale))):
            anchor = road.interpolate(rng.uniform(0, road.length))
            offset = rng.uniform(14, 30) * rng.choice([-1, 1])
            center = (anchor.x + rng.normal(0, 4) + offset, anchor.y + rng.normal(0, 4) - offset)
            shapes.append(
                (_rotated_rect(rng, center, rng.uniform(9, 22), rng.uniform(8, 18)), 5, rng.uniform(0.85, 1.15))
            )
    return shapes


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit variance (FFT filter; no SciPy needed)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    return smooth / (smooth.std() + 1e-12)


def paint(
    shapes: list[tuple[Polygon, int, float]], shape: tuple[int, int], transform: Affine
) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and brightness factors of ``shapes`` (painting order: later wins) on a grid; grassland elsewhere."""
    labels = np.zeros(shape, dtype=np.uint8)
    brightness = np.ones(shape, dtype=np.float32)
    for geom, class_id, bright in shapes:
        burned = features.rasterize([(geom, 1)], out_shape=shape, transform=transform, dtype="uint8") > 0
        labels[burned] = class_id
        brightness[burned] = bright
    return labels, brightness


def reflectance(labels: np.ndarray, brightness: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Surface reflectance ``[band, h, w]`` (float32) of a painted landscape: each cover's spectrum, its
    object's brightness, smooth texture and sensor noise."""
    spectra = np.array([c.reflectance for c in CLASSES], dtype=np.float32)  # [class, band]
    texture = smooth_noise(rng, labels.shape, 6).astype(np.float32)
    out = np.empty((len(BANDS), *labels.shape), dtype=np.float32)
    for b in range(len(BANDS)):
        out[b] = spectra[labels, b] * brightness * (1 + 0.06 * texture)
        out[b] += rng.normal(0, 0.004, labels.shape).astype(np.float32)
    return out


def to_digital_numbers(values: np.ndarray) -> np.ndarray:
    """Reflectance as the archive stores it: x 10 000 in uint16, 0 kept for nodata."""
    return np.clip(np.round(values * 10_000), 1, 65_535).astype(np.uint16)


def make_scene(out_dir: Path, index: int, size: int, seed: int) -> SynthScene:
    """Write scene ``index`` (image, label raster, label polygons) of a ``size`` x ``size`` archive."""
    rng = np.random.default_rng([seed, index])
    epsg, east, north = ZONES[index % len(ZONES)]
    origin = (east + float(rng.integers(0, 50)) * 1000, north + float(rng.integers(0, 50)) * 1000)
    transform = Affine(PIXEL_SIZE, 0, origin[0], 0, -PIXEL_SIZE, origin[1])
    extent = size * PIXEL_SIZE
    scene_grid = Affine(PIXEL_SIZE, 0, 0, 0, -PIXEL_SIZE, extent)  # pixels -> scene metres (y up)
    labels, brightness = paint(landscape(rng, extent), (size, size), scene_grid)
    # A nodata collar (the ragged edge of a swath) in one corner.
    cut = rng.uniform(0.15, 0.3) * size
    rows, cols = np.mgrid[0:size, 0:size]
    nodata = (rows + cols) < cut + 6 * smooth_noise(rng, labels.shape, 20)
    image = to_digital_numbers(reflectance(labels, brightness, rng))
    image[:, nodata] = 0
    labels[nodata] = LABEL_NODATA

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"scene_{index:03d}"
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    image_path, label_path = out_dir / f"{stem}.tif", out_dir / f"{stem}_labels.tif"
    with rasterio.open(image_path, "w", count=len(BANDS), dtype="uint16", nodata=0, predictor=2, **profile) as dst:
        dst.write(image)
        dst.descriptions = BANDS
    with rasterio.open(label_path, "w", count=1, dtype="uint8", nodata=LABEL_NODATA, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {c.id: (*c.color, 255) for c in CLASSES})
        dst.update_tags(**class_tags([c.id for c in CLASSES], [c.name for c in CLASSES]))
    polygons_path = write_polygons(to_geodataframe(polygonize(str(label_path))), out_dir / f"{stem}_labels.gpkg")
    return SynthScene(image_path, label_path, polygons_path, epsg)


RECORD = ".geoseg-synth"  # what synth wrote in its folder: a rerun may replace those files, and only those


def make_archive(out_dir: str | Path, scenes: int = 3, size: int = 1024, seed: int = 0) -> list[SynthScene]:
    """Write ``scenes`` synthetic scenes into ``out_dir`` (new, empty, or synth's own); the same seed gives the
    same bytes."""
    out = Path(out_dir)
    claim_folder(out, RECORD, "geoseg synth")
    made = [make_scene(out, i, size, seed) for i in range(scenes)]
    record_folder(out, RECORD)
    return made
