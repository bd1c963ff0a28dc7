"""The mosaic's grid: one CRS, one pixel size, one extent, cut into fixed-size tiles.

Defaults follow the archive. The CRS is the one most observations use (ties: the one of the earliest), so a
district inside one UTM zone keeps its pixels and only the scenes of the neighbouring zone are resampled. The
pixel size is the finest among the observations already in that CRS. The grid is anchored on the pixel
corners of the first such observation at that size (extended by whole pixels), so a scene on the output grid
is copied, never resampled: a one-scene mosaic on its own grid is that scene, bit for bit. Without such a
scene (a CRS or resolution the user chose), corners are multiples of the pixel size, as ``gdalwarp -tap``
makes them.

The extent is the union of the observations' footprints (each densified along its edges, so a footprint in
another zone is not cut at its corners), or the bounds or AOI the user gave, snapped outwards to whole pixels.
Tiles are ``tile`` pixels a side in raster order, the last of a row and column cut at the extent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.mosaic.inputs import Observation

Bounds = tuple[float, float, float, float]
DENSIFY = 21  # points per footprint edge when a footprint is carried into another CRS


@dataclass(frozen=True)
class Tile:
    """One output tile: its place in the tile grid, its window of the mosaic and its own transform."""

    row: int
    col: int
    window: Window
    transform: Affine

    @property
    def name(self) -> str:
        return f"r{self.row:03d}_c{self.col:03d}"

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.window.height), int(self.window.width)

    @property
    def bounds(self) -> Bounds:
        return array_bounds(*self.shape, self.transform)


@dataclass(frozen=True)
class OutputGrid:
    crs: CRS
    transform: Affine
    width: int
    height: int
    tile: int

    def tiles(self) -> Iterator[Tile]:
        for row, top in enumerate(range(0, self.height, self.tile)):
            for col, left in enumerate(range(0, self.width, self.tile)):
                window = Window(left, top, min(self.tile, self.width - left), min(self.tile, self.height - top))
                yield Tile(row, col, window, self.transform * Affine.translation(left, top))

    @property
    def bounds(self) -> Bounds:
        return array_bounds(self.height, self.width, self.transform)

    def describe(self) -> dict[str, object]:
        """The grid as the mosaic's record holds it (a changed grid redoes every tile)."""
        return {
            "crs": self.crs.to_string(),
            "transform": list(self.transform.to_gdal()),
            "width": self.width,
            "height": self.height,
            "tile": self.tile,
        }


def parse_crs(text: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except Exception as exc:  # rasterio raises CRSError, pyproj its own
        raise GeoSegError(f"--crs {text!r} is not a CRS GDAL knows (give EPSG:code, WKT or a PROJ string)") from exc


def default_crs(observations: Sequence[Observation]) -> CRS:
    """The CRS most observations use; ties: the one of the earliest."""
    counts = Counter(o.crs.to_string() for o in observations)
    most = max(counts.values())
    return next(o.crs for o in observations if counts[o.crs.to_string()] == most)


def footprint(observation: Observation, crs: CRS) -> Bounds:
    """An observation's bounds in ``crs`` (edges densified: a UTM footprint is not a lon/lat rectangle)."""
    if observation.crs == crs:
        return observation.bounds
    return transform_bounds(observation.crs, crs, *observation.bounds, densify_pts=DENSIFY)


def intersects(a: Bounds, b: Bounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_grid(
    observations: Sequence[Observation],
    crs: CRS | None,
    resolution: float | None,
    bounds: Bounds | None,
    tile: int,
) -> OutputGrid:
    """The output grid (see the module docstring). ``bounds`` are in the output CRS."""
    if tile <= 0:
        raise GeoSegError(f"--tile-size must be a positive number of pixels (got {tile})")
    if resolution is not None and not (resolution > 0 and math.isfinite(resolution)):
        raise GeoSegError(f"--resolution must be a positive number of CRS units (got {resolution:g})")
    crs = crs or default_crs(observations)
    native = [o for o in observations if o.crs == crs]
    if resolution is not None:
        xres = yres = resolution
    elif native:
        xres, yres = min(o.resolution for o in native)
    else:
        raise GeoSegError(f"no scene is in {crs.to_string()}: give the pixel size with --resolution")
    anchors = [o for o in native if o.resolution == (xres, yres)]
    x0, y0 = (anchors[0].transform.c, anchors[0].transform.f) if anchors else (0.0, 0.0)
    if bounds is None:
        feet = [footprint(o, crs) for o in observations]
        bounds = (min(f[0] for f in feet), min(f[1] for f in feet), max(f[2] for f in feet), max(f[3] for f in feet))
    left, bottom, right, top = (float(v) for v in bounds)
    if not (right > left and top > bottom) or not all(math.isfinite(v) for v in bounds):
        raise GeoSegError(f"the extent {bounds} is empty or not finite in {crs.to_string()}")
    # Snap outwards to the anchor's pixel corners; a hair of tolerance keeps an exact corner from adding a pixel.
    eps = 1e-6
    col0, col1 = math.floor((left - x0) / xres + eps), math.ceil((right - x0) / xres - eps)
    row0, row1 = math.floor((y0 - top) / yres + eps), math.ceil((y0 - bottom) / yres - eps)
    left, top = x0 + col0 * xres, y0 - row0 * yres
    width, height = col1 - col0, row1 - row0
    if width * height > 2**40:
        raise GeoSegError(f"the grid would be {width} x {height} px: check --resolution and the extent")
    return OutputGrid(crs, Affine(xres, 0.0, left, 0.0, -yres, top), width, height, tile)
