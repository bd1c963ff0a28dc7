"""Blending on the worker: every block reproduces a whole-raster blend exactly, whatever the block size.

The reference is the whole-raster accumulator geoseg used before blocks (``acc += p * w`` in float32 from zero,
tiles in grid order, first argmax), written out plainly here: block outputs are compared with it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.inference.blend import BlockBlender, first_argmax
from geoseg.inference.tiling import BlockGrid, Tile, TileGrid
from geoseg.io.writer import CLASS_NODATA, PROBABILITY_SCALE

TileInputs = Callable[[Tile], tuple[np.ndarray | None, np.ndarray]]  # probs [C, T, T] (None: skipped), valid [T, T]


def first_argmax_np(scores: np.ndarray) -> np.ndarray:
    best, index = scores[0].copy(), np.zeros(scores.shape[1:], dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index


def whole_raster_blend(grid: TileGrid, class_ids: np.ndarray, tile_inputs: TileInputs) -> dict[str, object]:
    """The pre-block stitcher's arithmetic over the whole raster at once (the reference)."""
    classes = len(class_ids)
    acc = np.zeros((classes, grid.height, grid.width), np.float32)
    weight = np.zeros((grid.height, grid.width), np.float32)
    seen = np.zeros((grid.height, grid.width), bool)
    seam_pixels = seam_disagreements = 0
    o = grid.overlap
    for tile in grid:
        probs, valid = tile_inputs(tile)
        rows, cols = tile.core_in_tile
        core_valid = valid[rows, cols]
        r0, c0, h, w = int(tile.core.row_off), int(tile.core.col_off), int(tile.core.height), int(tile.core.width)
        region = (slice(r0, r0 + h), slice(c0, c0 + w))
        seen[region] |= core_valid
        if probs is None:
            continue
        p = probs[:, rows, cols]
        for strip in ((slice(0, min(o, h)), slice(0, w)), (slice(min(o, h), h), slice(0, min(o, w)))):
            target = (slice(r0 + strip[0].start, r0 + strip[0].stop), slice(c0 + strip[1].start, c0 + strip[1].stop))
            overlap = (weight[target] > 0) & core_valid[strip]
            if overlap.any():
                before = first_argmax_np(acc[(slice(None), *target)])
                seam_disagreements += int(((first_argmax_np(p[(slice(None), *strip)]) != before) & overlap).sum())
                seam_pixels += int(overlap.sum())
        weights = grid.blend_weights(tile) * core_valid
        acc[(slice(None), *region)] += p * weights
        weight[region] += weights
    nodata = (weight <= 0) | ~seen
    out = class_ids.astype(np.uint8)[first_argmax_np(acc)]
    out[nodata] = CLASS_NODATA
    normalised = acc / np.where(nodata, 1.0, weight)
    scaled = np.rint(np.concatenate([normalised, normalised.max(axis=0, keepdims=True)]) * PROBABILITY_SCALE)
    quantised = np.where(nodata, 255, scaled).astype(np.uint8)
    return {"classes": out, "probabilities": quantised, "seam": (seam_pixels, seam_disagreements)}


def blocks_blend(blocks: BlockGrid, class_ids: np.ndarray, tile_inputs: TileInputs) -> dict[str, object]:
    """The same raster assembled from independently blended blocks, in reverse block order."""
    grid = blocks.grid
    classes = np.full((grid.height, grid.width), 77, np.uint8)
    quantised = np.full((len(class_ids) + 1, grid.height, grid.width), 77, np.uint8)
    seam = [0, 0]
    tiles = set()
    for block in reversed(list(blocks)):
        blender = BlockBlender(grid, block, class_ids.tolist(), True, torch.device("cpu"))
        for tile in blocks.tiles(block):
            probs, valid = tile_inputs(tile)
            blender.add(tile, None if probs is None else torch.from_numpy(probs), torch.from_numpy(valid))
            if blocks.owns(block, tile):
                tiles.add(tile.index)
        result = blender.result()
        out = block.output
        window = (
            slice(int(out.row_off), int(out.row_off + out.height)),
            slice(int(out.col_off), int(out.col_off + out.width)),
        )
        classes[window] = result.classes
        quantised[(slice(None), *window)] = result.probabilities
        seam[0] += result.seam_pixels
        seam[1] += result.seam_disagreements
    assert tiles == set(range(len(grid)))  # every tile is owned by exactly one block
    return {"classes": classes, "probabilities": quantised, "seam": tuple(seam)}


