"""Tile and block geometry: full coverage, halo, blend weights that sum to one, blocks that partition the
output and run every tile covering it, any raster size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geoseg.inference.tiling import BlockGrid, TileGrid


def _coverage(grid: TileGrid) -> tuple[np.ndarray, np.ndarray]:
    count = np.zeros((grid.height, grid.width), dtype=int)
    weight = np.zeros((grid.height, grid.width))
    for tile in grid:
        r0, c0 = int(tile.core.row_off), int(tile.core.col_off)
        region = (slice(r0, r0 + int(tile.core.height)), slice(c0, c0 + int(tile.core.width)))
        count[region] += 1
        weight[region] += grid.blend_weights(tile)
    return count, weight


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    tile=st.sampled_from([32, 64, 96]),
    halo=st.integers(0, 12),
    overlap=st.integers(0, 12),
)
def test_every_pixel_is_covered_and_weights_sum_to_one(width, height, tile, halo, overlap) -> None:
    assume(tile - 2 * halo >= max(1, 2 * overlap))
    grid = TileGrid(width, height, tile, halo, overlap)
    count, weight = _coverage(grid)
    assert count.min() >= 1
    np.testing.assert_allclose(weight, 1.0, atol=1e-6)
    for t in grid:
        assert (t.read.width, t.read.height) == (tile, tile)
        assert t.read.col_off == t.core.col_off - halo and t.read.row_off == t.core.row_off - halo
        assert grid.blend_weights(t).min() > 0


def test_cores_overlap_by_exactly_the_blend_width() -> None:
    grid = TileGrid(1000, 10, tile=128, halo=16, overlap=24)
    first, second = grid[0], grid[1]
    assert first.core.col_off + first.core.width - second.core.col_off == 24
    assert grid.stride == 128 - 32 - 24


def test_grid_is_lazy_for_huge_rasters() -> None:
    grid = TileGrid(200_000, 150_000, tile=512, halo=32, overlap=32)
    assert len(grid) == grid.rows * grid.cols > 100_000
    last = grid[-1]
    assert last.core.col_off + last.core.width == 200_000
    assert last.core.row_off + last.core.height == 150_000


def test_single_pixel_and_long_thin_rasters() -> None:
    assert len(TileGrid(1, 1, 32, 4, 4)) == 1
    thin = TileGrid(70_000, 1, tile=256, halo=16, overlap=16)
    assert thin.rows == 1 and thin.cols == int(np.ceil((70_000 - 224) / 208)) + 1


def test_bad_geometry_is_rejected() -> None:
    with pytest.raises(ValueError, match="too small for halo"):
        TileGrid(100, 100, tile=32, halo=16)
    with pytest.raises(ValueError, match="at least 1x1"):
        TileGrid(0, 10, tile=32)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    halo=st.integers(0, 8),
    overlap=st.integers(0, 10),
    block=st.integers(1, 300),
)
def test_blocks_partition_the_output_and_run_every_tile_that_covers_it(width, height, halo, overlap, block) -> None:
    grid = TileGrid(width, height, 48, halo, min(overlap, (48 - 2 * halo) // 2))
    blocks = BlockGrid(grid, block)
    owner = np.full((height, width), -1)
    owned_tiles: list[int] = []
    for b in blocks:
        out = b.output
        window = (
            slice(int(out.row_off), int(out.row_off + out.height)),
            slice(int(out.col_off), int(out.col_off + out.width)),
        )
        assert (owner[window] == -1).all()  # no pixel in two blocks
        owner[window] = b.index
        run = {t.index for t in blocks.tiles(b)}
        owned_tiles += [t.index for t in blocks.tiles(b) if blocks.owns(b, t)]
        for tile in grid:  # every tile whose core touches the block's output is run by the block
            r0, c0 = int(tile.core.row_off), int(tile.core.col_off)
            touches = (
                r0 < out.row_off + out.height
                and r0 + tile.core.height > out.row_off
                and c0 < out.col_off + out.width
                and c0 + tile.core.width > out.col_off
            )
            assert touches == (tile.index in run), (b, tile)
        first = next(blocks.tiles(b))  # the read window is the union of the run tiles' windows
        assert (b.read.row_off, b.read.col_off) == (first.read.row_off, first.read.col_off)
        assert b.tile_offset(first) == (0, 0)
    assert (owner >= 0).all()
    assert sorted(owned_tiles) == list(range(len(grid)))  # each tile counted once


def test_blocks_repeat_a_tile_only_where_tiles_overlap() -> None:
    blended = BlockGrid(TileGrid(1000, 1000, 96, 8, 16), 256)
    exact = BlockGrid(TileGrid(1000, 1000, 96, 8, 0), 256)
    assert blended.tiles_per_block == 256 // 64 and exact.tiles_per_block == 256 // 80
    repeated = sum(len(b.tile_rows) * len(b.tile_cols) for b in blended) - len(blended.grid)
    assert repeated > 0
    assert sum(len(b.tile_rows) * len(b.tile_cols) for b in exact) == len(exact.grid)


def test_block_grid_is_lazy_for_huge_rasters() -> None:
    blocks = BlockGrid(TileGrid(200_000, 150_000, tile=1056, halo=16), 2048)
    assert len(blocks) == blocks.rows * blocks.cols > 7000
    last = blocks[-1]
    assert last.output.col_off + last.output.width == 200_000
    assert last.output.row_off + last.output.height == 150_000
