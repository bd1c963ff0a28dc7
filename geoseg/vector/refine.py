"""Polygon clean-up after vectorizing, keeping the map a partition: sieve, hole filling, shared-edge simplification.

A land-cover map is a partition of its valid pixels: every pixel in exactly one polygon. Deleting polygons
below a minimum mapping unit leaves holes, and filling a polygon's holes while keeping the islands inside
makes polygons overlap; both break the layer for area statistics and topology checks. So:

* **Minimum mapping unit** (:func:`sieve_raster`): regions below the unit are merged into their largest
  neighbour before polygonizing, with GDAL's sieve filter (``gdal_sieve.py``) run on the class raster. The
  polygons of the sieved raster are a partition by construction, and exactly ``gdal_sieve.py`` +
  ``gdal_polygonize.py``'s. GDAL's rule, kept here: a small region none of whose neighbours reaches the
  unit (a cluster of speckles, an island in nodata) stays as it is rather than leaving a gap.
* **Holes** (:func:`absorb_holes`): a polygon's interior ring below the threshold is filled *and* every polygon
  inside it is removed, so the filling polygon absorbs what was inside instead of covering it twice.
* **Simplification** (:func:`simplify_shared_edges`): coverage simplification, each shared edge once.

Areas are square metres, measured in an equal-area CRS when the raster CRS is geographic (degrees would make
thresholds meaningless).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio import features

from geoseg.vector.export import in_metres
from geoseg.vector.polygonize import ClassPolygons, Connectivity, _categorical


def _areas_m2(geoms: np.ndarray, crs: object) -> np.ndarray:
    return np.asarray(shapely.area(in_metres(geoms, crs)))


def simplify_shared_edges(polygons: ClassPolygons, tolerance: float) -> ClassPolygons:
    """Simplify with ``tolerance`` (map units) so edges shared by neighbours stay shared: no gaps, no overlaps.

    Uses coverage simplification (each shared edge is simplified once, for both polygons) instead of
    simplifying polygons one by one, which would pull neighbours apart.
    """
    if tolerance <= 0 or not len(polygons.geometries):
        return polygons
    # A polygonized raster is a coverage whose shared edges do not always share vertices (a long straight
    # edge has none where its neighbours change); a vertex at every pixel corner makes the edges match.
    noded = shapely.segmentize(polygons.geometries, polygons.pixel_size)
    return replace(polygons, geometries=np.asarray(shapely.coverage_simplify(noded, tolerance)))


def _select(polygons: ClassPolygons, keep: np.ndarray) -> ClassPolygons:
    confidence = None if polygons.confidence is None else polygons.confidence[keep]
    return replace(
        polygons, geometries=polygons.geometries[keep], class_ids=polygons.class_ids[keep], confidence=confidence
    )


def absorb_holes(polygons: ClassPolygons, max_hole_m2: float) -> ClassPolygons:
    """Fill interior rings smaller than ``max_hole_m2`` and remove the polygons inside them (absorbed).

    Needs every polygon of the raster at once (an island can come in another batch than its surrounding
    polygon). On a partition the result is a partition: what was inside a filled hole now belongs to the
    polygon around it, once.
    """
    if max_hole_m2 <= 0 or not len(polygons.geometries):
        return polygons
    filled: list[shapely.Geometry] = []
    small_holes: list[shapely.Polygon] = []
    for geom in polygons.geometries:
        parts = []
        for part in shapely.get_parts(geom):
            rings = [shapely.Polygon(ring) for ring in part.interiors]
            small = (
                _areas_m2(np.asarray(rings, dtype=object), polygons.crs) < max_hole_m2 if rings else np.zeros(0, bool)
            )
            small_holes.extend(r for r, is_small in zip(rings, small, strict=True) if is_small)
            kept = [r.exterior for r, is_small in zip(rings, small, strict=True) if not is_small]
            parts.append(shapely.Polygon(part.exterior, kept))
        filled.append(parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts))
    geometries = np.asarray(filled, dtype=object)
    inside = np.zeros(len(geometries), bool)
    if small_holes:
        # A polygon inside a hole lies in it entirely (a partition); test one interior point of each candidate.
        holes = np.asarray(small_holes, dtype=object)
        hole_index, candidates = shapely.STRtree(geometries).query(holes, predicate="intersects")
        # The point of each candidate as it was, before filling: a filled polygon's point can fall in its own
        # former hole, and the polygon would then be removed as if it were inside it.
        points = shapely.point_on_surface(polygons.geometries[candidates])
        inside[candidates[shapely.contains_properly(holes[hole_index], points)]] = True
    return _select(replace(polygons, geometries=geometries), ~inside)


def pixel_threshold(transform: rasterio.Affine, crs: object, width: int, height: int, area_m2: float) -> int:
    """The smallest region, in pixels, that covers ``area_m2`` (pixel area at the raster's centre if geographic)."""
    x, y = width / 2, height / 2
    corners = [transform * (x + dx, y + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
    pixel = _areas_m2(np.array([shapely.Polygon(corners)], dtype=object), crs)[0]
    return max(1, math.ceil(area_m2 / pixel - 1e-9)) if pixel > 0 else 1


SIEVE_TYPES = {"uint8": "uint8", "int8": "int16", "uint16": "uint16", "int16": "int16", "int32": "int32"}
_NO_CLASS = int(np.iinfo(np.int32).min)  # nodata of a sieved float/uint32 raster: never a class id (|id| < 2^31)


def sieve_raster(source: str | Path, target: Path, min_area_m2: float, connectivity: Connectivity = 4) -> Path:
    """Write ``source`` to ``target`` with every region below ``min_area_m2`` merged into its largest neighbour.

    GDAL's sieve (the ``gdal_sieve.py`` algorithm) reads the class raster band by band through GDAL and holds
    one output array (1-4 bytes per pixel) plus its polygon table; nodata pixels are neither merged nor merged
    into. ``target`` keeps the source's grid, nodata, tags and colour table.
    """
    with rasterio.open(source) as src:
        size = pixel_threshold(src.transform, src.crs, src.width, src.height, min_area_m2)
        valid = src.read_masks(1) > 0
        dtype, nodata = SIEVE_TYPES.get(src.dtypes[0]), src.nodata
        if dtype is not None:  # GDAL reads the band itself (int8 through int16)
            band = src.read(1, out_dtype=dtype) if dtype != src.dtypes[0] else rasterio.band(src, 1)
        else:  # float holding whole numbers (GRASS exports), uint32, 64-bit: ids exactly, or refused as polygonize does
            data = src.read(1)
            if data.dtype.kind == "f":
                valid &= np.isfinite(data)
            dtype, nodata = "int32", _NO_CLASS
            band = np.where(valid, _categorical(data, valid, str(source)), _NO_CLASS).astype(np.int32)
        out = np.empty((src.height, src.width), dtype)
        features.sieve(band, size, out=out, mask=valid, connectivity=connectivity)
        profile = src.profile | {
            "driver": "GTiff",
            "dtype": dtype,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
            "zlevel": 1,
            "BIGTIFF": "IF_SAFER",
        }
        tags = src.tags()
        colormap = src.colormap(1) if src.dtypes[0] == "uint8" and _has_colormap(src) else None
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(out, 1)
        dst.update_tags(**tags)
        if colormap:
            dst.write_colormap(1, colormap)
    return target


def _has_colormap(src: rasterio.DatasetReader) -> bool:
    try:
        src.colormap(1)
    except ValueError:
        return False
    return True
