"""One output tile from every observation of it: each scene warped onto the tile, then one class per pixel.

**Warping** (:mod:`geoseg.mosaic.warp`): each observation's class raster is read onto the tile nearest, its
probabilities bilinear over valid source pixels only (nodata never mixes into a value), reading only the
window of the scene under the tile. A pixel's value does not depend on the tile it falls in, so a mosaic in
256-px tiles equals one in one tile. A scene on the output grid is sliced, not resampled.

**Valid observations** of a pixel: the scene's class is not nodata there (masked clouds are nodata since
prediction) and, for the methods that read them, neither are its probabilities.

**Methods** (classes in id order; "ties to the lowest id" is the first maximum):

* ``mean``: argmax of the summed probabilities (the mean's argmax: every class's sum has the same count);
  ties go to the class most observations voted for, then to the lowest id. The vote breaks the ties that
  storing probabilities as bytes creates, so a single observation's class is always its own class.
  Sums are integers: no order of addition changes a bit.
* ``mode``: the class most observations voted for, ties to the lowest id.
* ``latest``: the class of the last valid observation in date order.
* ``best``: the class of the observation whose probability of its own class is highest; ties to the later one.

**Bands** beside the classes (uint16): ``count`` (valid observations), ``confidence`` (mean: the winning mean
probability; mode: the winning share; latest/best: that observation's probability of its class, 0 when the
job wrote no probabilities), ``agreement`` (the share of observations whose own class is the winner), both in
predict's probability scale (value / 254), and ``date`` (days since 1970 of the latest observation of the
winning class; of the chosen one for latest/best; 0 when undated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geoseg.io.writer import CLASS_NODATA, PROBABILITY_NODATA, PROBABILITY_SCALE
from geoseg.mosaic.grid import OutputGrid, Tile
from geoseg.mosaic.inputs import Observation
from geoseg.mosaic.warp import warp

Method = Literal["mean", "mode", "latest", "best"]
METHODS: tuple[Method, ...] = ("mean", "mode", "latest", "best")
NEEDS_PROBABILITIES: frozenset[str] = frozenset({"mean", "best"})
STAT_BANDS = ("count", "confidence", "agreement", "date")
STAT_SCALES = (1.0, 1 / PROBABILITY_SCALE, 1 / PROBABILITY_SCALE, 1.0)


@dataclass
class TileArrays:
    classes: np.ndarray  # [h, w] uint8 class ids, CLASS_NODATA where no valid observation
    stats: np.ndarray  # [4, h, w] uint16: STAT_BANDS
    observations: int  # scenes that touched the tile

    @property
    def empty(self) -> bool:
        return not bool(self.stats[0].any())


def _ratio(numerator: np.ndarray, count: np.ndarray) -> np.ndarray:
    """round(numerator / count) on the probability scale, half up, in integers; 0 where count is 0."""
    safe = np.maximum(count, 1).astype(np.int64)
    return ((2 * numerator.astype(np.int64) + safe) // (2 * safe)).astype(np.uint16) * (count > 0)


def compose_tile(
    tile: Tile,
    grid: OutputGrid,
    observations: Sequence[Observation],
    class_ids: Sequence[int],
    method: Method,
    inside: np.ndarray | None = None,
) -> TileArrays:
    """The tile's classes and stat bands from ``observations`` (in mosaic order: see :mod:`.inputs`).

    ``inside``: pixels of the AOI (others stay nodata)."""
    h, w = tile.shape
    n = len(class_ids)
    lut = np.full(256, -1, np.int16)
    lut[np.asarray(class_ids)] = np.arange(n)
    count = np.zeros((h, w), np.int32)
    votes = np.zeros((n, h, w), np.int32)
    last_day = np.zeros((n, h, w), np.uint16)  # latest date of an observation voting each class
    sums = np.zeros((n, h, w), np.int32) if method == "mean" else None
    chosen = np.full((h, w), -1, np.int16) if method in ("latest", "best") else None
    chosen_p = np.zeros((h, w), np.int16)
    chosen_day = np.zeros((h, w), np.uint16)
    read_probabilities = method in NEEDS_PROBABILITIES or (
        method == "latest" and all(o.probabilities for o in observations)
    )
    for obs in observations:
        index = lut[warp(obs.classes, [1], tile, grid, obs, CLASS_NODATA, bilinear=False)[0]]
        valid = index >= 0
        probs = None
        if read_probabilities and obs.probabilities:
            probs = warp(obs.probabilities, list(range(1, n + 1)), tile, grid, obs, PROBABILITY_NODATA, bilinear=True)
            valid &= probs[0] != PROBABILITY_NODATA
        if inside is not None:
            valid &= inside
        if not valid.any():
            continue
        count += valid
        safe_index = np.where(valid, index, 0)
        for k in range(n):
            voted = valid & (index == k)
            votes[k] += voted
            last_day[k][voted] = obs.day
        if sums is not None and probs is not None:
            sums += np.where(valid, probs, 0)
        if chosen is not None:
            own_p = (
                np.take_along_axis(probs, safe_index[None].astype(np.intp), axis=0)[0].astype(np.int16)
                if probs is not None
                else np.zeros((h, w), np.int16)
            )
            take = valid if method == "latest" else valid & (own_p >= chosen_p)
            chosen[take] = index[take]
            chosen_p[take] = own_p[take]
            chosen_day[take] = obs.day
    has = count > 0
    if method == "mean":
        assert sums is not None
        key = (sums.astype(np.int64) << 20) | votes  # votes < 2**20 observations of one pixel
        winner = np.argmax(key, axis=0)
        top = np.take_along_axis(sums, winner[None], axis=0)[0]
        confidence = _ratio(top, count)
    elif method == "mode":
        winner = np.argmax(votes, axis=0)
        confidence = _ratio(np.take_along_axis(votes, winner[None], axis=0)[0] * PROBABILITY_SCALE, count)
    else:
        assert chosen is not None
        winner = np.maximum(chosen, 0).astype(np.intp)
        confidence = chosen_p.astype(np.uint16)
    winner = winner.astype(np.intp)
    agreement = _ratio(np.take_along_axis(votes, winner[None], axis=0)[0] * PROBABILITY_SCALE, count)
    day = chosen_day if chosen is not None else np.take_along_axis(last_day, winner[None], axis=0)[0]
    classes = np.where(has, np.asarray(class_ids, np.uint8)[winner], CLASS_NODATA).astype(np.uint8)
    stats = np.stack([count.astype(np.uint16), confidence * has, agreement, day * has]).astype(np.uint16)
    return TileArrays(classes, stats, len(observations))
