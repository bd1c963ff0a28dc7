"""Read one block's window of a scene for the model worker. numpy + rasterio only: it runs in reader processes.

A block is read as one window (its tiles plus their halos), decoded once, in the source's own pixel type
when torch can take it (16-bit imagery travels at half the bytes of float32; the model worker normalises).
Blocks of a scene are read in raster order by one reader that keeps the file open, with GDAL's block cache
holding a band of source blocks across the scene's width: the next block in the row reuses the source blocks
under the shared halo, and the next block row the source rows under its top halo, so every source block is
decoded once. GDAL's own threads (``GDAL_NUM_THREADS``, set per reader process) decode the source blocks of
one window in parallel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import rasterio

from geoseg.inference.tiling import Block
from geoseg.io.masks import read_masked
from geoseg.io.normalisation import Normalisation
from geoseg.io.raster import OpenDatasets, PadMode, SceneInfo, pixel_dtype, read_tile


@dataclass
class BlockPixels:
    """A block's read window as the model worker takes it."""

    data: np.ndarray  # [bands, height, width] in the pixel type of :func:`geoseg.io.raster.pixel_dtype`
    valid: np.ndarray | None  # [height, width] bool; None when every pixel is valid (the common case)
    read_seconds: float = 0.0
    masked_pixels: int = 0  # pixels of the block's output window that the scene's mask hides

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.valid is None else self.valid.nbytes)


# One per process: successive blocks of a scene reuse the source blocks the previous one decoded.
_DATASETS = OpenDatasets()
_MASKS = OpenDatasets()
_MIN_BLOCK_CACHE = 16 * 2**20
_MAX_BLOCK_CACHE = 1024 * 2**20


def block_cache_bytes(scene: SceneInfo, read_height: int) -> int:
    """GDAL block cache that keeps every source block under one block row, across the scene's width.

    Reads in raster order then decode each source block once: the next block reuses the source blocks under
    the halo it shares with this one, and the next block row the source rows under its top halo (GDAL's cache
    is least-recently-used, and a window's blocks are touched column by column, so the rows the next block row
    needs are still there when it starts). Sized per scene rather than GDAL's default (5 % of RAM), which would
    let a long scene's blocks pile up and make memory grow with its height; capped, past which a very wide
    scene decodes its halo rows twice (slower, same pixels).
    """
    block_rows = scene.block_shape[0]
    row_bytes = scene.width * scene.count * np.dtype(pixel_dtype(scene.dtype)).itemsize
    return int(np.clip((read_height + 2 * block_rows) * row_bytes, _MIN_BLOCK_CACHE, _MAX_BLOCK_CACHE))


def read_block(scene: SceneInfo, block: Block, norm: Normalisation, pad_mode: PadMode = "reflect") -> BlockPixels:
    """Read ``block``'s window of ``scene`` with its validity (nodata, NaN/inf, padding, assumed nodata, and the
    scene's mask: :mod:`geoseg.io.masks`)."""
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=block_cache_bytes(scene, int(block.read.height))):
        src = _DATASETS.get(scene.path)
        data, valid = read_tile(src, block.read, list(norm.band_indexes), pad_mode, native=True)
        norm.mask_assumed_nodata(data, valid, src.nodata)
        masked_pixels = 0
        if scene.mask is not None:
            masked = read_masked(scene, scene.mask, block.read, pad_mode == "reflect", _MASKS)
            valid &= ~masked
            r, c = int(block.output.row_off - block.read.row_off), int(block.output.col_off - block.read.col_off)
            masked_pixels = int(masked[r : r + int(block.output.height), c : c + int(block.output.width)].sum())
    return BlockPixels(data, None if valid.all() else valid, time.perf_counter() - started, masked_pixels)
