"""The vector formats geoseg writes, declared once: the CLI, the job file and the exporter read them here (no
heavy imports, so the command line can list them without loading geopandas)."""

from __future__ import annotations

from pathlib import Path

# extension -> (OGR driver or "parquet", reprojected to WGS84 by the format's spec)
FORMATS: dict[str, tuple[str, bool]] = {
    ".gpkg": ("GPKG", False),
    ".shp": ("ESRI Shapefile", False),
    ".geojson": ("GeoJSON", True),  # RFC 7946: always WGS84
    ".json": ("GeoJSON", True),
    ".fgb": ("FlatGeobuf", False),
    ".parquet": ("parquet", False),
}
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg")  # the files beside a .shp that are part of it


POLYGONS_SUFFIX = "_polygons"


def vector_files(path: Path) -> list[Path]:
    """The files one vector output is: itself, a shapefile's parts beside it, and its own QGIS style
    (:func:`vector_style`: never a raster's)."""
    parts = [path, *(path.with_suffix(part) for part in SHAPEFILE_PARTS)] if path.suffix == ".shp" else [path]
    style = vector_style(path)
    return parts if style is None else [*parts, style]


def vector_style(path: Path) -> Path | None:
    """The QGIS style that belongs to a vector file: ``<stem>.qml``, unless it is a GeoPackage (its style is
    inside) or a raster of that stem owns the name (an earlier run's ``<scene>.shp`` beside ``<scene>.tif``):
    writing or removing the polygons' style must never touch the raster's."""
    if path.suffix.lower() == ".gpkg" or any(path.with_suffix(ext).exists() for ext in (".tif", ".tiff")):
        return None
    return path.with_suffix(".qml")


def polygons_beside(raster: Path, fmt: str) -> Path:
    """Where the polygons of a class raster go: ``<stem>.gpkg`` (its style lives inside it), else
    ``<stem>_polygons.<fmt>``. QGIS loads ``<stem>.qml`` beside whatever it opens, and the raster's style owns
    that name: polygons in a format styled by a sidecar need a stem, and so a ``.qml``, of their own."""
    return raster.with_suffix(".gpkg") if fmt == "gpkg" else raster.with_name(f"{raster.stem}{POLYGONS_SUFFIX}.{fmt}")


# what --vectorize / --format accept (".json" is GeoJSON under another extension)
FORMAT_NAMES: tuple[str, ...] = tuple(ext[1:] for ext in FORMATS if ext != ".json")
