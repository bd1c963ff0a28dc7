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
from geoseg.mosaic.warp import Sampler

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


def _first_max(sums: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the class with the highest sum, ties to the most votes, then to the lowest class: its index and
    its sum. A running comparison over classes (contiguous passes) instead of an argmax across the class axis
    of a combined key (strided, and an int64 copy of every sum: 3x slower, measured)."""
    winner = np.zeros(sums.shape[1:], np.intp)
    top, top_votes = sums[0].copy(), votes[0].copy()
    for k in range(1, len(sums)):
        better = (sums[k] > top) | ((sums[k] == top) & (votes[k] > top_votes))
        winner[better] = k
        np.copyto(top, sums[k], where=better)
        np.copyto(top_votes, votes[k], where=better)
    return winner, top


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
        sampler = Sampler(tile, grid, obs)  # positions once, for the classes and the probabilities
        if sampler.region is None:
            continue
        at = sampler.region  # every update below is to the part of the tile the scene reaches
        index = lut[sampler.nearest(obs.classes, [1], CLASS_NODATA)[0]]
        valid = index >= 0
        if inside is not None:
            valid &= inside[at]
        if not valid.any():
            continue  # the scene does not reach into the tile, or only its nodata does
        probs = None
        if read_probabilities and obs.probabilities:
            probs = sampler.bilinear(obs.probabilities, list(range(1, n + 1)), PROBABILITY_NODATA)
            valid &= probs[0] != PROBABILITY_NODATA
        count[at] += valid
        safe_index = np.where(valid, index, 0)
        for k in range(n):
            voted = valid & (index == k)
            votes[k][at] += voted
            last_day[k][at][voted] = obs.day
        if sums is not None and probs is not None:
            sums[(slice(None), *at)] += np.where(valid, probs, 0)
        if chosen is not None:
            own_p = (
                np.take_along_axis(probs, safe_index[None].astype(np.intp), axis=0)[0].astype(np.int16)
                if probs is not None
                else np.zeros(valid.shape, np.int16)
            )
            take = valid if method == "latest" else valid & (own_p >= chosen_p[at])
            chosen[at][take] = index[take]
            chosen_p[at][take] = own_p[take]
            chosen_day[at][take] = obs.day
    has = count > 0
    if method == "mean":
        assert sums is not None
        winner, top = _first_max(sums, votes)
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
