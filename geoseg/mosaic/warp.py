"""A scene's raster read onto one tile of the output grid, the same in every tiling.

GDAL's warper was the first choice and fails the mosaic's rule that no byte depends on the tile size: its
bilinear kernel computes in single precision relative to the chunk it warps, so the same output pixel came out
±1 in 7 % of the pixels of a probability raster warped whole or in 37-row strips (measured; the exact
transformer, ``tolerance=0``, changes nothing), and its nearest neighbour differed in a few pixels through the
approximate transformer. Here every output pixel's source position is a function of its *global* pixel index
alone:

* same CRS (or one differing only by datum tag): the pixel centre through both affine transforms, in float64;
* another CRS: exact transformations (PROJ) at the nodes of a lattice every :data:`STEP` output pixels,
  anchored at the grid's origin (not at the tile's), bilinearly interpolated between nodes. The nodes a pixel
  uses and its weights are the same whichever tile it falls in; between nodes 480 m apart the interpolation
  is off by micrometres.

Resampling is then numpy: nearest takes the source pixel containing the position; bilinear weighs the four
source pixels around it with integer weights (1/256 px), valid ones only (nodata never mixes in), renormalised
in exact integers, rounded half up.
A scene whose pixels are the grid's (same CRS, pixel size and lattice) is sliced, not resampled.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from geoseg.io.raster import same_projection
from geoseg.mosaic.grid import OutputGrid, Tile, footprint
from geoseg.mosaic.inputs import Observation

STEP = 16  # output pixels between exactly transformed lattice nodes


@lru_cache(maxsize=64)
def _transformer(dst_wkt: str, src_wkt: str) -> Transformer:
    return Transformer.from_crs(dst_wkt, src_wkt, always_xy=True)


def _offset(grid: OutputGrid, obs: Observation) -> tuple[int, int] | None:
    """Whole-pixel (col, row) of the grid's origin in the scene when both share one pixel lattice, else None."""
    g, s = grid.transform, obs.transform
    if (g.a, g.b, g.d, g.e) != (s.a, s.b, s.d, s.e) or not same_projection(grid.crs, obs.crs):
        return None
    col, row = (g.c - s.c) / s.a, (g.f - s.f) / s.e
    if abs(col - round(col)) > 1e-9 or abs(row - round(row)) > 1e-9:
        return None
    return round(col), round(row)


