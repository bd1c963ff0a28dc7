"""Streaming, atomic writer for class rasters: rows in, a Cloud-Optimized GeoTIFF out."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from geoseg.io.raster import SceneInfo

CLASS_NODATA = 255
_BLOCK = 512


def temp_sibling(path: Path) -> Path:
    """A unique name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


class ClassRasterWriter:
    """Write a uint8 class raster row band by row band; publish it as a COG only when complete.

    Rows go to a tiled GeoTIFF under a temporary name; :meth:`close` converts it to a Cloud-Optimized
    GeoTIFF (overviews resampled with ``nearest``, since averaging class ids is meaningless), then renames it
    into place. A crash therefore never leaves a file under the final name that looks finished.

    Args:
        path: final output path.
        scene: georeferencing (CRS, transform, size) to copy from the source scene.
        class_ids: value written for each model output index.
        class_names: names stored in the raster metadata (``class_<id>`` tags), shown by QGIS/gdalinfo.
        colors: RGB colour per class, written as the colour table.
    """

    def __init__(
        self,
        path: Path,
        scene: SceneInfo,
        class_ids: Sequence[int],
        class_names: Sequence[str],
        colors: Sequence[tuple[int, int, int]],
    ) -> None:
        self.path = Path(path)
        self.scene = scene
        self._staging = temp_sibling(self.path)
        profile = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": 1,
            "dtype": "uint8",
            "crs": scene.crs,
            "transform": scene.transform,
            "nodata": CLASS_NODATA,
            "compress": "deflate",
            "tiled": True,
            "blockxsize": _BLOCK,
            "blockysize": _BLOCK,
            "BIGTIFF": "IF_SAFER",
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dst = rasterio.open(self._staging, "w", **profile)
        self._dst.write_colormap(1, {cid: (*rgb, 255) for cid, rgb in zip(class_ids, colors, strict=True)})
        self._dst.update_tags(**{f"class_{cid}": name for cid, name in zip(class_ids, class_names, strict=True)})
        self._dst.set_band_description(1, "class")
        self.rows_written = 0

    def write_rows(self, row_off: int, classes: np.ndarray) -> None:
        """Write a full-width band of rows starting at ``row_off``."""
        if classes.shape[1] != self.scene.width:
            raise ValueError(f"row band is {classes.shape[1]} wide, raster is {self.scene.width}")
        self._dst.write(classes.astype(np.uint8), 1, window=Window(0, row_off, classes.shape[1], classes.shape[0]))
        self.rows_written += classes.shape[0]

    def close(self) -> Path:
        """Finish the file: build the COG and move it into place. Returns the final path."""
        self._dst.close()
        cog_staging = temp_sibling(self.path)
        try:
            rasterio.shutil.copy(
                self._staging,
                cog_staging,
                driver="COG",
                compress="deflate",
                blocksize=_BLOCK,
                overview_resampling="nearest",
                bigtiff="if_safer",
            )
            os.replace(cog_staging, self.path)
        finally:
            for leftover in (self._staging, cog_staging):
                leftover.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is left untouched."""
        if not self._dst.closed:
            self._dst.close()
        self._staging.unlink(missing_ok=True)

    def __enter__(self) -> ClassRasterWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
