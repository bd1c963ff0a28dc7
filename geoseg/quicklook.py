"""Quicklook PNGs: the image with the predicted classes over it, read at reduced resolution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from geoseg.bundle import ClassSpec


def _rgb_bands(src: rasterio.DatasetReader) -> list[int]:
    names = [(d or "").lower() for d in src.descriptions]
    if all(n in names for n in ("red", "green", "blue")):
        return [names.index(n) + 1 for n in ("red", "green", "blue")]
    return [1, 2, 3] if src.count >= 3 else [1, 1, 1]


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(rgb.shape, dtype=np.float32)
    for b in range(3):
        values = rgb[b][valid]
        if values.size:
            lo, hi = np.percentile(values, [2, 98])
            out[b] = np.clip((rgb[b] - lo) / max(hi - lo, 1e-9), 0, 1)
    return out.transpose(1, 2, 0)


def quicklook(
    image: str | Path, prediction: str | Path, classes: Sequence[ClassSpec], out: str | Path, max_side: int = 900
) -> Path:
    """Write a side-by-side PNG: stretched true colour, and the prediction blended over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with rasterio.open(image) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        bands = _rgb_bands(src)
        rgb = src.read(bands, out_shape=(3, *shape), out_dtype="float32", resampling=Resampling.average)
        valid = src.read_masks(1, out_shape=shape, resampling=Resampling.nearest) > 0
    with rasterio.open(prediction) as src:
        pred = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    base = _stretch(rgb, valid)
    palette = np.zeros((256, 3), dtype=np.float32)
    for c in classes:
        palette[c.id] = np.array(c.color) / 255
    known = np.isin(pred, [c.id for c in classes])
    overlay = np.where(known[..., None], 0.45 * base + 0.55 * palette[pred], base)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, picture, title in ((axes[0], base, "image"), (axes[1], overlay, "prediction")):
        ax.imshow(picture)
        ax.set_title(f"{Path(image).name}: {title}")
        ax.set_axis_off()
    present = set(np.unique(pred[known]).tolist())
    handles = [Patch(color=palette[c.id], label=c.name) for c in classes if c.id in present]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def mosaic_figure(
    mosaic: str | Path,
    stats: str | Path,
    unmasked: str | Path,
    truth: str | Path,
    classes: Sequence[ClassSpec],
    out: str | Path,
    max_side: int = 700,
) -> Path:
    """Write a PNG of a mosaic beside the same mosaic made without masks, its count band (clear observations per
    pixel) and the truth (a ``truth.gpkg`` of :mod:`geoseg.synth_series`, painted on the mosaic's grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geoseg.synth_series import truth_on_grid

    with rasterio.open(mosaic) as src:
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        masked = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        grid = (src.crs, src.transform * src.transform.scale(src.width / shape[1], src.height / shape[0]))
    with rasterio.open(unmasked) as src:
        plain = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    with rasterio.open(stats) as src:
        count = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    painted = truth_on_grid(Path(truth), grid[0], grid[1], shape[1], shape[0])
    palette = np.ones((256, 3), dtype=np.float32)
    for c in classes:
        palette[c.id] = np.array(c.color) / 255
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.6))
    for ax, picture, title in (
        (axes[0], palette[plain], "mosaic without masks"),
        (axes[1], palette[masked], "mosaic with SCL masks"),
        (axes[3], palette[painted], "truth"),
    ):
        ax.imshow(picture)
        ax.set_title(title)
        ax.set_axis_off()
    shown = axes[2].imshow(np.ma.masked_equal(count, 0), cmap="viridis")
    axes[2].set_title("count: clear observations per pixel")
    axes[2].set_axis_off()
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    handles = [Patch(color=palette[c.id], label=c.name) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
