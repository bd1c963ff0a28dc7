"""Class raster -> polygons, chunk by chunk, with seams merged so the result equals a whole-raster polygonize.

Each chunk is polygonized with ``rasterio.features.shapes`` in *pixel* coordinates, where every vertex is an
integer: pieces cut by a chunk seam then meet on exactly equal coordinates, and matching them needs no
tolerance. Only pieces that touch an internal seam take part in the merge; they are joined into connected
components (same class, sharing an edge of positive length across a seam) and each component is unioned
once. Everything else passes through untouched. Georeferencing is applied at the very end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import shape

from geoseg.errors import GeoSegError


@dataclass(frozen=True)
class ClassPolygons:
    """Polygons in map coordinates with their class ids, plus what is needed to label and export them."""

    geometries: np.ndarray  # of shapely Polygons
    class_ids: np.ndarray
    crs: CRS
    class_names: dict[int, str]


def chunk_windows(width: int, height: int, chunk: int) -> Iterator[Window]:
    for row in range(0, height, chunk):
        for col in range(0, width, chunk):
            yield Window(col, row, min(chunk, width - col), min(chunk, height - row))


def _polygonize_window(
    src: rasterio.DatasetReader, window: Window, skip: set[int]
) -> tuple[list[shapely.Polygon], list[int]]:
    data = src.read(1, window=window)
    mask = src.read_masks(1, window=window) > 0
    if data.dtype.kind == "f":
        # Many class rasters are stored as float (GRASS exports, for one); fine while every value is whole.
        values = data[mask]
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise GeoSegError("not a categorical raster: it holds fractional values", src.name)
        data = np.where(mask, data, 0).astype(np.int32)
    elif data.dtype.itemsize > 4 or data.dtype == np.uint32:
        data = data.astype(np.int32)  # features.shapes takes at most 32-bit signed values
    if skip:
        mask &= ~np.isin(data, list(skip))
    pixel_transform = Affine.translation(window.col_off, window.row_off)
    geoms, values = [], []
    for geojson, value in features.shapes(data, mask=mask, connectivity=4, transform=pixel_transform):
        geoms.append(shape(geojson))
        values.append(int(value))
    return geoms, values


def _seam_touching(geoms: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    bounds = shapely.bounds(geoms)
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    return (
        ((bounds[:, 0] == c0) & (c0 > 0))
        | ((bounds[:, 2] == c1) & (c1 < width))
        | ((bounds[:, 1] == r0) & (r0 > 0))
        | ((bounds[:, 3] == r1) & (r1 < height))
    )


def _merge_seam_pieces(geoms: np.ndarray, classes: np.ndarray) -> tuple[list[shapely.Geometry], list[int]]:
    """Union the seam pieces that are one region: same class and an edge shared across a seam."""
    parent = np.arange(len(geoms))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    keep = (left < right) & (classes[left] == classes[right])
    left, right = left[keep], right[keep]
    # Touching only at a corner does not connect regions under 4-connectivity.
    shared = shapely.length(shapely.intersection(geoms[left], geoms[right])) > 0
    for a, b in zip(left[shared].tolist(), right[shared].tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(len(geoms))])
    merged: list[shapely.Geometry] = []
    merged_classes: list[int] = []
    for root in np.unique(roots):
        members = geoms[roots == root]
        geom = members[0] if len(members) == 1 else shapely.union_all(members)
        # A union leaves collinear vertices where seams were; simplify(0) drops exactly those.
        geom = shapely.simplify(geom, 0)
        parts = shapely.get_parts(geom) if geom.geom_type == "MultiPolygon" else [geom]
        merged.extend(parts)
        merged_classes.extend([int(classes[root])] * len(parts))
    return merged, merged_classes


def class_names_from_tags(tags: dict[str, str]) -> dict[int, str]:
    """``class_<id>=<name>`` tags written by geoseg's class rasters."""
    return {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}


def polygonize(path: str, chunk: int = 1024, skip_classes: set[int] | None = None) -> ClassPolygons:
    """Polygonize a categorical raster in ``chunk`` x ``chunk`` windows; nodata and ``skip_classes`` give none."""
    if chunk < 1:
        raise GeoSegError(f"chunk must be >= 1 pixel, got {chunk}")
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeoSegError("cannot open as a raster", path) from exc
    with src:
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "uif":
            raise GeoSegError(f"not a categorical raster: pixel type {dtype.name}", path)
        if src.crs is None:
            raise GeoSegError("no CRS: polygons would have no location", path)
        done_geoms: list[shapely.Geometry] = []
        done_classes: list[int] = []
        seam_geoms: list[shapely.Geometry] = []
        seam_classes: list[int] = []
        for window in chunk_windows(src.width, src.height, chunk):
            geoms, values = _polygonize_window(src, window, skip_classes or set())
            if not geoms:
                continue
            geom_array, value_array = np.array(geoms, dtype=object), np.array(values)
            on_seam = _seam_touching(geom_array, window, src.width, src.height)
            done_geoms.extend(geom_array[~on_seam])
            done_classes.extend(value_array[~on_seam].tolist())
            seam_geoms.extend(geom_array[on_seam])
            seam_classes.extend(value_array[on_seam].tolist())
        if seam_geoms:
            merged, merged_classes = _merge_seam_pieces(np.array(seam_geoms, dtype=object), np.array(seam_classes))
            done_geoms.extend(merged)
            done_classes.extend(merged_classes)
        t = src.transform
        pixel_to_map = [t.a, t.b, t.d, t.e, t.c, t.f]
        geometries = np.array([shapely.affinity.affine_transform(g, pixel_to_map) for g in done_geoms], dtype=object)
        return ClassPolygons(
            geometries, np.array(done_classes, dtype=np.int64), src.crs, class_names_from_tags(src.tags())
        )
