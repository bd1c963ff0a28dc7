"""Blend the tiles of one block into final classes (and quantised probabilities) where the model runs.

Where neighbouring tile cores overlap, their softmax probabilities are weighted by the grid's raised-cosine
ramps (which sum to one) and summed; the class is the first argmax of the sum. Per output pixel, the tiles
that cover it are added in the grid's tile order with the grid's global weights, whichever block the pixel
is in and however the block's tiles were batched (see :mod:`geoseg.inference.tiling`: a block runs every tile
that covers its output), so the bytes do not depend on block size, batch size or worker count. The arithmetic
is that of a whole-raster accumulator (``acc += p * w`` in float32 from zero, then ``acc / weight``), so on CPU
the output is byte-identical to blending every tile of the raster at once.

Seam QA: where a tile's top and left blend strips meet tiles already added, the pixels whose class by that
tile alone differs from the blend so far are counted. Each output pixel belongs to one block, so per-block
counts sum to the whole raster's.

With ``overlap = 0`` every output pixel lies in exactly one tile core (weight 1), the accumulator is skipped
and each tile's core is reduced to classes directly: ``0 + p * 1 = p`` exactly, so the bytes are the same.
Without probabilities to write, such a block takes the logits instead (:attr:`BlockBlender.needs_probabilities`
is False): the softmax is monotonic, so the class is the same wherever float rounding keeps the top two
probabilities apart (their logits more than ~1e-7 apart; measured: every pixel of a real scene, see
``test_classes_from_logits_equal_classes_from_probabilities``), and the softmax pass is saved (on CPU 15 ns per
pixel with the workers' allocator settings; on a GPU a float32 copy and pass over every class).

Runs on torch tensors on any device: on a GPU the driver and the host never see a float probability.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from geoseg.inference.result import BlockResult
from geoseg.inference.tiling import Block, Tile, TileGrid
from geoseg.io.writer import CLASS_NODATA, PROBABILITY_NODATA, PROBABILITY_SCALE


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Index of the largest value along dim 0, the first one on ties (as ``numpy.argmax``), as uint8.

    ``torch.argmax`` over a short leading dimension walks memory with a plane's stride (about 100 ns per pixel
    on a CPU core for 6 classes, measured); comparing every plane with the maximum is a few passes of
    contiguous memory (about 6 ns).
    """
    count = scores.shape[0]
    top = scores.amax(dim=0, keepdim=True)
    rank = torch.arange(count, 0, -1, dtype=torch.uint8, device=scores.device).view(count, *[1] * (scores.dim() - 1))
    hit = (scores == top).to(torch.uint8).mul_(rank)
    return (count - hit.amax(dim=0)).clamp_(max=count - 1)  # clamp: NaN scores match nothing


