"""A synthetic archive like a real one: repeated, overlapping, cloudy acquisitions of one place across two UTM zones.

Mapping a *place* for a *period* starts from an archive that looks like this, and :mod:`geoseg.synth`'s
independent scenes do not: here one landscape (the truth, painted once in an equal-area frame, ETRS89-LAEA
``EPSG:3035``, and written as ``truth.gpkg``) straddles the meridian of 12 degrees E, where UTM zones 32 and 33 meet.
Each acquisition is a scene of its own footprint on its own zone's grid (even scenes zone 32N, odd ones 33N),
with its own date, its own clouds and their shadows:

- **clouds** are bright in every band (reflectance ~0.45): a model that never saw them maps them as roofs or
  roads; their fringe is a half-transparent veil; **shadows** are the clouds displaced along the sun's azimuth,
  the ground under them darkened to 30 %.
- an **SCL-like asset** at twice the pixel size (as Sentinel-2's 20 m SCL beside its 10 m bands) says, per
  cell, what is there: 0 no data, 3 cloud shadow, 8 cloud (medium probability: the fringe), 9 cloud (high
  probability), 4 vegetation, 5 not vegetated, 6 water. A cell is cloud when any of its pixels is, as a
  conservative detector would flag it, so the mask covers every cloudy pixel of the imagery.
- every scene is a **STAC Item** (one asset per band, ``SCL``, the ``labels`` truth under the clouds) with its
  acquisition datetime, ``eo:cloud_cover`` and projection; all form one self-contained catalogue. One scene is
  from the year before the others, so a period selects.

:func:`truth_on_grid` paints the truth on any grid (a mosaic's, a scene's), which is how the demo and the tests
score a mosaic against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import box, mapping

from geoseg.io.guard import claim_folder, record_folder
from geoseg.io.writer import class_tags
from geoseg.synth import BANDS, CLASSES, LABEL_NODATA, PIXEL_SIZE, RECORD, landscape, paint, reflectance, smooth_noise
from geoseg.synth import to_digital_numbers as digital_numbers

GROUND_CRS = "EPSG:3035"  # ETRS89-LAEA Europe: the truth's own frame
CENTRE_LONLAT = (12.0, 48.6)  # on the boundary of UTM zones 32 and 33
ZONES = (32632, 32633)
START = datetime(2024, 3, 20, 10, 30, tzinfo=UTC)  # the first acquisition; then one every 29 days
SCL_NODATA, SCL_SHADOW, SCL_VEGETATION, SCL_BARE, SCL_WATER, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH = 0, 3, 4, 5, 6, 8, 9
CLOUD_COVER = (0.18, 0.08, 0.25, 0.0, 0.15, 0.22, 0.10, 0.30)  # per scene, cycled
# Scene centres as fractions of the region (overlapping, every part of the region seen several times).
LAYOUT = ((0.35, 0.35), (0.65, 0.65), (0.65, 0.35), (0.35, 0.65), (0.5, 0.5), (0.45, 0.6), (0.6, 0.45), (0.5, 0.4))


@dataclass(frozen=True)
class SeriesScene:
    """One acquisition: its STAC item, files and what is in it."""

    id: str
    item: Path
    bands: tuple[Path, ...]
    scl: Path
    labels: Path  # the truth on the scene's grid, under the clouds as well
    epsg: int
    acquired: datetime
    cloud_share: float  # of the scene's valid pixels: cloud, fringe or shadow


@dataclass(frozen=True)
class SynthSeries:
    catalog: Path
    truth: Path  # truth.gpkg: the landscape's shapes in painting order (EPSG:3035)
    scenes: tuple[SeriesScene, ...]


def region_origin(size: int) -> tuple[float, float, float]:
    """(west, south, side) of the region in the ground frame: 1.6 scene widths a side around the centre."""
    x, y = Transformer.from_crs("EPSG:4326", GROUND_CRS, always_xy=True).transform(*CENTRE_LONLAT)
    side = 1.6 * size * PIXEL_SIZE
    return round(x - side / 2), round(y - side / 2), side


def truth_on_grid(truth: Path, crs: CRS | str, transform: Affine, width: int, height: int) -> np.ndarray:
    """The landscape's classes on a grid (uint8; grassland where no shape is), shapes painted in their order."""
    return paint(_shapes_in(gpd.read_file(truth), crs), (height, width), transform)[0]