def noisy_inputs(grid: TileGrid, classes: int, nodata_every: int = 0) -> TileInputs:
    """Random probabilities per tile (neighbours disagree often) and, optionally, nodata diagonals."""

    def inputs(tile: Tile) -> tuple[np.ndarray | None, np.ndarray]:
        rng = np.random.default_rng(tile.index)
        logits = rng.normal(size=(classes, grid.tile, grid.tile)).astype(np.float32)
        probs = torch.from_numpy(logits).softmax(dim=0).numpy()
        rows = np.arange(tile.read.row_off, tile.read.row_off + grid.tile)[:, None]
        cols = np.arange(tile.read.col_off, tile.read.col_off + grid.tile)[None, :]
        valid = np.ones((grid.tile, grid.tile), bool)
        if nodata_every:
            valid = np.broadcast_to((rows + 2 * cols) % nodata_every != 0, valid.shape).copy()
            valid &= (rows < 20) | (rows > 50)  # a band of rows that is all nodata: whole tiles are skipped
        return (probs if valid.any() else None), valid

    return inputs


@pytest.mark.parametrize(
    ("width", "height", "tile", "halo", "overlap", "block"),
    [
        (150, 130, 48, 4, 12, 1),  # one tile per block: every block repeats the previous block's last tile
        (150, 130, 48, 4, 12, 60),
        (150, 130, 48, 4, 12, 10_000),  # one block
        (203, 97, 40, 6, 0, 50),  # no overlap: exact cover, nothing repeated
        (64, 300, 32, 0, 8, 40),
    ],
)
def test_blocks_reproduce_the_whole_raster_blend_bit_for_bit(width, height, tile, halo, overlap, block) -> None:
    grid = TileGrid(width, height, tile, halo, overlap)
    class_ids = np.array([3, 7, 11, 200])
    inputs = noisy_inputs(grid, len(class_ids), nodata_every=13)
    reference = whole_raster_blend(grid, class_ids, inputs)
    blended = blocks_blend(BlockGrid(grid, block), class_ids, inputs)
    np.testing.assert_array_equal(blended["classes"], reference["classes"])
    np.testing.assert_array_equal(blended["probabilities"], reference["probabilities"])
    assert blended["seam"] == reference["seam"]
    if overlap:
        assert reference["seam"][0] > 100 and reference["seam"][1] > 10  # the seam QA had work to do
    assert (reference["classes"] == CLASS_NODATA).any() and (reference["classes"] != CLASS_NODATA).any()


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 160),
    height=st.integers(1, 160),
    halo=st.integers(0, 6),
    overlap=st.integers(0, 8),
    block=st.integers(1, 200),
)
def test_any_block_size_gives_the_same_raster(width, height, halo, overlap, block) -> None:
    grid = TileGrid(width, height, 32, halo, min(overlap, (32 - 2 * halo) // 2))
    class_ids = np.arange(3)
    inputs = noisy_inputs(grid, 3)
    reference = whole_raster_blend(grid, class_ids, inputs)
    blended = blocks_blend(BlockGrid(grid, block), class_ids, inputs)
    np.testing.assert_array_equal(blended["classes"], reference["classes"])
    assert blended["seam"] == reference["seam"]


def test_first_argmax_matches_numpy_including_ties() -> None:
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, (6, 37, 53)).astype(np.float32)  # few values: many ties
    np.testing.assert_array_equal(first_argmax(torch.from_numpy(scores)).numpy(), np.argmax(scores, axis=0))
    np.testing.assert_array_equal(first_argmax_np(scores), np.argmax(scores, axis=0))
    # The layouts and type the workers give it: channels_last logits (class innermost), bf16 on a GPU.
    cl = torch.from_numpy(scores)[None].contiguous(memory_format=torch.channels_last)[0]
    assert cl.stride()[0] == 1
    np.testing.assert_array_equal(first_argmax(cl).numpy(), np.argmax(scores, axis=0))
    np.testing.assert_array_equal(first_argmax(cl.to(torch.bfloat16)).numpy(), np.argmax(scores, axis=0))


def test_labels_are_reconstructed_and_nodata_stays_nodata() -> None:
    truth = np.random.default_rng(0).integers(0, 3, (100, 90))
    grid = TileGrid(90, 100, tile=32, halo=4, overlap=4)

    def inputs(tile: Tile) -> tuple[np.ndarray | None, np.ndarray]:
        rows = np.clip(np.arange(tile.read.row_off, tile.read.row_off + 32), 0, 99).astype(int)
        cols = np.clip(np.arange(tile.read.col_off, tile.read.col_off + 32), 0, 89).astype(int)
        labels = truth[np.ix_(rows, cols)]
        probs = np.stack([(labels == k).astype(np.float32) for k in range(3)])
        r = np.arange(tile.read.row_off, tile.read.row_off + 32)[:, None]
        c = np.arange(tile.read.col_off, tile.read.col_off + 32)[None, :]
        valid = np.broadcast_to(r + c >= 60, (32, 32)).copy()  # the top-left triangle is nodata
        return (probs if valid.any() else None), valid

    out = blocks_blend(BlockGrid(grid, 40), np.array([10, 20, 30]), inputs)["classes"]
    rows, cols = np.mgrid[0:100, 0:90]
    assert (out[rows + cols < 60] == CLASS_NODATA).all()
    np.testing.assert_array_equal(out[rows + cols >= 60], (truth * 10 + 10)[rows + cols >= 60])
