"""Read one block's window of a scene for the model worker. numpy + rasterio only: it runs in reader processes.

A block is read as one window (its tiles plus their halos), decoded once, in the source's own pixel type
when torch can take it (16-bit imagery travels at half the bytes of float32; the model worker normalises).
Blocks of a scene are read by one reader that keeps the file open, in vertical bands of :data:`COLUMN_BAND`
pixels, each band in raster order, with GDAL's block cache holding the source blocks under one block row of a
band: the next block in the row reuses the source blocks under the shared halo, and the next block row the
source rows under its top halo, so every source block is decoded once per band. On GPU nodes GDAL's own
threads (``GDAL_NUM_THREADS``, set per reader process) decode the source blocks of one window in parallel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import rasterio

from geoseg.inference.tiling import Block
from geoseg.io.masks import read_masked
from geoseg.io.normalisation import Normalisation
from geoseg.io.raster import OpenDatasets, PadMode, SceneInfo, keep_gdal_environment, pixel_dtype, read_tile


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
COLUMN_BAND = 8192  # output pixels: the width of the vertical bands a reader walks (see block_cache_bytes)


def column_band_blocks(block_size: int) -> int:
    """Block columns per vertical band: a reader walks its stripe band by band, each band in raster order (see
    :func:`block_cache_bytes`)."""
    return max(1, COLUMN_BAND // block_size)


def block_cache_bytes(scene: SceneInfo, block: Block) -> int:
    """GDAL block cache that keeps the source blocks under one block row of a column band.

    A reader reads its stripe in vertical bands of :data:`COLUMN_BAND` output pixels, each band in raster order
    (:func:`geoseg.inference.scene.scene_work`). Each source block is then decoded once per band: the next
    block reuses the source blocks under the halo it shares with this one, and the next block row the source
    rows under its top halo (GDAL's cache is least-recently-used, and a window's blocks are touched column by
    column, so the rows the next block row needs are still there when it starts, if the cache holds every
    source block of one block row of the band). The price of bands is the source-block columns under a band
    edge's halo, decoded twice: one or two 512-px columns per edge, measured +0.3-0.5 CPU-s (+25 %) on an
    8192² scene cut in 4096-px bands, hence bands of 8192 px (a 10 980-px Sentinel-2 scene pays ~9 %). The gain
    is memory that stops growing with the scene's width: a reader of a 40 000-px-wide mosaic of 4 uint16 bands
    caches 140 MiB instead of 605. Sized per scene rather than GDAL's default (5 % of RAM), which would let a
    long scene's blocks pile up; capped.
    """
    block_rows, block_cols = scene.block_shape
    margin = int(block.read.width - block.output.width)  # the halos of the window's outer tiles
    band = min(scene.width, max(COLUMN_BAND, int(block.output.width)) + margin + 2 * block_cols)
    rows = int(block.read.height) + 2 * block_rows  # every source row a window touches, and slack for the LRU
    pixel_bytes = scene.count * np.dtype(pixel_dtype(scene.dtype)).itemsize
    # Plain ints: numpy's clip on scalars cost 0.05-0.1 ms a block, with the interpreter lock held (profiled).
    return min(max(int(rows * band * pixel_bytes), _MIN_BLOCK_CACHE), _MAX_BLOCK_CACHE)


def read_block(scene: SceneInfo, block: Block, norm: Normalisation, pad_mode: PadMode = "reflect") -> BlockPixels:
    """Read ``block``'s window of ``scene`` with its validity (nodata, NaN/inf, padding, assumed nodata, and the
    scene's mask: :mod:`geoseg.io.masks`)."""
    started = time.perf_counter()
    keep_gdal_environment()
    with rasterio.Env(GDAL_CACHEMAX=block_cache_bytes(scene, block)):
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