def _shapes_in(frame: gpd.GeoDataFrame, crs: CRS | str) -> list[tuple[shapely.Geometry, int, float]]:
    """The truth's (shape, class, brightness) in painting order, in ``crs``."""
    frame = frame.sort_values("paint_order").to_crs(CRS.from_user_input(crs).to_wkt())
    return list(zip(frame.geometry, frame.class_id.astype(int), frame.brightness.astype(float), strict=True))


def _scl(
    labels: np.ndarray, nodata: np.ndarray, cloud: np.ndarray, fringe: np.ndarray, shadow: np.ndarray
) -> np.ndarray:
    """The SCL-like classes on 2 x 2 cells: any cloud pixel makes the cell cloud (high before medium), then
    shadow; a cell all nodata is 0; else the ground class of its top-left pixel."""
    h, w = labels.shape[0] // 2, labels.shape[1] // 2

    def cells(flag: np.ndarray, how: str) -> np.ndarray:
        blocks = flag[: 2 * h, : 2 * w].reshape(h, 2, w, 2)
        return np.asarray(blocks.any(axis=(1, 3)) if how == "any" else blocks.all(axis=(1, 3)))

    ground = labels[: 2 * h : 2, : 2 * w : 2]
    scl = np.where(ground == 1, SCL_WATER, np.where(np.isin(ground, [0, 2]), SCL_VEGETATION, SCL_BARE))
    scl[cells(shadow, "any")] = SCL_SHADOW
    scl[cells(fringe, "any")] = SCL_CLOUD_MEDIUM
    scl[cells(cloud, "any")] = SCL_CLOUD_HIGH
    scl[cells(nodata, "all")] = SCL_NODATA
    return scl.astype(np.uint8)


