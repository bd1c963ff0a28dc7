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

Resampling is then numpy in float64: nearest takes the source pixel containing the position; bilinear weighs
the four source pixels around it, valid ones only (nodata never mixes in), renormalised, rounded half to even.
A scene whose pixels are the grid's (same CRS, pixel size and lattice) is sliced, not resampled.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from geoseg.io.raster import same_projection
from geoseg.mosaic.grid import OutputGrid, Tile
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


def warp(
    path: str, bands: list[int], tile: Tile, grid: OutputGrid, obs: Observation, nodata: int, bilinear: bool
) -> np.ndarray:
    """``bands`` of ``path`` (a raster on ``obs``'s grid) on ``tile``: ``[bands, h, w]`` uint8, nodata outside."""
    h, w = tile.shape
    offset = _offset(grid, obs)
    if offset is not None:  # the scene's pixels are the grid's: a slice, not a resampling
        c0, r0 = offset[0] + int(tile.window.col_off), offset[1] + int(tile.window.row_off)
        return _read(path, bands, c0, r0, c0 + w, r0 + h, nodata)
    sx, sy = source_positions(tile, grid, obs)
    finite = np.isfinite(sx) & np.isfinite(sy)
    if not finite.any():
        return np.full((len(bands), h, w), nodata, np.uint8)
    margin = 1 if bilinear else 0
    c0 = max(int(np.floor(sx[finite].min())) - margin, -1)
    r0 = max(int(np.floor(sy[finite].min())) - margin, -1)
    c1 = min(int(np.floor(sx[finite].max())) + margin + 1, obs.width + 1)
    r1 = min(int(np.floor(sy[finite].max())) + margin + 1, obs.height + 1)
    out = np.full((len(bands), h, w), nodata, np.uint8)
    if c1 <= c0 or r1 <= r0:
        return out
    source = _read(path, bands, c0, r0, c1, r1, nodata)
    sx, sy = np.where(finite, sx - c0, -10.0), np.where(finite, sy - r0, -10.0)
    sh, sw = source.shape[1:]
    if not bilinear:
        ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
        inside = (ix >= 0) & (iy >= 0) & (ix < sw) & (iy < sh)
        values = source[:, np.clip(iy, 0, sh - 1), np.clip(ix, 0, sw - 1)]
        return np.where(inside[None], values, nodata).astype(np.uint8)
    x0f, y0f = np.floor(sx - 0.5), np.floor(sy - 0.5)
    fx, fy = sx - 0.5 - x0f, sy - 0.5 - y0f
    x0, y0 = x0f.astype(np.int64), y0f.astype(np.int64)
    total = np.zeros((len(bands), h, w))
    weight = np.zeros((h, w))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (xx >= 0) & (yy >= 0) & (xx < sw) & (yy < sh)
            values = source[:, np.clip(yy, 0, sh - 1), np.clip(xx, 0, sw - 1)]
            ok = inside & (values[0] != nodata) & (wx * wy > 0)
            kernel = np.where(ok, wx * wy, 0.0)
            total += values * kernel
            weight += kernel
    has = weight > 0
    result = np.round(total / np.where(has, weight, 1.0))
    out[:] = np.where(has[None], np.clip(result, 0, 255), nodata).astype(np.uint8)
    return out
