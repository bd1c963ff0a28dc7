"""Write class polygons to GIS formats, atomically, with area and perimeter attributes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from geoseg.errors import GeoSegError
from geoseg.io.styles import ClassStyle, gpkg_default_style, vector_qml
from geoseg.io.writer import temp_sibling, write_text_atomic
from geoseg.vector.formats import FORMATS, vector_style
from geoseg.vector.polygonize import ClassPolygons

_SHAPEFILE_LIMIT = 2**31  # 2 GB: .shp/.dbf offsets are 32-bit
_SHAPEFILE_FIELDS = {"perimeter_m": "perimeter"}  # dBASE field names are at most 10 characters
EQUAL_AREA_CRS = "EPSG:6933"  # for areas when the raster CRS is geographic


def output_path(out: str | Path, fmt: str | None = None) -> Path:
    """The file a vector output is written to: ``out``, or ``out`` with ``fmt``'s extension if it has none.

    A format that contradicts the extension (``--format shp --output x.gpkg``) is refused rather than
    writing a shapefile under a GeoPackage's name (or printing one name and writing another).
    """
    out = Path(out)
    if out.is_dir():
        raise GeoSegError("is a folder; name the output file (for example polygons.gpkg)", out)
    suffix = out.suffix.lower()
    if fmt is None:
        if suffix not in FORMATS:
            raise GeoSegError(f"unknown vector format {suffix!r}; use one of {', '.join(FORMATS)}", out)
        return out
    wanted = f".{fmt.lower().lstrip('.')}"
    if wanted not in FORMATS:
        raise GeoSegError(f"unknown vector format {wanted!r}; use one of {', '.join(FORMATS)}", out)
    if suffix in FORMATS and FORMATS[suffix][0] != FORMATS[wanted][0]:
        raise GeoSegError(f"--format {fmt} contradicts the file's extension {suffix}", out)
    return out if suffix else out.with_name(out.name + wanted)  # a name the user chose is kept as written


def to_geodataframe(polygons: ClassPolygons) -> gpd.GeoDataFrame:
    geoms = polygons.geometries
    if polygons.connectivity == 8 and len(geoms):
        # Only 8-connected regions can touch themselves at a corner. 4-connected polygonize output (and
        # unions of it) is valid by construction, and checking 10^5 polygons with many holes costs seconds.
        invalid = ~shapely.is_valid(geoms)
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    frame = gpd.GeoDataFrame(
        {
            "class_id": polygons.class_ids,
            "class_name": [polygons.class_names.get(int(c), f"class_{c}") for c in polygons.class_ids],
        },
        geometry=geoms,
        crs=polygons.crs,
    )
    metric = in_metres(geoms, polygons.crs)
    frame["area_m2"] = shapely.area(metric)
    frame["perimeter_m"] = shapely.length(metric)
    if polygons.confidence is not None:
        frame["confidence"] = polygons.confidence
    return frame


def equal_area_crs(longitude: float = 0.0) -> CRS:
    """:data:`EQUAL_AREA_CRS`'s projection (cylindrical equal area, true scale at 30 degrees, WGS84) centred on
    ``longitude``. Areas do not depend on the centre; geometries within 180 degrees of it stay in one piece, so a
    map that crosses the antimeridian (longitudes 179 to 181, or -181 to -179) is measured as it is, not as a
    band around the whole globe (its polygons were 359x too large)."""
    if longitude == 0.0:
        return CRS.from_user_input(EQUAL_AREA_CRS)
    return CRS.from_proj4(f"+proj=cea +lat_ts=30 +lon_0={longitude:.9f} +datum=WGS84 +units=m +no_defs +type=crs")


def in_metres(geoms: np.ndarray, crs: Any) -> np.ndarray:
    """``geoms`` in a CRS whose unit is the metre: as they are in a projected CRS, in the equal-area
    :func:`equal_area_crs` centred on them when ``crs`` is geographic. Areas and perimeters (exported attributes,
    the minimum mapping unit) are all measured on these."""
    proj = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if not proj.is_geographic or not len(geoms):
        return geoms
    west, _, east, _ = shapely.total_bounds(geoms)
    centre = (west + east) / 2 if np.isfinite(west) and np.isfinite(east) else 0.0
    to_equal_area = Transformer.from_crs(proj, equal_area_crs(centre), always_xy=True)
    return np.asarray(shapely.transform(geoms, lambda xy: np.column_stack(to_equal_area.transform(xy[:, 0], xy[:, 1]))))


class PolygonWriter:
    """Write polygons batch by batch to one output; publish the file(s) only when complete.

    GeoPackage and Shapefile batches are appended as they come (so a caller never holds every polygon);
    formats that cannot append (GeoParquet, FlatGeobuf with its index, GeoJSON) are written once at the end.
    Everything goes to a hidden staging folder beside the output first and is renamed into place on close.
    """

    APPENDABLE = frozenset({"GPKG", "ESRI Shapefile"})

    def __init__(
        self, out: str | Path, to_crs: str | None = None, fmt: str | None = None, styles: list[ClassStyle] | None = None
    ) -> None:
        self.out = output_path(out, fmt)
        self.styles = styles or []
        self.driver, wgs84 = FORMATS[f".{fmt.lower().lstrip('.')}" if fmt else self.out.suffix.lower()]
        if to_crs:
            try:
                target = CRS.from_user_input(to_crs)
            except CRSError:
                raise GeoSegError(f"--to-crs {to_crs!r} is not a coordinate reference system", out) from None
        if wgs84 and to_crs and target != CRS.from_epsg(4326):
            raise GeoSegError(f"GeoJSON is WGS84 by RFC 7946; --to-crs {to_crs} cannot apply (use .gpkg or .fgb)", out)
        self.to_crs = "EPSG:4326" if wgs84 else to_crs
        try:  # like predict's --output, a missing folder is made
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeoSegError(f"cannot create the output folder ({exc.strerror or exc})", self.out.parent) from None
        if not os.access(self.out.parent, os.W_OK):
            raise GeoSegError("output folder is not writable", self.out.parent)
        self.staging = temp_sibling(self.out)
        self.staging.mkdir()
        self.target = self.staging / self.out.name
        self.layer = self.out.stem
        if self.driver == "GPKG" and self.out.is_file():
            # Someone's GeoPackage (the caller's guard let it through: our layer is absent or ours): the layer
            # is added or replaced in a copy, which replaces the file only when complete. Other layers stay.
            shutil.copy2(self.out, self.target)
        self.held: list[gpd.GeoDataFrame] = []
        self.written = 0

    def check_source(self, crs: Any) -> None:
        """Refuse, before any work, a raster CRS the output's CRS cannot be reached from (a local engineering
        CRS has no place on the globe, and GeoJSON is WGS84 by RFC 7946)."""
        if not self.to_crs:
            return
        source = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        try:
            Transformer.from_crs(source, self.to_crs)
        except (ProjError, CRSError):
            name = source.name
            hint = (
                " (GeoJSON is WGS84 by RFC 7946: write .gpkg, .fgb or .shp instead)" if self.driver == "GeoJSON" else ""
            )
            raise GeoSegError(
                f"the raster's CRS ({name}) cannot be transformed to {self.to_crs}: a local (engineering) CRS has "
                f"no place on the globe{hint}",
                self.out,
            ) from None

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if self.to_crs:
            frame = frame.to_crs(self.to_crs)
        if self.driver == "ESRI Shapefile":
            frame = frame.rename(columns=_SHAPEFILE_FIELDS)
        if self.driver not in self.APPENDABLE:
            self.held.append(frame)
        elif len(frame) or not self.written:
            # Arrow batches: GPKG rows go in large transactions instead of one row at a time.
            frame.to_file(
                self.target,
                driver=self.driver,
                engine="pyogrio",
                encoding="UTF-8",
                use_arrow=True,
                append=self.written > 0,
                **({"layer": self.layer} if self.driver == "GPKG" else {}),
            )
            self.written += max(1, len(frame))

    def close(self) -> Path:
        try:
            if self.held:
                frame = pd.concat(self.held, ignore_index=True) if len(self.held) > 1 else self.held[0]
                if self.driver == "parquet":
                    frame.to_parquet(self.target)
                else:
                    # GeoJSON as RFC 7946 (no legacy "crs" member, 7 decimals: ~1 cm) as QGIS and web maps expect.
                    options = {"RFC7946": "YES"} if self.driver == "GeoJSON" else {}
                    frame.to_file(
                        self.target, driver=self.driver, engine="pyogrio", encoding="UTF-8", use_arrow=True, **options
                    )
            if self.styles and self.driver == "GPKG":  # inside the file, before it is published
                gpkg_default_style(self.target, self.layer, vector_qml(self.styles))
            produced = sorted(self.staging.iterdir())
            if self.driver == "ESRI Shapefile" and sum(p.stat().st_size for p in produced) > _SHAPEFILE_LIMIT:
                raise GeoSegError("shapefile would exceed 2 GB; write .gpkg or .fgb instead", self.out)
            for part in produced:
                os.replace(part, self.out.parent / part.name)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.styles and self.driver != "GPKG":
            sidecar = vector_style(self.out)  # its own style; a raster of that stem keeps its own
            if sidecar is not None:
                write_text_atomic(sidecar, vector_qml(self.styles))
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_polygons(frame: gpd.GeoDataFrame, out: str | Path, to_crs: str | None = None, fmt: str | None = None) -> Path:
    """Write ``frame`` to ``out`` in the format ``fmt`` (e.g. ``gpkg``) or its extension names; atomically."""
    writer = PolygonWriter(out, to_crs, fmt)
    writer.write(frame)
    return writer.close()
