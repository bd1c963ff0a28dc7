"""Polygon clean-up after vectorizing: shared-edge simplification, small-polygon removal, hole filling.

All operate on :class:`~geoseg.vectorize.ClassPolygons` in the raster's CRS. Areas are square metres,
measured in an equal-area CRS when the raster CRS is geographic (degrees would make thresholds meaningless).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from geoseg.export import EQUAL_AREA_CRS
from geoseg.vectorize import ClassPolygons


def _areas_m2(geoms: np.ndarray, crs: object) -> np.ndarray:
    proj = ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if not proj.is_geographic:
        return np.asarray(shapely.area(geoms))
    to_equal_area = Transformer.from_crs(proj, EQUAL_AREA_CRS, always_xy=True)
    return np.asarray(
        shapely.area(shapely.transform(geoms, lambda xy: np.column_stack(to_equal_area.transform(xy[:, 0], xy[:, 1]))))
    )


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


def drop_small(polygons: ClassPolygons, min_area_m2: float) -> ClassPolygons:
    """Remove polygons smaller than ``min_area_m2``."""
    if min_area_m2 <= 0 or not len(polygons.geometries):
        return polygons
    keep = _areas_m2(polygons.geometries, polygons.crs) >= min_area_m2
    confidence = None if polygons.confidence is None else polygons.confidence[keep]
    return replace(
        polygons, geometries=polygons.geometries[keep], class_ids=polygons.class_ids[keep], confidence=confidence
    )


def fill_holes(polygons: ClassPolygons, max_hole_m2: float) -> ClassPolygons:
    """Fill interior rings smaller than ``max_hole_m2`` (the islands inside them stay their own polygons)."""
    if max_hole_m2 <= 0:
        return polygons
    filled = []
    for geom in polygons.geometries:
        parts = []
        for part in shapely.get_parts(geom):
            holes = [
                ring
                for ring in part.interiors
                if _areas_m2(np.array([shapely.Polygon(ring)]), polygons.crs)[0] >= max_hole_m2
            ]
            parts.append(shapely.Polygon(part.exterior, holes))
        filled.append(parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts))
    return replace(polygons, geometries=np.array(filled, dtype=object))
