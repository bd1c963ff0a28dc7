"""Read tiles of a scene as normalised model input. numpy + rasterio only, so it runs in cheap CPU tasks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.io.raster import OpenDatasets, PadMode, SceneInfo, read_tile
from geoseg.tiling import Tile

if TYPE_CHECKING:  # geoseg.bundle imports torch: seconds of CPU in every reader process that starts
    from geoseg.bundle import BundleSpec


@dataclass
class TileBatch:
    """Normalised tiles ready for the model. Nodata pixels are 0 (the band mean) in ``data``."""

    indices: list[int]
    data: np.ndarray  # [B, bands, T, T] float32
    valid: np.ndarray  # [B, T, T] bool
    cores: list[tuple[slice, slice]] = field(default_factory=list)  # each tile's core inside its window
    read_seconds: float = 0.0

    @property
    def runnable(self) -> np.ndarray:
        """Which tiles hold at least one valid pixel (the others skip the model)."""
        return np.asarray(self.valid.reshape(len(self.indices), -1).any(axis=1))


@dataclass(frozen=True)
class Normalisation:
    """Which bands to read and how to scale them: ``(raw - mean) / std`` per band."""

    band_indexes: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    input_band_count: int

    @classmethod
    def from_spec(cls, spec: BundleSpec) -> Normalisation:
        return cls(
            band_indexes=tuple(b.index for b in spec.bands),
            mean=np.array([b.mean for b in spec.bands], dtype=np.float32)[:, None, None],
            std=np.array([b.std for b in spec.bands], dtype=np.float32)[:, None, None],
            input_band_count=spec.input_band_count,
        )

    def check(self, scene: SceneInfo) -> None:
        """Reject a scene whose bands cannot be what the model was trained on."""
        if scene.count != self.input_band_count:
            raise GeoSegError(f"has {scene.count} bands, the model expects {self.input_band_count}", scene.path)


# One per process: Ray reuses reader processes across tasks, and successive batches of a scene reuse the
# source blocks the previous batch decoded (see OpenDatasets).
_DATASETS = OpenDatasets()
_MIN_BLOCK_CACHE = 16 * 2**20
_MAX_BLOCK_CACHE = 512 * 2**20


def block_cache_bytes(scene: SceneInfo, tile: int) -> int:
    """GDAL block cache that lets the next tile row reuse the source blocks of this one.

    A tile row spans at most ``tile + block height`` rows of blocks across the whole width; twice that
    keeps the next row's blocks too. Sized per scene rather than GDAL's default (5 % of RAM), which would
    let a long scene's blocks pile up and make memory grow with scene size. Past the cap, blocks are simply
    decoded again (slower, same pixels).
    """
    block_rows = scene.block_shape[0]
    row_bytes = scene.width * scene.count * np.dtype(scene.dtype).itemsize
    return int(np.clip(2 * (tile + block_rows) * row_bytes, _MIN_BLOCK_CACHE, _MAX_BLOCK_CACHE))


def read_tiles(
    scene: SceneInfo,
    tiles: Sequence[Tile],
    norm: Normalisation,
    pad_mode: PadMode = "reflect",
    nodata: float | None = None,
) -> TileBatch:
    """Read and normalise ``tiles`` of ``scene``.

    Tiles of the same tile row are read as one window and sliced, and the file stays open for the next
    batch: overlapping tiles and tile rows share source blocks, which are decoded once, not once per tile.
    """
    started = time.perf_counter()
    size = int(tiles[0].read.height)
    data = np.empty((len(tiles), len(norm.band_indexes), size, size), dtype=np.float32)
    valid = np.empty((len(tiles), size, size), dtype=bool)
    with rasterio.Env(GDAL_CACHEMAX=block_cache_bytes(scene, size)):
        _read_rows(_DATASETS.get(scene.path), tiles, norm, pad_mode, nodata, data, valid)
    return TileBatch(
        [t.index for t in tiles], data, valid, [t.core_in_tile for t in tiles], time.perf_counter() - started
    )


def _read_rows(
    src: rasterio.DatasetReader,
    tiles: Sequence[Tile],
    norm: Normalisation,
    pad_mode: PadMode,
    nodata: float | None,
    data: np.ndarray,
    valid: np.ndarray,
) -> None:
    size = data.shape[-1]
    for _, group in itertools.groupby(enumerate(tiles), key=lambda item: item[1].row):
        members = list(group)
        first, last = members[0][1].read, members[-1][1].read
        union = Window(first.col_off, first.row_off, last.col_off + last.width - first.col_off, size)
        raw, mask = read_tile(src, union, list(norm.band_indexes), pad_mode)
        if src.nodata is None and nodata is not None:
            mask &= ~np.any(raw == nodata, axis=0)
        normalised = np.subtract(raw, norm.mean, out=raw)  # in place: raw is a fresh float32 array
        np.divide(normalised, norm.std, out=normalised)
        np.copyto(normalised, 0.0, where=~mask)
        for i, tile in members:
            offset = int(tile.read.col_off - first.col_off)
            data[i] = normalised[:, :, offset : offset + size]
            valid[i] = mask[:, offset : offset + size]