@functools.lru_cache(maxsize=16)
def class_lut(class_ids: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """Model output channel -> class id, 255 staying 255; None when channel k is class id k (the usual case: the
    index is then the class raster). Made once per model and device, not per block (building it cost 0.2 ms a
    block, a quarter of a 256² scene's blending on the model's thread; profiled)."""
    if list(class_ids) == list(range(len(class_ids))):
        return None
    lut = torch.full((256,), CLASS_NODATA, dtype=torch.uint8)
    lut[: len(class_ids)] = torch.tensor(class_ids, dtype=torch.uint8)
    return lut.to(device)


def _span(start: int, stop: int, lo: int, hi: int) -> tuple[int, int] | None:
    a, b = max(start, lo), min(stop, hi)
    return (a, b) if a < b else None


class BlockBlender:
    """Accumulates one block's tiles, in grid order, into its output window.

    Args:
        grid: the scene's tiles (their global blend weights).
        block: the block; its output window is what :meth:`result` covers.
        class_ids: class value for each model output channel.
        probabilities: also quantise the blended probabilities (and the top one, as confidence).
        device: where the accumulators live (the model's device).
    """

    def __init__(
        self, grid: TileGrid, block: Block, class_ids: list[int], probabilities: bool, device: torch.device
    ) -> None:
        self.grid, self.block, self.device = grid, block, device
        self.num_classes = len(class_ids)
        self.want_probabilities = probabilities
        self.lut = class_lut(tuple(class_ids), device)
        out = block.output
        self.top, self.left = int(out.row_off), int(out.col_off)
        self.height, self.width = int(out.height), int(out.width)
        shape = (self.height, self.width)
        self.exact_cover = grid.overlap == 0
        if self.exact_cover:  # one tile per pixel: straight to class indices (255 = nothing valid)
            self.index = torch.full(shape, CLASS_NODATA, dtype=torch.uint8, device=device)
            self.quantised = (
                torch.full((self.num_classes + 1, *shape), PROBABILITY_NODATA, dtype=torch.uint8, device=device)
                if probabilities
                else None
            )
        else:
            self.acc = torch.zeros((self.num_classes, *shape), dtype=torch.float32, device=device)
            self.weight = torch.zeros(shape, dtype=torch.float32, device=device)
            self.valid = torch.zeros(shape, dtype=torch.bool, device=device)
        self.result_counts = BlockResult(block.index, np.zeros(0, np.uint8))

    @property
    def needs_probabilities(self) -> bool:
        """What :meth:`add` takes: softmax probabilities to blend or to quantise, else the logits (whose first
        argmax is the same class)."""
        return self.want_probabilities or not self.exact_cover

    def _regions(
        self, tile: Tile, rows: tuple[int, int], cols: tuple[int, int]
    ) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Raster rows/cols ``[a, b)`` clipped to the output window, as slices of the tile and of the output."""
        r = _span(*rows, self.top, self.top + self.height)
        c = _span(*cols, self.left, self.left + self.width)
        if r is None or c is None:
            return None
        tr, tc = int(tile.read.row_off), int(tile.read.col_off)
        in_tile = (slice(r[0] - tr, r[1] - tr), slice(c[0] - tc, c[1] - tc))
        in_out = (slice(r[0] - self.top, r[1] - self.top), slice(c[0] - self.left, c[1] - self.left))
        return in_tile, in_out

    def add(self, tile: Tile, probs: torch.Tensor | None, valid: torch.Tensor | None) -> None:
        """Take ``tile``: its probabilities ``[classes, T, T]`` (or its logits, when :attr:`needs_probabilities`
        is False; None when it was skipped: no valid pixel) and the validity of its window ``[T, T]`` (None: all
        valid). Tiles must come in grid order."""
        if tile.row in self.block.owned_rows and tile.col in self.block.owned_cols:
            if probs is None:
                self.result_counts.tiles_skipped += 1
            else:
                self.result_counts.tiles_run += 1
        core = tile.core
        r0, c0 = int(core.row_off), int(core.col_off)
        regions = self._regions(tile, (r0, r0 + int(core.height)), (c0, c0 + int(core.width)))
        if regions is None:
            return
        in_tile, in_out = regions
        v = None if valid is None else valid[in_tile]
        if self.exact_cover:
            if probs is not None:
                self._put(probs[(slice(None), *in_tile)], v, in_out)
            return
        if v is None:
            self.valid[in_out] = True
        else:
            self.valid[in_out] |= v
        if probs is None:
            return
        p = probs[(slice(None), *in_tile)]
        self._seam_check(tile, probs, valid)
        # The grid's weights cover the tile's core; take the part over this block's output.
        rows, cols = in_out
        dy, dx = self.top - r0, self.left - c0
        weights = self.grid.blend_weights(tile)[rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
        w = torch.from_numpy(np.ascontiguousarray(weights)).to(self.device)
        if v is not None:
            w = w * v
        self.acc[(slice(None), *in_out)] += p * w
        self.weight[in_out] += w

    def _put(self, p: torch.Tensor, v: torch.Tensor | None, in_out: tuple[slice, slice]) -> None:
        # Scores come channels_last (class innermost): planes first, then the argmax (17 vs 22 ns/px on CPU).
        index = first_argmax(p.contiguous())
        if v is not None:
            index.masked_fill_(~v, CLASS_NODATA)
        self.index[in_out] = index
        if self.quantised is not None:
            scaled = torch.cat([p, p.amax(dim=0, keepdim=True)]).mul_(PROBABILITY_SCALE).round_()
            if v is not None:
                scaled.masked_fill_(~v, PROBABILITY_NODATA)
            self.quantised[(slice(None), *in_out)] = scaled.to(torch.uint8)

    def _seam_check(self, tile: Tile, probs: torch.Tensor, valid: torch.Tensor | None) -> None:
        # Tiles are added in raster order, so earlier tiles can only cover the top and left blend strips.
        o = self.grid.overlap
        core = tile.core
        r0, c0, h, w = int(core.row_off), int(core.col_off), int(core.height), int(core.width)
        top = min(o, h)
        strips = (((r0, r0 + top), (c0, c0 + w)), ((r0 + top, r0 + h), (c0, c0 + min(o, w))))
        for rows, cols in strips:
            regions = self._regions(tile, rows, cols)
            if regions is None:
                continue
            in_tile, in_out = regions
            seen = self.weight[in_out] > 0
            if valid is not None:
                seen &= valid[in_tile]
            count = int(seen.sum())
            if count:
                before = first_argmax(self.acc[(slice(None), *in_out)])
                alone = first_argmax(probs[(slice(None), *in_tile)])
                self.result_counts.seam_disagreements += int(((alone != before) & seen).sum())
                self.result_counts.seam_pixels += count

    def result(self) -> BlockResult:
        """The block's classes (and probabilities), as host arrays."""
        quantised: torch.Tensor | None
        if self.exact_cover:
            index, quantised = self.index, self.quantised
        else:
            nodata = (self.weight <= 0) | ~self.valid
            index = first_argmax(self.acc).masked_fill_(nodata, CLASS_NODATA)
            quantised = None
            if self.want_probabilities:
                normalised = self.acc / torch.where(nodata, 1.0, self.weight)
                scaled = torch.cat([normalised, normalised.amax(dim=0, keepdim=True)]).mul_(PROBABILITY_SCALE).round_()
                quantised = scaled.masked_fill_(nodata, PROBABILITY_NODATA).to(torch.uint8)
        counts = torch.bincount(index.flatten(), minlength=256)[: self.num_classes]
        result = self.result_counts
        result.classes = (index if self.lut is None else self.lut[index.long()]).cpu().numpy()
        result.probabilities = None if quantised is None else quantised.cpu().numpy()
        result.class_pixels = counts.cpu().numpy()
        return result
