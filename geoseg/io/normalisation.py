"""The one contract between raw pixels and model input, shared by training and prediction.

A model sees ``(raw - mean) / std`` per band in float32, and 0 (the band mean) wherever a pixel is invalid:
nodata by the file's own mask, NaN/inf, padding in ``nodata`` mode, or equal to the nodata value the bundle
assumes for files that declare none. Training patches and prediction tiles both go through this class, so the
model is never served pixels prepared differently from those it was trained on (a test reads the same window
both ways and compares the arrays). Prediction applies the same arithmetic in torch on the model's device
(:mod:`geoseg.inference.worker`); this module stays numpy-only so readers never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.errors import GeoSegError
from geoseg.io.raster import SceneInfo


@dataclass(frozen=True)
class Normalisation:
    """Which bands to read and how to scale them.

    Args:
        band_indexes: 1-based bands of the input raster, in the model's channel order.
        mean, std: per-band statistics of the raw values, float32 ``[bands, 1, 1]``.
        input_band_count: band count of the scenes the model was trained on; others are refused.
        assumed_nodata: nodata value for files that declare none (a file's own nodata/mask always applies).
    """

    band_indexes: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    input_band_count: int
    assumed_nodata: float | None = None

    @classmethod
    def of(
        cls,
        band_indexes: list[int] | tuple[int, ...],
        mean: list[float] | np.ndarray,
        std: list[float] | np.ndarray,
        input_band_count: int,
        assumed_nodata: float | None = None,
    ) -> Normalisation:
        return cls(
            band_indexes=tuple(int(b) for b in band_indexes),
            mean=np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1),
            std=np.asarray(std, dtype=np.float32).reshape(-1, 1, 1),
            input_band_count=input_band_count,
            assumed_nodata=assumed_nodata,
        )

    def check(self, scene: SceneInfo) -> None:
        """Reject a scene whose bands cannot be what the model was trained on."""
        if scene.count != self.input_band_count:
            raise GeoSegError(f"has {scene.count} bands, the model expects {self.input_band_count}", scene.path)

    def mask_assumed_nodata(self, data: np.ndarray, valid: np.ndarray, file_nodata: float | None) -> None:
        """Clear ``valid`` where any band equals the assumed nodata value, for files that declare none.

        Compared in float32, as the model sees the values.
        """
        if file_nodata is None and self.assumed_nodata is not None:
            value = np.float32(self.assumed_nodata)
            valid &= ~np.any(data.astype(np.float32, copy=False) == value, axis=0)

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Model input ``[bands, h, w]`` float32 from raw pixels (any numeric type) and their validity."""
        out = data.astype(np.float32)  # always a new array: the caller's pixels are never changed
        np.subtract(out, self.mean, out=out)
        np.divide(out, self.std, out=out)
        np.copyto(out, np.float32(0.0), where=~valid)
        return out
