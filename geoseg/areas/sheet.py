"""The labelling sheet: one GeoPackage that carries a stratified sample from ``sample`` to ``assess``.

Layers:

* ``samples`` (points at pixel centres, the map's CRS): ``id``, ``map_class``, ``map_class_name``,
  ``reference_class`` (empty until an interpreter labels it), ``confidence`` (the interpreter's: high, medium,
  low) and ``notes``. Its default style is a QGIS form: ``reference_class`` and ``confidence`` are drop-downs
  of the class names and the three levels, the map's fields are read-only.
* ``strata``: per stratum its id, name, pixel count, area in square metres and sample size; with the design
  these are all the estimator needs, so assessment never reads the map again.
* ``classes``: every class a reference label may take (id, name, colour), stratum or not.
* ``design``: key/value rows saying how the sample was drawn (map, seed, allocation, target standard error).

Rows are in a random order (seeded) and numbered in it, so an interpreter working down the list does not
meet the strata one after another.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio

from geoseg.areas.estimator import Stratum
from geoseg.errors import GeoSegError
from geoseg.io.styles import ClassStyle, gpkg_default_style, sheet_qml
from geoseg.io.writer import temp_sibling

SAMPLES, STRATA, CLASSES, DESIGN = "samples", "strata", "classes", "design"
CONFIDENCE_LEVELS = ("high", "medium", "low")
LOCKED = ("id", "map_class", "map_class_name")


@dataclass(frozen=True)
class Sheet:
    """A sheet as read back: the samples, the strata and every class a reference label may take."""

    samples: pd.DataFrame
    strata: list[Stratum]
    classes: dict[int, str]
    design: dict[str, str]


def write_sheet(
    path: Path,
    points: gpd.GeoDataFrame,
    strata: list[Stratum],
    sample_sizes: dict[int, int],
    classes: list[ClassStyle],
    design: dict[str, str],
) -> Path:
    """Write the sheet under a temporary name and rename it into place (never half a sheet)."""
    folder = temp_sibling(path)  # a hidden folder beside it, holding the sheet under its own name (GDAL reads
    folder.mkdir()  # the format from the extension), renamed into place when complete
    staging = folder / path.name
    try:
        # GeoPackage 1.2: read without warnings by the GDAL that QGIS LTR releases ship
        pyogrio.write_dataframe(points, staging, layer=SAMPLES, driver="GPKG", dataset_options={"VERSION": "1.2"})
        tables = {
            STRATA: pd.DataFrame(
                {
                    "stratum": [s.id for s in strata],
                    "name": [s.name for s in strata],
                    "pixels": np.array([s.pixels for s in strata], dtype=np.int64),
                    "area_m2": [s.area_m2 for s in strata],
                    "samples": np.array([sample_sizes.get(s.id, 0) for s in strata], dtype=np.int64),
                }
            ),
            CLASSES: pd.DataFrame(
                {"id": [c.id for c in classes], "name": [c.name for c in classes], "color": [c.hex for c in classes]}
            ),
            DESIGN: pd.DataFrame({"key": list(design), "value": [str(v) for v in design.values()]}),
        }
        for layer, frame in tables.items():
            pyogrio.write_dataframe(frame, staging, layer=layer, driver="GPKG", append=True)
        choices = {
            "reference_class": [(c.name, str(c.id)) for c in classes],
            "confidence": [(level, level) for level in CONFIDENCE_LEVELS],
        }
        gpkg_default_style(
            staging, SAMPLES, sheet_qml(classes, "map_class", choices, list(LOCKED)), description="geoseg sheet"
        )
        os.replace(staging, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def read_sheet(path: Path) -> Sheet:
    """A labelled sheet, checked: every problem is one line naming the file and the layer or field."""
    if not path.is_file():
        raise GeoSegError("no such sheet (a GeoPackage written by geoseg sample)", path)
    try:
        layers = {str(name) for name, _ in pyogrio.list_layers(path)}
    except Exception as exc:
        raise GeoSegError(f"cannot read as a GeoPackage ({str(exc).splitlines()[0]})", path) from exc
    for layer in (SAMPLES, STRATA, CLASSES):
        if layer not in layers:
            raise GeoSegError(f"has no '{layer}' table: not a sheet written by geoseg sample", path)
    samples = pyogrio.read_dataframe(path, layer=SAMPLES)
    strata_frame = pyogrio.read_dataframe(path, layer=STRATA, read_geometry=False)
    class_frame = pyogrio.read_dataframe(path, layer=CLASSES, read_geometry=False)
    design_frame = pyogrio.read_dataframe(path, layer=DESIGN, read_geometry=False) if DESIGN in layers else None
    _require(samples, ("map_class", "reference_class"), path, SAMPLES)
    _require(strata_frame, ("stratum", "name", "pixels", "area_m2"), path, STRATA)
    _require(class_frame, ("id", "name"), path, CLASSES)
    if not len(strata_frame):
        raise GeoSegError(f"its '{STRATA}' table is empty", path)
    strata = []
    for row in strata_frame.itertuples():
        area = float(row.area_m2)
        if not (np.isfinite(area) and area > 0) or int(row.pixels) <= 0:
            raise GeoSegError(f"stratum {row.stratum} has no area ({STRATA}.area_m2 = {row.area_m2})", path)
        strata.append(Stratum(int(row.stratum), str(row.name), int(row.pixels), area))
    if len({s.id for s in strata}) != len(strata):
        raise GeoSegError(f"its '{STRATA}' table lists a stratum twice", path)
    classes = {int(row.id): str(row.name) for row in class_frame.itertuples()}
    missing = [s.id for s in strata if s.id not in classes]
    if missing:
        raise GeoSegError(f"strata {missing} are not in its '{CLASSES}' table", path)
    design = {} if design_frame is None else dict(zip(design_frame["key"], design_frame["value"], strict=True))
    return Sheet(samples, strata, classes, design)


def _require(frame: pd.DataFrame, fields: tuple[str, ...], path: Path, layer: str) -> None:
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise GeoSegError(f"its '{layer}' layer has no field {', '.join(missing)}", path)


def fill_reference(path: Path, reference: Path) -> int:
    """Label a sheet's empty ``reference_class`` fields from a reference class raster (a better map of the same
    place, or a synthetic truth in the demo) read at each point, in the raster's CRS; nodata stays unlabelled.
    Rewrites only the ``samples`` layer (strata, classes and the form stay). Returns how many were labelled."""
    import rasterio
    from rasterio.warp import transform as transform_points

    samples = pyogrio.read_dataframe(path, layer=SAMPLES)
    todo = samples["reference_class"].isna().to_numpy()
    xs, ys = samples.geometry.x.to_numpy()[todo], samples.geometry.y.to_numpy()[todo]
    try:
        src = rasterio.open(reference)
    except rasterio.errors.RasterioIOError as exc:
        raise GeoSegError(f"cannot open the reference raster ({exc})", reference) from exc
    with src:
        if samples.crs is not None and src.crs is not None and samples.crs != src.crs:
            xs, ys = (np.asarray(v) for v in transform_points(samples.crs, src.crs, xs, ys))
        points = list(zip(xs.tolist(), ys.tolist(), strict=True))
        values: list[Any] = [v[0] for v in src.sample(points, masked=True)] if points else []
    labels = samples["reference_class"].astype("Int64").copy()
    filled = 0
    for k, value in zip(np.flatnonzero(todo), values, strict=True):
        if value is not np.ma.masked:
            labels.iloc[k] = int(value)
            filled += 1
    samples["reference_class"] = labels.astype("Int32")
    pyogrio.write_dataframe(samples, path, layer=SAMPLES, driver="GPKG")
    return filled
