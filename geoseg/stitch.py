"""Blend overlapping tile probabilities into a class raster, holding only the open row band in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from geoseg.io.writer import CLASS_NODATA
from geoseg.tiling import TileGrid


class RowSink(Protocol):
    """Where finished rows go (a :class:`~geoseg.io.writer.ClassRasterWriter`, or a test's array)."""

    def write_rows(self, row_off: int, classes: np.ndarray) -> None: ...


@dataclass
class TileResult:
    """A tile after the model: softmax probabilities over the read window, or None when it was skipped."""

    index: int
    probabilities: np.ndarray | None  # [classes, tile, tile] float32
    valid: np.ndarray  # [tile, tile] bool


@dataclass
class StitchStats:
    tiles_run: int = 0
    tiles_skipped: int = 0
    class_pixels: dict[int, int] = field(default_factory=dict)


class Stitcher:
    """Accumulate weighted probabilities tile by tile and flush rows as soon as no tile can touch them.

    Tiles may arrive in any order (Ray returns them as they finish); they are *applied* strictly in index
    order, so floating-point sums, and therefore the output bytes, do not depend on worker count or timing.
    Memory is one band of ``core`` rows x raster width x classes, whatever the raster height.
    """

    def __init__(self, grid: TileGrid, class_ids: np.ndarray, sink: RowSink) -> None:
        self.grid, self.sink = grid, sink
        self.width, self.height = grid.width, grid.height
        num_classes = len(class_ids)
        self.class_ids = np.asarray(class_ids, dtype=np.uint8)
        band = grid.tile - 2 * grid.halo
        self._acc = np.zeros((num_classes, band, self.width), dtype=np.float32)
        self._weight = np.zeros((band, self.width), dtype=np.float32)
        self._valid = np.zeros((band, self.width), dtype=bool)
        self._band_start = 0
        self._next = 0
        self._pending: dict[int, TileResult] = {}
        self.stats = StitchStats()

    @property
    def done(self) -> bool:
        return self._next == len(self.grid)

    def add(self, result: TileResult) -> None:
        """Take one tile result; apply every tile now in sequence; flush finished rows."""
        if result.index < self._next or result.index in self._pending:
            return  # a retried task delivered the same tile twice: already counted
        self._pending[result.index] = result
        while self._next in self._pending:
            self._apply(self._pending.pop(self._next))
            self._next += 1

    def _apply(self, result: TileResult) -> None:
        tile = self.grid[result.index]
        rows, cols = tile.core_in_tile
        r0 = int(tile.core.row_off) - self._band_start
        c0 = int(tile.core.col_off)
        region = (slice(r0, r0 + int(tile.core.height)), slice(c0, c0 + int(tile.core.width)))
        valid = result.valid[rows, cols]
        self._valid[region] |= valid
        if result.probabilities is None:
            self.stats.tiles_skipped += 1
        else:
            self.stats.tiles_run += 1
            weights = self.grid.blend_weights(tile) * valid
            self._acc[(slice(None), *region)] += result.probabilities[:, rows, cols] * weights
            self._weight[region] += weights
        if tile.col == self.grid.cols - 1:
            last_row = tile.row == self.grid.rows - 1
            self._flush(self.height if last_row else self.grid.row_span(tile.row + 1)[0])

    def _flush(self, stop: int) -> None:
        n = stop - self._band_start
        classes = self.class_ids[np.argmax(self._acc[:, :n], axis=0)]
        classes[(self._weight[:n] <= 0) | ~self._valid[:n]] = CLASS_NODATA
        self.sink.write_rows(self._band_start, classes)
        found, counts = np.unique(classes[classes != CLASS_NODATA], return_counts=True)
        for cid, count in zip(found.tolist(), counts.tolist(), strict=True):
            self.stats.class_pixels[cid] = self.stats.class_pixels.get(cid, 0) + count
        for array in (self._acc, self._weight, self._valid):
            keep = array.shape[-2] - n
            array[..., :keep, :] = array[..., n:, :]
            array[..., keep:, :] = 0
        self._band_start = stop
