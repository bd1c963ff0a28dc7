"""The stitcher: exact reconstruction, order independence, duplicates, nodata, bounded band."""

from __future__ import annotations

import numpy as np

from geoseg.io.writer import CLASS_NODATA
from geoseg.stitch import Stitcher, TileResult, first_argmax
from geoseg.tiling import TileGrid


class ArraySink:
    def __init__(self, height: int, width: int) -> None:
        self.array = np.full((height, width), 77, dtype=np.uint8)
        self.calls: list[tuple[int, int]] = []

    def write_rows(self, row_off: int, classes: np.ndarray) -> None:
        self.array[row_off : row_off + len(classes)] = classes
        self.calls.append((row_off, len(classes)))


def _tile_probs(grid: TileGrid, truth: np.ndarray, index: int, classes: int, rng=None) -> np.ndarray:
    tile = grid[index]
    rows = np.clip(np.arange(tile.read.row_off, tile.read.row_off + grid.tile), 0, truth.shape[0] - 1)
    cols = np.clip(np.arange(tile.read.col_off, tile.read.col_off + grid.tile), 0, truth.shape[1] - 1)
    labels = truth[np.ix_(rows.astype(int), cols.astype(int))]
    probs = np.stack([(labels == k).astype(np.float32) for k in range(classes)])
    if rng is not None:
        probs = 0.6 * probs + 0.4 * rng.random(probs.shape, dtype=np.float32) / classes
    return probs


def _run(grid, truth, order, classes=3, valid=None, noise_seed=None):
    sink = ArraySink(*truth.shape)
    stitcher = Stitcher(grid, np.arange(classes) * 10, sink)
    for index in order:
        rng = None if noise_seed is None else np.random.default_rng([noise_seed, index])
        rows, cols = grid[index].core_in_tile
        tile_valid = np.ones((grid.tile, grid.tile), bool) if valid is None else valid(grid[index])
        probs = None if not tile_valid.any() else _tile_probs(grid, truth, index, classes, rng)[:, rows, cols]
        stitcher.add(TileResult(index, probs, tile_valid[rows, cols]))
    assert stitcher.done
    return sink, stitcher


def test_reconstructs_labels_whatever_the_arrival_order() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (150, 230))
    grid = TileGrid(230, 150, tile=64, halo=8, overlap=10)
    sink, stitcher = _run(grid, truth, rng.permutation(len(grid)))
    np.testing.assert_array_equal(sink.array, truth * 10)
    assert stitcher.stats.tiles_run == len(grid)
    assert sum(stitcher.stats.class_pixels.values()) == truth.size


def test_output_bytes_do_not_depend_on_order_with_overlapping_noisy_tiles() -> None:
    truth = np.random.default_rng(1).integers(0, 3, (120, 140))
    grid = TileGrid(140, 120, tile=48, halo=4, overlap=12)
    forward, _ = _run(grid, truth, range(len(grid)), noise_seed=3)
    shuffled, _ = _run(grid, truth, np.random.default_rng(2).permutation(len(grid)), noise_seed=3)
    assert forward.array.tobytes() == shuffled.array.tobytes()


def test_duplicate_tiles_from_retries_are_ignored() -> None:
    truth = np.zeros((70, 70), dtype=int)
    grid = TileGrid(70, 70, tile=32, halo=4, overlap=4)
    order = [0, 0, *range(len(grid)), 3, 5]
    _, stitcher = _run(grid, truth, order)
    assert stitcher.stats.tiles_run == len(grid)


def test_nodata_pixels_and_skipped_tiles_become_output_nodata() -> None:
    truth = np.ones((100, 100), dtype=int)
    grid = TileGrid(100, 100, tile=32, halo=4, overlap=4)

    def valid(tile):
        rows = np.arange(tile.read.row_off, tile.read.row_off + 32)[:, None]
        cols = np.arange(tile.read.col_off, tile.read.col_off + 32)[None, :]
        return np.broadcast_to(rows + cols >= 60, (32, 32)).copy()  # top-left triangle is nodata

    sink, stitcher = _run(grid, truth, range(len(grid)), valid=valid)
    rows, cols = np.mgrid[0:100, 0:100]
    assert (sink.array[rows + cols < 60] == CLASS_NODATA).all()
    assert (sink.array[rows + cols >= 60] == 10).all()
    assert stitcher.stats.tiles_skipped > 0


def test_rows_are_flushed_as_bands_not_held_until_the_end() -> None:
    truth = np.zeros((1000, 40), dtype=int)
    grid = TileGrid(40, 1000, tile=64, halo=8, overlap=8)
    sink, stitcher = _run(grid, truth, range(len(grid)))
    assert len(sink.calls) == grid.rows
    assert sum(n for _, n in sink.calls) == 1000
    assert stitcher._acc.shape[1] == 64 - 16  # one core of rows, whatever the height


def test_first_argmax_matches_numpy_including_ties() -> None:
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, (6, 37, 53)).astype(np.float32)  # few values: many ties
    np.testing.assert_array_equal(first_argmax(scores), np.argmax(scores, axis=0))


def test_seam_disagreement_counts_every_overlap_pixel_against_the_blend_so_far() -> None:
    grid = TileGrid(150, 130, tile=48, halo=4, overlap=12)

    def tile_inputs(tile):  # random probabilities: neighbours disagree often; scattered nodata rows
        rows, cols = tile.core_in_tile
        probs = np.random.default_rng(tile.index).random((3, 48, 48), dtype=np.float32)[:, rows, cols]
        read_rows = np.arange(tile.read.row_off, tile.read.row_off + 48)[:, None]
        return probs, np.broadcast_to(read_rows % 37 != 0, (48, 48))[rows, cols]

    stitcher = Stitcher(grid, np.arange(3), ArraySink(130, 150))
    for tile in grid:
        stitcher.add(TileResult(tile.index, *tile_inputs(tile)))
    # Brute force over whole cores on full-raster arrays, independent of the stitcher's strip bookkeeping.
    acc, weight = np.zeros((3, 130, 150)), np.zeros((130, 150))
    pixels = disagreements = 0
    for tile in grid:
        probs, valid = tile_inputs(tile)
        region = (
            slice(int(tile.core.row_off), int(tile.core.row_off + tile.core.height)),
            slice(int(tile.core.col_off), int(tile.core.col_off + tile.core.width)),
        )
        overlap = (weight[region] > 0) & valid
        pixels += int(overlap.sum())
        disagreements += int((probs.argmax(0) != acc[(slice(None), *region)].argmax(0))[overlap].sum())
        w = grid.blend_weights(tile) * valid
        acc[(slice(None), *region)] += probs * w
        weight[region] += w
    assert pixels > 1000 and disagreements > 100
    assert (stitcher.stats.seam_pixels, stitcher.stats.seam_disagreements) == (pixels, disagreements)
