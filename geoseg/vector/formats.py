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


def vector_files(path: Path) -> list[Path]:
    """The files one vector output is: itself, and a shapefile's parts beside it."""
    return [path, *(path.with_suffix(part) for part in SHAPEFILE_PARTS)] if path.suffix == ".shp" else [path]


# what --vectorize / --format accept (".json" is GeoJSON under another extension)
FORMAT_NAMES: tuple[str, ...] = tuple(ext[1:] for ext in FORMATS if ext != ".json")