def _clouds(rng: np.random.Generator, size: int, cover: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud, fringe, shadow) of one acquisition: smooth blobs covering about ``cover`` of it."""
    field = smooth_noise(rng, (size, size), size / 14)
    if cover <= 0:
        empty = np.zeros((size, size), bool)
        return empty, empty, empty
    core = np.quantile(field, 1 - cover)
    cloud = field > core
    fringe = (field > core - 0.15) & ~cloud
    dy, dx = size // 14, -size // 18  # each shadow lies this many rows below and columns left of its cloud
    shadow = np.zeros_like(cloud)
    shadow[max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)] = cloud[
        max(0, dy) : size - max(0, -dy), max(0, dx) : size - max(0, -dx)
    ]
    return cloud, fringe, shadow & ~cloud & ~fringe


def _write(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None, **extra: object) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[-1],
        "height": data.shape[-2],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    } | extra
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def make_series(out_dir: str | Path, scenes: int = 6, size: int = 512, seed: int = 0) -> SynthSeries:
    """Write ``scenes`` acquisitions of ``size`` px into ``out_dir`` (see the module); the same seed gives the same
    pixels. ``out_dir/catalog.json`` is the STAC catalogue, ``out_dir/truth.gpkg`` the truth."""
    out = Path(out_dir)
    claim_folder(out, RECORD, "geoseg synth")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2024])
    west, south, side = region_origin(size)
    shapes = [
        (shapely.affinity.translate(geom, west, south), class_id, bright)
        for geom, class_id, bright in landscape(rng, side)
    ]
    truth = out / "truth.gpkg"
    frame = gpd.GeoDataFrame(
        {
            "class_id": [c for _, c, _ in shapes],
            "class_name": [CLASSES[c].name for _, c, _ in shapes],
            "brightness": [b for _, _, b in shapes],
            "paint_order": list(range(len(shapes))),
        },
        geometry=[g for g, _, _ in shapes],
        crs=GROUND_CRS,
    )
    truth.unlink(missing_ok=True)
    frame.to_file(truth, driver="GPKG", layer="truth")
    catalog = pystac.Catalog(id="synthetic-archive", description="geoseg synth --series: cloudy repeats of a place")
    collection = pystac.Collection(
        id="synthetic-l2a",
        description="Synthetic L2A-like acquisitions across UTM zones 32N and 33N",
        extent=pystac.Extent(pystac.SpatialExtent([[0.0, 0.0, 0.0, 0.0]]), pystac.TemporalExtent([[START, None]])),
    )
    catalog.add_child(collection)
    written = []
    for index in range(scenes):
        scene_rng = np.random.default_rng([seed, index, 7])
        epsg = ZONES[index % len(ZONES)]
        crs = f"EPSG:{epsg}"
        fx, fy = LAYOUT[index % len(LAYOUT)]
        jitter = scene_rng.uniform(-0.04, 0.04, 2) * side
        cx, cy = west + fx * side + jitter[0], south + fy * side + jitter[1]
        ex, ey = Transformer.from_crs(GROUND_CRS, crs, always_xy=True).transform(cx, cy)
        half = size * PIXEL_SIZE / 2
        transform = Affine(PIXEL_SIZE, 0, round((ex - half) / 2 / PIXEL_SIZE) * 2 * PIXEL_SIZE, 0, -PIXEL_SIZE,
                           round((ey + half) / 2 / PIXEL_SIZE) * 2 * PIXEL_SIZE)  # fmt: skip
        labels, brightness = paint(_shapes_in(frame, crs), (size, size), transform)
        ground = reflectance(labels, brightness, scene_rng)
        cloud, fringe, shadow = _clouds(scene_rng, size, CLOUD_COVER[index % len(CLOUD_COVER)])
        white = 0.42 + 0.04 * smooth_noise(scene_rng, (size, size), 4).astype(np.float32)
        haze = np.array([1.0, 1.0, 1.02, 1.08], np.float32)[:, None, None] * white  # a touch brighter in NIR
        image = np.where(cloud, haze, np.where(fringe, 0.5 * ground + 0.5 * haze, ground))
        image = np.where(shadow, 0.3 * image, image)
        rows, cols = np.mgrid[0:size, 0:size]
        nodata = (size - 1 - rows + cols) < scene_rng.uniform(0.05, 0.15) * size  # a collar, bottom left
        dn = digital_numbers(image)
        dn[:, nodata] = 0
        truth_labels = np.where(nodata, LABEL_NODATA, labels).astype(np.uint8)
        acquired = START + timedelta(days=29 * index)
        if index == 1:
            acquired = datetime(2023, 8, 14, 10, 30, tzinfo=UTC)  # last year's: a period leaves it out
        item_id = f"SYN_{epsg % 100}N_{acquired:%Y%m%d}_{index:02d}"
        bands = tuple(
            _write(data / f"{item_id}_{name}.tif", dn[b], crs, transform, 0, predictor=2)
            for b, name in enumerate(BANDS)
        )
        scl = _scl(labels, nodata, cloud, fringe, shadow)
        scl_path = _write(data / f"{item_id}_SCL.tif", scl, crs, transform * Affine.scale(2), None)
        label_path = data / f"{item_id}_labels.tif"
        _write(label_path, truth_labels, crs, transform, LABEL_NODATA)
        with rasterio.open(label_path, "r+") as dst:
            dst.write_colormap(1, {c.id: (*c.color, 255) for c in CLASSES})
            dst.update_tags(**class_tags([c.id for c in CLASSES], [c.name for c in CLASSES]))
        valid = ~nodata
        share = float((cloud | fringe | shadow)[valid].mean())
        bounds = rasterio.transform.array_bounds(size, size, transform)
        item = pystac.Item(
            id=item_id,
            geometry=transform_geom(crs, "EPSG:4326", mapping(box(*bounds))),
            bbox=list(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)),
            datetime=acquired,
            properties={"eo:cloud_cover": round(100 * share, 2), "proj:code": crs, "platform": "geoseg-synth"},
        )
        for name, path in zip(BANDS, bands, strict=True):
            asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.GEOTIFF, roles=["data"])
            asset.extra_fields["eo:bands"] = [{"name": name, "common_name": name}]
            asset.extra_fields["raster:bands"] = [
                {"nodata": 0, "data_type": "uint16", "spatial_resolution": PIXEL_SIZE}
            ]
            item.add_asset(name, asset)
        scl_asset = pystac.Asset(href=str(scl_path), media_type=pystac.MediaType.GEOTIFF, roles=["data"])
        scl_asset.extra_fields["raster:bands"] = [{"data_type": "uint8", "spatial_resolution": 2 * PIXEL_SIZE}]
        item.add_asset("SCL", scl_asset)
        item.add_asset(
            "labels", pystac.Asset(href=str(label_path), media_type=pystac.MediaType.GEOTIFF, roles=["labels"])
        )
        collection.add_item(item)
        written.append((item_id, bands, scl_path, label_path, epsg, acquired, share))
    collection.update_extent_from_items()
    catalog.normalize_hrefs(str(out))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    scenes_out = tuple(
        SeriesScene(i, out / "synthetic-l2a" / i / f"{i}.json", b, s, lab, e, a, c) for i, b, s, lab, e, a, c in written
    )
    record_folder(out, RECORD)
    return SynthSeries(out / "catalog.json", truth, scenes_out)