def source_positions(tile: Tile, grid: OutputGrid, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (col, row) in the scene of every tile pixel's centre (pixel ``i`` spans ``[i, i + 1)``)."""
    h, w = tile.shape
    row0, col0 = int(tile.window.row_off), int(tile.window.col_off)
    inverse = ~obs.transform
    if same_projection(grid.crs, obs.crs):
        cols = col0 + np.arange(w, dtype=np.float64) + 0.5
        rows = row0 + np.arange(h, dtype=np.float64) + 0.5
        gx, gy = np.meshgrid(cols, rows)
        x, y = grid.transform * (gx, gy)
        return inverse * (x, y)
    # Lattice nodes (global pixel indexes, multiples of STEP) covering the tile, transformed exactly.
    n0r, n0c = row0 // STEP, col0 // STEP
    n1r, n1c = math.ceil((row0 + h) / STEP), math.ceil((col0 + w) / STEP)
    node_rows = np.arange(n0r, n1r + 1, dtype=np.float64) * STEP
    node_cols = np.arange(n0c, n1c + 1, dtype=np.float64) * STEP
    ncx, ncy = np.meshgrid(node_cols + 0.5, node_rows + 0.5)
    x, y = grid.transform * (ncx, ncy)
    sx, sy = _transformer(grid.crs.to_wkt(), obs.crs.to_wkt()).transform(x, y)
    node_col, node_row = inverse * (np.asarray(sx), np.asarray(sy))
    pixel_rows, pixel_cols = row0 + np.arange(h), col0 + np.arange(w)
    ri, ci = pixel_rows // STEP - n0r, pixel_cols // STEP - n0c
    fr = ((pixel_rows % STEP) / STEP)[:, None]
    fc = ((pixel_cols % STEP) / STEP)[None, :]

    def interpolate(values: np.ndarray) -> np.ndarray:
        v00 = values[ri][:, ci]
        v01 = values[ri][:, ci + 1]
        v10 = values[ri + 1][:, ci]
        v11 = values[ri + 1][:, ci + 1]
        return (v00 * (1 - fc) + v01 * fc) * (1 - fr) + (v10 * (1 - fc) + v11 * fc) * fr

    return interpolate(node_col), interpolate(node_row)


def _read(obs_path: str, bands: list[int], c0: int, r0: int, c1: int, r1: int, nodata: int) -> np.ndarray:
    """Source pixels ``[r0, r1) x [c0, c1)``; outside the scene: nodata."""
    out = np.full((len(bands), r1 - r0, c1 - c0), nodata, np.uint8)
    with rasterio.open(obs_path) as src:
        a0, b0, a1, b1 = max(c0, 0), max(r0, 0), min(c1, src.width), min(r1, src.height)
        if a1 > a0 and b1 > b0:
            out[:, b0 - r0 : b1 - r0, a0 - c0 : a1 - c0] = src.read(bands, window=Window(a0, b0, a1 - a0, b1 - b0))
    return out


def reach(tile: Tile, grid: OutputGrid, obs: Observation) -> tuple[slice, slice] | None:
    """The rows and columns of ``tile`` that ``obs`` can reach: its footprint (densified edges) in grid pixels,
    two pixels wider on every side, clipped to the tile; None when it reaches none. Pixels outside are nodata
    for this scene, so no work is done there (a scene often covers a small part of a tile)."""
    left, bottom, right, top = footprint(obs, grid.crs)
    inverse = ~grid.transform
    xs, ys = inverse * (np.array([left, right, left, right]), np.array([top, top, bottom, bottom]))
    r0 = math.floor(float(np.min(ys))) - 2 - int(tile.window.row_off)
    r1 = math.ceil(float(np.max(ys))) + 2 - int(tile.window.row_off)
    c0 = math.floor(float(np.min(xs))) - 2 - int(tile.window.col_off)
    c1 = math.ceil(float(np.max(xs))) + 2 - int(tile.window.col_off)
    h, w = tile.shape
    r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


class Sampler:
    """Where each pixel of the part of ``tile`` a scene reaches (:attr:`region`) comes from in that scene:
    computed once, used for the scene's class raster (nearest) and its probabilities (bilinear), which share
    its grid. Arrays it returns cover the region only.

    Bilinear weights are integers (the fractions rounded to 1/256 of a pixel, the four weights of a pixel summing
    to 65 536), so the sums are exact int32 and the result, rounded half up, is the same in every tiling."""

    def __init__(self, tile: Tile, grid: OutputGrid, obs: Observation) -> None:
        self.region = reach(tile, grid, obs)  # (rows, cols) of the tile the scene can reach; None: none
        self.window: tuple[int, int, int, int] | None = None  # c0, r0, c1, r1 of the source read
        self.offset = _offset(grid, obs)
        if self.region is None:
            self.shape = (0, 0)
            return
        rows, cols = self.region
        part = replace(
            tile,
            window=Window(
                int(tile.window.col_off) + cols.start, int(tile.window.row_off) + rows.start, cols.stop - cols.start,
                rows.stop - rows.start,
            ),
        )  # fmt: skip
        self.shape = part.shape
        if self.offset is not None:  # the scene's pixels are the grid's: a slice, not a resampling
            c0, r0 = self.offset[0] + int(part.window.col_off), self.offset[1] + int(part.window.row_off)
            self.window = (c0, r0, c0 + self.shape[1], r0 + self.shape[0])
            return
        sx, sy = source_positions(part, grid, obs)
        finite = np.isfinite(sx) & np.isfinite(sy)
        if not finite.any():
            return
        c0 = max(int(np.floor(sx[finite].min())) - 1, -1)
        r0 = max(int(np.floor(sy[finite].min())) - 1, -1)
        c1 = min(int(np.floor(sx[finite].max())) + 2, obs.width + 1)
        r1 = min(int(np.floor(sy[finite].max())) + 2, obs.height + 1)
        if c1 <= c0 or r1 <= r0:
            return
        self.window = (c0, r0, c1, r1)
        # Positions relative to the window read. The window reaches one pixel past the scene (nodata there), so an
        # index clipped to the window lands on nodata whenever the position lies outside the scene.
        self._finite = None if finite.all() else finite.ravel()
        self._sx = np.where(finite, sx - c0, -10.0).ravel()
        self._sy = np.where(finite, sy - r0, -10.0).ravel()

    def _source(self, path: str, bands: list[int], nodata: int) -> np.ndarray:
        assert self.window is not None
        return _read(path, bands, *self.window, nodata)

    def _unplaced(self, values: np.ndarray, nodata: int) -> np.ndarray:
        """``values`` ``[pixel, band]`` with pixels of no position (outside the CRS's domain) set to nodata."""
        if self._finite is not None:
            values[~self._finite] = nodata
        return values

    def nearest(self, path: str, bands: list[int], nodata: int) -> np.ndarray:
        """``bands`` of ``path`` on the region, ``[bands, h, w]`` uint8, nodata outside the scene."""
        h, w = self.shape
        if self.window is None:
            return np.full((len(bands), h, w), nodata, np.uint8)
        source = self._source(path, bands, nodata)
        if self.offset is not None:
            return source
        sh, sw = source.shape[1:]
        ix = np.clip(np.floor(self._sx).astype(np.int64), 0, sw - 1)
        iy = np.clip(np.floor(self._sy).astype(np.int64), 0, sh - 1)
        values = source.reshape(len(bands), -1)[:, iy * sw + ix]
        return self._unplaced(values.T, nodata).T.reshape(len(bands), h, w)

    def bilinear(self, path: str, bands: list[int], nodata: int) -> np.ndarray:
        """``bands`` of ``path`` on the region by bilinear interpolation over the valid source pixels only (band
        1 says which are valid), ``[bands, h, w]`` uint8, nodata where none of the four is."""
        h, w = self.shape
        if self.window is None or self.offset is not None:
            return self.nearest(path, bands, nodata)  # a slice: the pixel itself
        source = self._source(path, bands, nodata)
        sh, sw = source.shape[1:]
        pixels = np.ascontiguousarray(source.reshape(len(bands), -1).T)  # [pixel, band]: one gather per tap
        fx, fy = self._sx - 0.5, self._sy - 0.5
        x0, y0 = np.floor(fx), np.floor(fy)
        ax = np.rint((fx - x0) * 256).astype(np.int32)  # 0..256: the weight of the right/lower neighbour
        ay = np.rint((fy - y0) * 256).astype(np.int32)
        x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
        columns = (np.clip(x0i, 0, sw - 1), np.clip(x0i + 1, 0, sw - 1))
        rows = (np.clip(y0i, 0, sh - 1) * sw, np.clip(y0i + 1, 0, sh - 1) * sw)
        total = np.zeros((h * w, len(bands)), np.int32)
        weight = np.zeros(h * w, np.int32)
        for row, wy in ((rows[0], 256 - ay), (rows[1], ay)):
            for column, wx in ((columns[0], 256 - ax), (columns[1], ax)):
                values = pixels[row + column]
                kernel = wx * wy
                kernel[values[:, 0] == nodata] = 0
                total += values * kernel[:, None]
                weight += kernel
        has = weight > 0
        result = (total + (weight // 2)[:, None]) // np.where(has, weight, 1)[:, None]
        result[~has] = nodata
        result = self._unplaced(result.astype(np.uint8), nodata)
        return np.ascontiguousarray(result.T).reshape(len(bands), h, w)
