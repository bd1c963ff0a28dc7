"""Tile geometry: full coverage, halo, blend weights that sum to one, any raster size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from geoseg.tiling import TileGrid


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
