"""Class maps as ``change`` and ``sample`` read them: block by block, with their class table and pixel areas.

A map is read in its own blocks (the tiles of a COG), so memory holds one block and each compressed block is
decoded once. Areas are square metres: on a projected grid one pixel's area in the CRS's unit squared, times
that unit in metres; on a geographic grid each pixel row's area in the equal-area CRS that polygon areas use
(:func:`geoseg.vector.export.equal_area_crs`), where a lon/lat rectangle is a rectangle, so the area is exact.
They are computed once per map (one value, or one per row) and sliced per window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.enums import MaskFlags
from rasterio.env import Env
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.io.raster import valid_mask
from geoseg.io.styles import ClassStyle, class_table
from geoseg.vector.export import equal_area_crs
from geoseg.vector.polygonize import open_class_raster

READ_CACHE = 16 * 2**20
W = TypeVar("W")
T = TypeVar("T")
CHUNK = 2048  # pixels a side of one read: 16 blocks of a COG, decoded in parallel


@dataclass(frozen=True)
class ClassMap:
    """An open class map: the dataset, its classes (from geoseg's tags and colour table; empty for a map
    written elsewhere) and what a pixel measures."""

    path: Path
    src: rasterio.DatasetReader
    classes: list[ClassStyle]

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.classes]

    def windows(self) -> Iterator[Window]:
        """The map's blocks in raster order: its tiles, or bands of whole rows when it is stored in strips."""
        bh, bw = self.src.block_shapes[0]
        width, height = self.src.width, self.src.height
        if bw >= width:  # strips (or one tile wider than the map): bands of about a megapixel of whole rows
            bh = max(bh, -(-(2**20 // width) // bh) * bh)
        for row in range(0, height, bh):
            for col in range(0, width, bw):
                yield Window(col, row, min(bw, width - col), min(bh, height - row))

    def chunks(self, side: int = CHUNK) -> Iterator[tuple[Window, list[Window]]]:
        """Whole blocks grouped into windows of about ``side`` pixels a side, each with the blocks inside it.

        One read of many blocks lets GDAL decode them on all cores (``GDAL_NUM_THREADS``); the blocks are kept
        so a caller can still count per block (``sample`` reads single blocks again in its second pass)."""
        bh, bw = next(self.windows()).height, next(self.windows()).width
        rows, cols = max(1, side // bh), max(1, side // bw)
        width, height = self.src.width, self.src.height
        for row in range(0, height, rows * bh):
            for col in range(0, width, cols * bw):
                chunk = Window(col, row, min(cols * bw, width - col), min(rows * bh, height - row))
                blocks = [
                    Window(c, r, min(bw, width - c), min(bh, height - r))
                    for r in range(row, min(row + rows * bh, height), bh)
                    for c in range(col, min(col + cols * bw, width), bw)
                ]
                yield chunk, blocks

    @property
    def plain_nodata(self) -> int | None:
        """For a uint8 map whose only mask is a nodata value (or none): that value (-1: none), so validity is
        one comparison and counts one ``bincount``; None when GDAL's mask must be asked."""
        if self.src.dtypes[0] != "uint8":
            return None
        flags = self.src.mask_flag_enums[0]
        if flags == [MaskFlags.all_valid]:
            return -1
        nodata = self.src.nodata
        if flags == [MaskFlags.nodata] and nodata is not None and float(nodata).is_integer() and 0 <= nodata <= 255:
            return int(nodata)
        return None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Class ids (int64 where the raster's type is wider than uint8) and validity of ``window``."""
        values = self.src.read(1, window=window)
        valid = valid_mask(self.src, [1], window, values[None])  # the nodata comparison, not a second decode
        if values.dtype.kind == "f":
            valid &= np.isfinite(values)
            if np.any(values[valid] != np.round(values[valid])):
                raise GeoSegError("holds fractional values: not a class map", self.path)
            values = np.where(valid, values, 0).astype(np.int64)
        elif values.dtype != np.uint8:
            values = values.astype(np.int64)
        if values.dtype.kind == "i" and np.any(values[valid] < 0):
            raise GeoSegError("holds negative class ids: declare its nodata value or remap them", self.path)
        return values, valid

    @cached_property
    def _row_areas(self) -> np.ndarray:
        """Square metres of a pixel: ``[1, 1]`` on a projected grid, one per row (``[height, 1]``) on a
        geographic one. Computed once: parsing the CRS and building a transformer per window cost 0.14 s of
        a 40000² sample."""
        return _pixel_areas(self.src.crs, self.src.transform, 0, self.src.height)

    @property
    def equal_pixels(self) -> bool:
        """Whether every pixel has the same area (a projected grid)."""
        return not self.src.crs.is_geographic

    def pixel_areas(self, window: Window) -> np.ndarray:
        """Square metres of each pixel of ``window``, shaped to broadcast over it (``[h, 1]`` or ``[1, 1]``)."""
        if self.equal_pixels:
            return self._row_areas
        return self._row_areas[int(window.row_off) : int(window.row_off + window.height)]


def open_map(path: Path, role: str = "map") -> ClassMap:
    """A class map for areas: one band of class ids with a CRS and geotransform; one-line errors otherwise."""
    src = open_class_raster(path)
    try:
        classes = class_table(src)
        cmap = ClassMap(Path(path), src, classes)
        cmap.pixel_areas(Window(0, 0, 1, 1))  # a CRS that cannot measure areas fails here, in one line
    except GeoSegError:
        src.close()
        raise
    except Exception as exc:
        src.close()
        raise GeoSegError(f"the {role}'s CRS cannot measure areas ({exc})", path) from exc
    return cmap


@contextlib.contextmanager
def opened(path: Path, role: str = "map") -> Iterator[ClassMap]:
    """An open map, read under a small GDAL block cache (each block is decoded once and used at once; GDAL's
    default cache, 5 % of RAM, would only fill up with blocks never read again) and decoded on all cores."""
    with _read_env():
        cmap = open_map(path, role)
        try:
            yield cmap
        finally:
            cmap.src.close()


def _read_env() -> Env:
    return rasterio.Env(GDAL_CACHEMAX=READ_CACHE, GDAL_NUM_THREADS="ALL_CPUS")


def _pixel_areas(crs: rasterio.crs.CRS, transform: rasterio.Affine, row0: int, height: int) -> np.ndarray:
    proj = ProjCRS.from_user_input(crs.to_wkt())
    if not proj.is_geographic:
        unit = proj.axis_info[0].unit_conversion_factor if proj.axis_info else 1.0
        side = abs(transform.a * transform.e - transform.b * transform.d)
        return np.full((1, 1), side * unit * unit)
    if transform.b or transform.d:
        raise GeoSegError("a rotated grid in geographic coordinates: warp it to a north-up grid first")
    to_equal_area = Transformer.from_crs(proj, equal_area_crs(), always_xy=True)
    rows = np.arange(row0, row0 + height + 1, dtype=np.float64)
    lat = np.clip(transform.f + rows * transform.e, -90.0, 90.0)
    _, y = to_equal_area.transform(np.zeros_like(lat), lat)
    x0, _ = to_equal_area.transform(np.array([0.0]), np.array([0.0]))
    x1, _ = to_equal_area.transform(np.array([abs(transform.a)]), np.array([0.0]))
    width = abs(float(x1[0] - x0[0]))  # a cylindrical equal-area projection: x is linear in longitude
    return (np.abs(np.diff(y)) * width)[:, None]


def read_ahead(windows: Iterable[W], read: Callable[[W], T]) -> Iterator[tuple[W, T]]:
    """Each window with ``read(window)``, the next window read in a background thread meanwhile: GDAL releases
    the GIL while it decodes, so decoding the next window overlaps the caller's numpy work on this one. Only
    the background thread reads, so no dataset is ever used by two threads at once."""

    def read_in_env(window: W) -> T:
        with _read_env():  # rasterio's environment is per thread: the reading thread needs its own
            return read(window)

    with ThreadPoolExecutor(1, thread_name_prefix="geoseg-read") as pool:
        pending: tuple[W, Future[T]] | None = None
        for window in windows:
            ahead = (window, pool.submit(read_in_env, window))
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = ahead
        if pending is not None:
            yield pending[0], pending[1].result()


def class_names(cmap: ClassMap, ids: list[int]) -> dict[int, str]:
    """Names of ``ids``: the map's own, else ``class <id>``."""
    own = {c.id: c.name for c in cmap.classes}
    return {i: own.get(i, f"class {i}") for i in ids}
