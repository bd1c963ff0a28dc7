"""Validity masks at prediction: which pixels of a scene are not ground (cloud, shadow, cirrus, fill).

A pixel under a cloud is not land cover. Prediction treats a masked pixel exactly as a nodata pixel: the model
sees 0 there (as at any nodata pixel), the class and probability rasters hold nodata, polygons leave it out, a
tile with no unmasked pixel skips the model, and the report counts it (``masked_pixels``). A mosaic then never
takes a class from under a cloud.

**Where a mask comes from** (:class:`MaskOptions`):

- a STAC asset of the scene's item, named by its key (``SCL`` for Sentinel-2 L2A, ``qa_pixel`` for Landsat
  Collection 2), or
- a raster per scene found by a pattern (``{stem}_mask.tif`` beside the scene: Fmask, s2cloudless, hand-made).

Either is read onto the scene's grid whatever its own resolution or CRS, by nearest neighbour (SCL is 20 m for
10 m bands: each SCL pixel covers 2 x 2 scene pixels, its value unchanged). Where the mask raster does not cover
the scene it reads as 0.

**What masks** (:class:`MaskRule`): a set of values, or a set of bits of which any one set masks. Presets:

- ``scl``: Sentinel-2 L2A Scene Classification values 0 (no data), 3 (cloud shadows), 8 (cloud, medium
  probability), 9 (cloud, high probability), 10 (thin cirrus); ``scl-snow`` adds 11 (snow or ice).
  (ESA, Sentinel-2 Level-2A Algorithm Theoretical Basis Document, SCL classes 0-11.)
- ``qa-pixel``: Landsat Collection 2 ``QA_PIXEL`` bits 0 (fill), 1 (dilated cloud), 2 (cirrus), 3 (cloud),
  4 (cloud shadow); ``qa-pixel-snow`` adds bit 5 (snow). (USGS, Landsat 8-9 Collection 2 Level-2 Science
  Product Guide, Table 6-3.)

**Buffer.** Cloud edges and thin shadows escape every detector, so masks are usually grown by a distance in
metres: a pixel is masked when its centre lies within the buffer of a masked pixel's centre (a disk, in the
scene's own pixel sizes). The dilation is computed from the mask pixels around each read window, a buffer
wide, so a block's mask never depends on where the blocks are cut.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.io.maskrules import MaskOptions, SceneMask
from geoseg.io.paths import is_virtual
from geoseg.io.raster import OpenDatasets, SceneInfo, reflect_index

if TYPE_CHECKING:
    from geoseg.io.sources import SceneSource


def mask_path(source: SceneSource, options: MaskOptions) -> str:
    """Where ``source``'s mask is (not yet opened): its STAC item's asset, or the pattern's file beside it.
    One line naming the scene and the cause when it has none (the scene fails alone, never runs unmasked)."""
    if options.asset is not None:
        if source.name is None:
            raise GeoSegError(
                f"--mask-asset {options.asset} names a STAC asset, and this scene is a file: use --mask-file",
                source.text,
            )
        found = {key.casefold(): href for key, href in source.item_assets}
        if options.asset.casefold() not in found:
            keys = ", ".join(key for key, _ in source.item_assets) or "none"
            raise GeoSegError(
                f"STAC item {source.name!r} has no mask asset {options.asset!r}; its assets: {keys}",
                source.document,
            )
        return found[options.asset.casefold()]
    return options.file_for(source.bands[0])


def scene_mask(source: SceneSource, options: MaskOptions) -> SceneMask:
    """The checked mask of one scene (see :func:`mask_path`, :func:`check_mask`)."""
    path = mask_path(source, options)
    if not is_virtual(path) and not Path(path).is_file():
        raise GeoSegError(f"the scene's mask is missing (--mask-file {options.pattern})", path)
    check_mask(path, "the mask")
    return SceneMask(path, options.rule, options.buffer_m)


def check_mask(path: str, what: str) -> None:
    """The mask raster opens, has a CRS and integer values; else one line naming it (the scene fails alone)."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise GeoSegError(f"{what} has no CRS: it cannot be placed on the scene", path)
            if np.dtype(src.dtypes[0]).kind not in "iu":
                raise GeoSegError(f"{what} holds {src.dtypes[0]} values; masks are integer classes or bit flags", path)
    except RasterioIOError as exc:
        cause = str(exc).split(": ", 1)[-1] if str(exc) else "cannot be read"
        raise GeoSegError(f"{what} cannot be opened ({cause})", path) from exc


