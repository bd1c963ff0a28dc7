"""Blend overlapping tile probabilities into a class raster, holding only the open row band in memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from geoseg.io.writer import CLASS_NODATA, PROBABILITY_NODATA, PROBABILITY_SCALE
from geoseg.tiling import TileGrid


class RowSink(Protocol):
    """Where finished rows go (a :class:`~geoseg.io.writer.CogWriter`, or a test's array)."""

    def write_rows(self, row_off: int, rows: np.ndarray) -> None: ...


@dataclass
class TileResult:
    """A tile after the model: softmax probabilities over its core, or None when it was skipped."""

    index: int
    probabilities: np.ndarray | None  # [classes, core height, core width] float32
    valid: np.ndarray  # [core height, core width] bool


@dataclass
class StitchStats:
    """Counts for the report. Seam QA: overlap pixels where a tile's class differs from the blend so far."""

    tiles_run: int = 0
    tiles_skipped: int = 0
    class_pixels: dict[int, int] = field(default_factory=dict)
    seam_pixels: int = 0
    seam_disagreements: int = 0
    stitch_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def seam_disagreement(self) -> float | None:
        return self.seam_disagreements / self.seam_pixels if self.seam_pixels else None


def first_argmax(scores: np.ndarray) -> np.ndarray:
    """``np.argmax(scores, axis=0)`` (ties go to the first class) as uint8, in one pass per class.

    numpy's argmax over the leading axis walks memory with a stride of a whole class plane; comparing planes
    is several times faster for the few classes a segmentation model has, and gives the same indices.
    """
    best = scores[0].copy()
    index = np.zeros(scores.shape[1:], dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index


class Stitcher:
    """Accumulate weighted probabilities tile by tile and flush rows as soon as no tile can touch them.

    Tiles may arrive in any order (Ray returns them as they finish); they are *applied* strictly in index
    order, so floating-point sums, and therefore the output bytes, do not depend on worker count or timing.
    Memory is one band of ``core`` rows x raster width x classes, whatever the raster height.

    Args:
        grid: the scene's tiles.
        class_ids: class value written for each model output channel.
        sink: receives class rows (uint8, nodata 255).
        probability_sink: optional; receives ``[classes + 1, rows, width]`` uint8 bands: each class
            probability and the top probability (confidence), scaled by 254, nodata 255.
    """

    def __init__(
        self, grid: TileGrid, class_ids: np.ndarray, sink: RowSink, probability_sink: RowSink | None = None
    ) -> None:
        self.grid, self.sink, self.probability_sink = grid, sink, probability_sink
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
        started = time.perf_counter()
        tile = self.grid[result.index]
        r0, c0 = int(tile.core.row_off) - self._band_start, int(tile.core.col_off)
        region = (slice(r0, r0 + int(tile.core.height)), slice(c0, c0 + int(tile.core.width)))
        valid = result.valid
        self._valid[region] |= valid
        if result.probabilities is None:
            self.stats.tiles_skipped += 1
        else:
            self.stats.tiles_run += 1
            probs = result.probabilities
            self._seam_check(probs, region, valid)
            weights = self.grid.blend_weights(tile) * valid
            self._acc[(slice(None), *region)] += probs * weights
            self._weight[region] += weights
        self.stats.stitch_seconds += time.perf_counter() - started
        if tile.col == self.grid.cols - 1:
            last_row = tile.row == self.grid.rows - 1
            self._flush(self.height if last_row else self.grid.row_span(tile.row + 1)[0])

    def _seam_check(self, probs: np.ndarray, region: tuple[slice, slice], valid: np.ndarray) -> None:
        # Tiles are applied in raster order, so earlier tiles can only cover the top and left blend strips.
        o, (h, w) = self.grid.overlap, valid.shape
        rows, cols = region
        for strip in ((slice(0, min(o, h)), slice(0, w)), (slice(min(o, h), h), slice(0, min(o, w)))):
            target = (
                slice(rows.start + strip[0].start, rows.start + strip[0].stop),
                slice(cols.start + strip[1].start, cols.start + strip[1].stop),
            )
            overlap = (self._weight[target] > 0) & valid[strip]
            count = int(np.count_nonzero(overlap))
            if count:
                before = first_argmax(self._acc[(slice(None), *target)])
                disagree = (first_argmax(probs[(slice(None), *strip)]) != before) & overlap
                self.stats.seam_disagreements += int(np.count_nonzero(disagree))
                self.stats.seam_pixels += count

    def _flush(self, stop: int) -> None:
        started = time.perf_counter()
        n = stop - self._band_start
        acc, weight = self._acc[:, :n], self._weight[:n]
        nodata = (weight <= 0) | ~self._valid[:n]
        classes = self.class_ids[first_argmax(acc)]
        classes[nodata] = CLASS_NODATA
        counts = np.bincount(classes.ravel(), minlength=CLASS_NODATA + 1)[:CLASS_NODATA]
        for cid in np.flatnonzero(counts).tolist():
            self.stats.class_pixels[cid] = self.stats.class_pixels.get(cid, 0) + int(counts[cid])
        probabilities = None
        if self.probability_sink is not None:
            normalised = acc / np.where(nodata, 1.0, weight)
            scaled = np.rint(np.concatenate([normalised, normalised.max(axis=0, keepdims=True)]) * PROBABILITY_SCALE)
            probabilities = np.where(nodata, PROBABILITY_NODATA, scaled).astype(np.uint8)
        self.stats.stitch_seconds += time.perf_counter() - started
        started = time.perf_counter()
        self.sink.write_rows(self._band_start, classes)
        if self.probability_sink is not None and probabilities is not None:
            self.probability_sink.write_rows(self._band_start, probabilities)
        self.stats.write_seconds += time.perf_counter() - started
        for array in (self._acc, self._weight, self._valid):
            keep = array.shape[-2] - n
            array[..., :keep, :] = array[..., n:, :]
            array[..., keep:, :] = 0
        self._band_start = stop
