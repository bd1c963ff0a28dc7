"""Streaming, atomic writers: full-width row bands in, a Cloud-Optimized GeoTIFF out."""

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
PROBABILITY_NODATA = 255
PROBABILITY_SCALE = 254  # probability p is stored as round(p * 254); 255 is nodata
_BLOCK = 512


def temp_sibling(path: Path) -> Path:
    """A unique name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


class CogWriter:
    """Write a uint8 raster row band by row band; publish it as a COG only when complete.

    Rows go to a tiled GeoTIFF under a temporary name; :meth:`close` converts it to a Cloud-Optimized
    GeoTIFF, then renames it into place. A crash therefore never leaves a file under the final name that
    looks finished. Memory is what the caller hands over per call; GDAL streams the rest.

    Args:
        path: final output path.
        scene: georeferencing (CRS, transform, size) to copy from the source scene.
        descriptions: one name per band.
        nodata: the nodata value of every band.
        overview_resampling: ``nearest`` for classes (averaging ids is meaningless), ``average`` for
            probabilities.
    """

    def __init__(
        self, path: Path, scene: SceneInfo, descriptions: Sequence[str], nodata: int, overview_resampling: str
    ) -> None:
        self.path = Path(path)
        self.scene = scene
        self.overview_resampling = overview_resampling
        self._staging = temp_sibling(self.path)
        profile = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": len(descriptions),
            "dtype": "uint8",
            "crs": scene.crs,
            "transform": scene.transform,
            "nodata": nodata,
            # The staging file lives for one scene: fastest compression; the COG gets deflate.
            "compress": "zstd",
            "zstd_level": 1,
            "tiled": True,
            "blockxsize": _BLOCK,
            "blockysize": _BLOCK,
            "BIGTIFF": "IF_SAFER",
            "interleave": "band",
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dst = rasterio.open(self._staging, "w", **profile)
        for band, text in enumerate(descriptions, start=1):
            self._dst.set_band_description(band, text)
        self.rows_written = 0

    def write_rows(self, row_off: int, rows: np.ndarray) -> None:
        """Write a full-width band of rows (``[n, width]`` for one band, ``[bands, n, width]``) at ``row_off``."""
        array = rows[None] if rows.ndim == 2 else rows
        if array.shape[-1] != self.scene.width:
            raise ValueError(f"row band is {array.shape[-1]} wide, raster is {self.scene.width}")
        window = Window(0, row_off, array.shape[-1], array.shape[-2])
        self._dst.write(array.astype(np.uint8, copy=False), window=window)
        self.rows_written += array.shape[-2]

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
                overview_resampling=self.overview_resampling,
                bigtiff="if_safer",
                num_threads="ALL_CPUS",
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

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ClassRasterWriter(CogWriter):
    """A class raster: one uint8 band, colour table and class names from the bundle, nodata 255.

    Args:
        class_ids: value written for each model output index.
        class_names: names stored as ``class_<id>`` tags, shown by QGIS and gdalinfo.
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
        super().__init__(path, scene, ["class"], CLASS_NODATA, "nearest")
        self._dst.write_colormap(1, {cid: (*rgb, 255) for cid, rgb in zip(class_ids, colors, strict=True)})
        self._dst.update_tags(**{f"class_{cid}": name for cid, name in zip(class_ids, class_names, strict=True)})


class ProbabilityRasterWriter(CogWriter):
    """One uint8 band per class (``round(p * 254)``), then a ``confidence`` band (the top probability)."""

    def __init__(self, path: Path, scene: SceneInfo, class_names: Sequence[str]) -> None:
        super().__init__(path, scene, [*class_names, "confidence"], PROBABILITY_NODATA, "average")
        self._dst.update_tags(scale=str(1 / PROBABILITY_SCALE), meaning="probability = value / 254")