def _mask_values(src: rasterio.DatasetReader, scene: SceneInfo, rows: range, cols: range) -> np.ndarray:
    """Band 1 of the mask over scene rows/cols, on the scene's grid (nearest)."""
    window = Window(cols.start, rows.start, len(cols), len(rows))
    if (
        src.crs == scene.crs
        and src.transform == scene.transform
        and (src.width, src.height)
        == (
            scene.width,
            scene.height,
        )
    ):
        return np.asarray(src.read(1, window=window))
    with WarpedVRT(
        src,
        crs=scene.crs,
        transform=scene.transform,
        width=scene.width,
        height=scene.height,
        resampling=Resampling.nearest,
        nodata=0,
    ) as vrt:
        return np.asarray(vrt.read(1, window=window))


def _dilate(masked: np.ndarray, buffer_m: float, pixel_x: float, pixel_y: float) -> np.ndarray:
    """Pixels whose centre is within ``buffer_m`` of a masked pixel's centre (a disk; separable by rows: each
    row offset dilates horizontally by the disk's half width there, from running sums)."""
    reach_y = int(buffer_m // pixel_y)
    if reach_y == 0 and buffer_m < pixel_x:
        return masked
    height, width = masked.shape
    out = masked.copy()
    sums = np.zeros((height, width + 1), dtype=np.int32)
    np.cumsum(masked, axis=1, out=sums[:, 1:])
    by_half_width: dict[int, np.ndarray] = {}
    for dy in range(-reach_y, reach_y + 1):
        half = int(math.sqrt(max(0.0, buffer_m**2 - (dy * pixel_y) ** 2)) // pixel_x)
        if half not in by_half_width:
            lo = np.clip(np.arange(width) - half, 0, width)
            hi = np.clip(np.arange(width) + half + 1, 0, width)
            by_half_width[half] = (sums[:, hi] - sums[:, lo]) > 0
        grown = by_half_width[half]
        if dy >= 0:
            out[: height - dy] |= grown[dy:]
        else:
            out[-dy:] |= grown[: height + dy]
    return out


def read_masked(scene: SceneInfo, mask: SceneMask, window: Window, reflect: bool, datasets: OpenDatasets) -> np.ndarray:
    """True where ``mask`` hides a pixel of ``window`` (which may reach past the scene: with ``reflect`` the
    padding mirrors the mask as the pixels are mirrored, else it is not masked). ``datasets`` keeps mask
    rasters open between blocks."""
    row0, col0 = int(window.row_off), int(window.col_off)
    rows = np.arange(row0, row0 + int(window.height))
    cols = np.arange(col0, col0 + int(window.width))
    inside_r = (rows >= 0) & (rows < scene.height)
    inside_c = (cols >= 0) & (cols < scene.width)
    src_rows = reflect_index(rows, scene.height) if reflect else np.clip(rows, 0, scene.height - 1)
    src_cols = reflect_index(cols, scene.width) if reflect else np.clip(cols, 0, scene.width - 1)
    pixel_x, pixel_y = abs(scene.transform.a), abs(scene.transform.e)
    reach_y, reach_x = int(mask.buffer_m // pixel_y), int(mask.buffer_m // pixel_x)
    r0, r1 = max(0, int(src_rows.min()) - reach_y), min(scene.height, int(src_rows.max()) + reach_y + 1)
    c0, c1 = max(0, int(src_cols.min()) - reach_x), min(scene.width, int(src_cols.max()) + reach_x + 1)
    try:
        src = datasets.get(mask.path)
    except RasterioIOError as exc:
        raise GeoSegError(f"the mask cannot be opened ({str(exc).splitlines()[-1]})", mask.path) from exc
    values = _mask_values(src, scene, range(r0, r1), range(c0, c1))
    masked = _dilate(mask.rule.masked(values), mask.buffer_m, pixel_x, pixel_y)
    out = masked[src_rows - r0][:, src_cols - c0]
    if not reflect:
        out &= inside_r[:, None] & inside_c[None, :]
    return out
