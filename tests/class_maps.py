"""Tiny class maps for the area tests, written as geoseg's own class rasters are (colour table, class names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from geoseg.bundle import PALETTE
from geoseg.io.writer import class_tags

TRANSFORM = Affine(30, 0, 600_000, 0, -30, 4_000_000)


def write_class_map(
    path: Path,
    classes: np.ndarray,
    names: dict[int, str] | None = None,
    crs: str = "EPSG:32617",
    transform: Affine = TRANSFORM,
    nodata: int | None = 255,
    block: int = 64,
    dtype: str = "uint8",
) -> Path:
    """``classes`` ([h, w]) as a tiled GeoTIFF with ``class_<id>`` names and a colour table (none when
    ``names`` is None: a map written by another tool)."""
    height, width = classes.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        tiled=True,
        blockxsize=block,
        blockysize=block,
    ) as dst:
        dst.write(classes.astype(dtype), 1)
        if names:
            ids = sorted(names)
            dst.write_colormap(1, {i: (*PALETTE[i % len(PALETTE)], 255) for i in ids})
            dst.update_tags(**class_tags(ids, [names[i] for i in ids]))
    return path
