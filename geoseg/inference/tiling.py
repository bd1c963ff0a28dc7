"""Overlapping tiles over a scene, and the blocks of tiles that are the unit of work, as lazy sequences.

Geometry along one axis (the other is the same), with tile size ``T``, halo ``h`` and blend overlap ``o``:
each tile *reads* ``T`` pixels, discards ``h`` on each side (the pixels whose receptive field reaches the
tile edge) and *contributes* the central core of ``C = T - 2h`` pixels. Cores start every ``s = C - o``
pixels from pixel 0, so neighbouring cores overlap by ``o`` pixels where their probabilities are blended.
The first tile reads from ``-h``: at true image borders the halo lies outside the raster and is filled by
padding, so border pixels are never cropped away for lack of a neighbour. A raster smaller than one tile
still gets one (padded) tile.

Blocks group ``k x k`` neighbouring tiles into one unit of work: a block is read as one window (so the source
blocks under neighbouring tiles are decoded once), predicted, blended and reduced to uint8 on the model
worker. A block *finalises* the pixels of its output window, the ``k`` tile strides of its own tiles; the
pixels in the first ``overlap`` columns and rows of that window are also covered by the last tile of the
previous block, so a block runs that tile too (when ``overlap > 0``). Every output pixel therefore sees, in
exactly one block, exactly the tiles that cover it, in the same order and with the same weights as a
whole-raster blend: the output does not depend on the block size. The price of an overlap is one repeated
tile row and column per block (``1/k`` more model work per axis); with ``overlap = 0`` blocks repeat nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar, overload

import numpy as np
from rasterio.windows import Window

T = TypeVar("T")


@dataclass(frozen=True)
class Tile:
    """One tile: where it reads (may extend past the raster) and which pixels it contributes."""

    index: int
    row: int
    col: int
    read: Window
    core: Window  # clipped to the raster

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """Slices selecting the core inside the read array."""
        r = int(self.core.row_off - self.read.row_off)
        c = int(self.core.col_off - self.read.col_off)
        return slice(r, r + int(self.core.height)), slice(c, c + int(self.core.width))


@dataclass(frozen=True)
class _Axis:
    length: int
    tile: int
    halo: int
    overlap: int

    @property
    def core(self) -> int:
        return self.tile - 2 * self.halo

    @property
    def stride(self) -> int:
        return self.core - self.overlap

    @functools.cached_property
    def count(self) -> int:  # asked for at every tile and block the grids build (30 times a small scene)
        return max(1, math.ceil(max(0, self.length - self.core) / self.stride) + 1)

    def core_span(self, i: int) -> tuple[int, int]:
        start = i * self.stride
        return start, min(start + self.core, self.length)

    def blocks(self, k: int) -> int:
        return math.ceil(self.count / k)

    def block_span(self, b: int, k: int) -> tuple[int, int, range, range]:
        """Output pixels ``[start, stop)`` of block ``b``, the tiles it owns and the tiles it runs."""
        owned = range(b * k, min((b + 1) * k, self.count))
        start = b * k * self.stride
        stop = self.length if owned.stop == self.count else owned.stop * self.stride
        # With an overlap, the first ``overlap`` output pixels are shared with the previous block's last tile.
        first = owned.start - 1 if owned.start > 0 and self.overlap > 0 else owned.start
        return start, stop, owned, range(first, owned.stop)


class _RowMajor(Sequence[T]):
    """Cells of a ``rows`` x ``cols`` grid in row-major order, built on demand by :meth:`_cell` (so a grid of a
    100 000-px scene costs nothing until a cell is asked for). Subclasses give ``rows``, ``cols`` and ``_cell``."""

    @property
    def rows(self) -> int:
        raise NotImplementedError

    @property
    def cols(self) -> int:
        raise NotImplementedError

    def _cell(self, index: int, row: int, col: int) -> T:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.rows * self.cols

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._cell(index, *divmod(index, self.cols))

    def __iter__(self) -> Iterator[T]:
        return (self[i] for i in range(len(self)))


class TileGrid(_RowMajor[Tile]):
    """All tiles of a ``width`` x ``height`` raster in row-major order, computed on demand from the index.

    Args:
        width, height: raster size in pixels.
        tile: pixels read per tile side (what the model sees).
        halo: pixels discarded at each tile side that has a neighbour.
        overlap: width of the band where neighbouring cores overlap and are blended.
    """

    def __init__(self, width: int, height: int, tile: int, halo: int = 0, overlap: int = 0) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"raster must be at least 1x1, got {width}x{height}")
        if halo < 0 or overlap < 0:
            raise ValueError("halo and overlap must be >= 0")
        if tile - 2 * halo < max(1, 2 * overlap):
            # With a stride below the overlap, three tiles would share pixels and the weights would not
            # sum to one.
            raise ValueError(
                f"tile {tile} is too small for halo {halo} and overlap {overlap}: need tile - 2*halo >= 2*overlap"
            )
        self.width, self.height = width, height
        self.tile, self.halo, self.overlap = tile, halo, overlap
        self._x = _Axis(width, tile, halo, overlap)
        self._y = _Axis(height, tile, halo, overlap)

    @property
    def rows(self) -> int:
        return self._y.count

    @property
    def cols(self) -> int:
        return self._x.count

    @property
    def stride(self) -> int:
        return self._y.stride

    def _cell(self, index: int, row: int, col: int) -> Tile:
        y0, y1 = self._y.core_span(row)
        x0, x1 = self._x.core_span(col)
        read = Window(x0 - self.halo, y0 - self.halo, self.tile, self.tile)
        return Tile(index, row, col, read, Window(x0, y0, x1 - x0, y1 - y0))

    def row_span(self, row: int) -> tuple[int, int]:
        """Raster rows ``[start, stop)`` that tile row ``row`` contributes to."""
        return self._y.core_span(row)

    @cached_property
    def _ramp(self) -> np.ndarray:
        k = np.arange(self.overlap, dtype=np.float64)
        return np.sin(0.5 * np.pi * (k + 0.5) / self.overlap) ** 2

    def blend_weights(self, tile: Tile) -> np.ndarray:
        """Weights over the tile's core: 1 inside, a raised-cosine ramp where a neighbour overlaps.

        The ramp ``sin^2`` of one tile and the ``cos^2`` of its neighbour sum to 1 at every overlap pixel
        (also at corners, where four products meet), and no weight is 0, so every core pixel counts.
        """
        h, w = int(tile.core.height), int(tile.core.width)
        wy = self._axis_weights(h, tile.row > 0, tile.row < self.rows - 1)
        wx = self._axis_weights(w, tile.col > 0, tile.col < self.cols - 1)
        return (wy[:, None] * wx[None, :]).astype(np.float32)

    def _axis_weights(self, length: int, has_before: bool, has_after: bool) -> np.ndarray:
        weights = np.ones(length, dtype=np.float64)
        o = min(self.overlap, length)
        if o and has_before:
            weights[:o] *= self._ramp[:o]
        if o and has_after:
            weights[length - o :] *= self._ramp[:o][::-1]
        return weights


@dataclass(frozen=True)
class Block:
    """A rectangle of tiles: the output pixels it finalises, the tiles it runs and the window it reads.

    ``tile_rows``/``tile_cols`` are the tiles run (grid rows and columns, in order); ``owned_rows`` and
    ``owned_cols`` the tiles counted for this block in reports (each tile is owned by exactly one block).
    ``read`` is the union of the run tiles' read windows and may extend past the raster (padding).
    """

    index: int
    row: int
    col: int
    output: Window
    read: Window
    tile_rows: range
    tile_cols: range
    owned_rows: range
    owned_cols: range

    def tile_offset(self, tile: Tile) -> tuple[int, int]:
        """Where ``tile``'s read window starts inside this block's read window."""
        return int(tile.read.row_off - self.read.row_off), int(tile.read.col_off - self.read.col_off)


class BlockGrid(_RowMajor[Block]):
    """The blocks of ``grid``, ``tiles_per_block`` tiles a side, in row-major order, computed on demand.

    Args:
        grid: the scene's tiles.
        block: requested block side in output pixels; rounded to a whole number of tile strides (at least one).
    """

    def __init__(self, grid: TileGrid, block: int) -> None:
        self.grid = grid
        self.tiles_per_block = max(1, block // grid.stride)
        k = self.tiles_per_block
        self._shape = (grid._y.blocks(k), grid._x.blocks(k))

    @property
    def rows(self) -> int:
        return self._shape[0]

    @property
    def cols(self) -> int:
        return self._shape[1]

    @property
    def size(self) -> int:
        """Side of a full block's output window in pixels."""
        return self.tiles_per_block * self.grid.stride

    def _cell(self, index: int, row: int, col: int) -> Block:
        g, k = self.grid, self.tiles_per_block
        y0, y1, owned_rows, tile_rows = g._y.block_span(row, k)
        x0, x1, owned_cols, tile_cols = g._x.block_span(col, k)
        first = g[tile_rows.start * g.cols + tile_cols.start].read
        last = g[(tile_rows.stop - 1) * g.cols + tile_cols.stop - 1].read
        read = Window(
            first.col_off,
            first.row_off,
            last.col_off + last.width - first.col_off,
            last.row_off + last.height - first.row_off,
        )
        output = Window(x0, y0, x1 - x0, y1 - y0)
        return Block(index, row, col, output, read, tile_rows, tile_cols, owned_rows, owned_cols)

    def tiles(self, block: Block) -> Iterator[Tile]:
        """The tiles ``block`` runs, in the grid's (row-major) order."""
        for r in block.tile_rows:
            for c in block.tile_cols:
                yield self.grid[r * self.grid.cols + c]

    def owns(self, block: Block, tile: Tile) -> bool:
        return tile.row in block.owned_rows and tile.col in block.owned_cols
