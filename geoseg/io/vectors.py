"""Reading class polygons (training labels, evaluation truth) onto a raster's CRS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.crs import CRS

from geoseg.errors import GeoSegError
from geoseg.io.raster import same_projection

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet"}


def is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES


def read_polygons(path: Path, crs: CRS) -> gpd.GeoDataFrame:
    """Polygons of a vector file in ``crs``; one-line errors for what makes them unusable.

    A file whose CRS differs from ``crs`` only by datum realisation is relabelled rather than transformed,
    as the rasters are (see :func:`geoseg.io.raster.same_projection`).
    """
    try:
        frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path, engine="pyogrio")
    except Exception as exc:
        raise GeoSegError(f"cannot read polygons: {str(exc).splitlines()[0]}", path) from exc
    if frame.crs is None:
        raise GeoSegError("polygons have no CRS", path)
    if same_projection(CRS.from_user_input(frame.crs.to_wkt()), crs):
        return frame.set_crs(crs.to_wkt(), allow_override=True)
    return frame.to_crs(crs.to_wkt())


def read_class_polygons(path: Path, class_field: str, crs: CRS) -> gpd.GeoDataFrame:
    """Polygons with a class attribute, in ``crs`` (see :func:`read_polygons`); ids checked exactly."""
    frame = read_polygons(path, crs)
    if class_field not in frame.columns:
        fields = ", ".join(repr(c) for c in frame.columns if c != frame.geometry.name) or "none"
        raise GeoSegError(f"polygons have no {class_field!r} attribute (they have: {fields})", path)
    values = frame[class_field]
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values[numeric.isna() & values.notna()]
    if len(bad):
        raise GeoSegError(f"the {class_field!r} attribute holds {bad.iloc[0]!r}, not a class id", path)
    numeric = numeric.dropna()
    if len(numeric) and (numeric < 0).any():
        raise GeoSegError(f"the {class_field!r} attribute holds negative class ids ({int(numeric.min())})", path)
    if len(numeric) and not (numeric == numeric.round()).all():
        raise GeoSegError(f"the {class_field!r} attribute holds fractional values, not class ids", path)
    if len(frame) and values.isna().all():  # it said "share no valid pixels", which sent users to the grids
        raise GeoSegError(f"the {class_field!r} attribute is empty (null) on all {len(frame)} polygons", path)
    frame = frame[values.notna()].copy()  # a polygon without a class labels nothing
    frame[class_field] = numeric.dropna().astype("int64")
    _refuse_ambiguous(frame, class_field, path)
    return frame


def _refuse_ambiguous(frame: gpd.GeoDataFrame, class_field: str, path: Path) -> None:
    """Class polygons that cannot say one class per pixel: an invalid polygon (rasterizing it burns an
    arbitrary side of a self-crossing ring) or two polygons of different classes whose interiors overlap (the
    later one won each shared pixel). Both were scored and trained on without a word; the file is the user's
    to fix, so each is one line naming the features (0-based, in file order)."""
    geoms = np.asarray(frame.geometry.values)
    present = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    invalid = np.flatnonzero(present & ~shapely.is_valid(geoms))
    if len(invalid):
        k = int(invalid[0])
        raise GeoSegError(
            f"polygon {frame.index[k]} is not a valid geometry ({shapely.is_valid_reason(geoms[k])}); "
            f"{len(invalid)} in all: repair them (QGIS: Fix geometries)",
            path,
        )
    kept = np.flatnonzero(present)
    tree = shapely.STRtree(geoms[kept])
    left, right = tree.query(geoms[kept], predicate="intersects")
    pairs = left < right
    left, right = kept[left[pairs]], kept[right[pairs]]
    classes = frame[class_field].to_numpy()
    differ = classes[left] != classes[right]
    left, right = left[differ], right[differ]
    inside = ~shapely.touches(geoms[left], geoms[right])  # interiors meet: not just a shared edge or corner
    if inside.any():
        a, b = int(left[inside][0]), int(right[inside][0])
        raise GeoSegError(
            f"polygons {frame.index[a]} (class {classes[a]}) and {frame.index[b]} (class {classes[b]}) overlap: "
            f"the pixels they share have two classes; {int(inside.sum())} such pair(s) in all",
            path,
        )
