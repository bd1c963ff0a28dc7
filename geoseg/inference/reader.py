"""Read tiles of a scene as normalised model input. numpy + rasterio only, so it runs in cheap CPU tasks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio

from geoseg.bundle import BundleSpec
from geoseg.errors import GeoSegError
from geoseg.io.raster import PadMode, SceneInfo, read_tile
from geoseg.tiling import Tile


@dataclass
class TileBatch:
    """Normalised tiles ready for the model. Nodata pixels are 0 (the band mean) in ``data``."""

    indices: list[int]
    data: np.ndarray  # [B, bands, T, T] float32
    valid: np.ndarray  # [B, T, T] bool
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


def read_tiles(
    scene: SceneInfo,
    tiles: Sequence[Tile],
    norm: Normalisation,
    pad_mode: PadMode = "reflect",
    nodata: float | None = None,
) -> TileBatch:
    """Read and normalise ``tiles`` of ``scene`` in one open of the file."""
    started = time.perf_counter()
    size = int(tiles[0].read.height)
    data = np.empty((len(tiles), len(norm.band_indexes), size, size), dtype=np.float32)
    valid = np.empty((len(tiles), size, size), dtype=bool)
    with rasterio.open(scene.path) as src:
        for i, tile in enumerate(tiles):
            raw, mask = read_tile(src, tile.read, list(norm.band_indexes), pad_mode)
            if src.nodata is None and nodata is not None:
                mask &= ~np.any(raw == nodata, axis=0)
            data[i] = np.where(mask, (raw - norm.mean) / norm.std, 0.0)
            valid[i] = mask
    return TileBatch([t.index for t in tiles], data, valid, time.perf_counter() - started)
