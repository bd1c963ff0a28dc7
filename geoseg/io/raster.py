"""Open and validate scenes, read padded windows with their validity mask."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geoseg.errors import GeoSegError

if TYPE_CHECKING:
    from geoseg.io.maskrules import SceneMask

PadMode = Literal["reflect", "constant", "nodata"]
_NUMERIC_KINDS = {"u", "i", "f"}

# GDAL lists a file's whole folder at every open to find its sidecars (.aux.xml, .ovr, .msk); in a folder of an
# archive's scenes, or of a job's products, that is O(files) per open, so a scene's cost grew with the archive
# (1000 scenes: 1.5-1.9 ms per open, 0.8-1.0 with this). Disabled, GDAL asks for each sidecar by name instead.
# Set for this process and the processes it starts (the user's own setting wins).
os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "TRUE")


def keep_gdal_environment() -> None:
    """Give this thread a rasterio environment for the rest of its life, if it has none.

    Outside one, every ``rasterio.open`` (and every ``rasterio.Env`` with a setting) builds rasterio's default
    environment and tears it down again, and building it looks for GDAL's and PROJ's data files on disk each
    time: 0.7-1.2 ms per open-and-read of a small scene (measured), a quarter of a plain loop's whole cost per
    scene. rasterio keeps environments per thread, so each thread that opens rasters calls this first (the job's
    loop, a reader, a publisher). Credentials for ``s3://`` paths are still set per open, as before.
    """
    if not rasterio.env.hasenv():
        rasterio.Env().__enter__()  # never left: the thread's default from now on


@dataclass(frozen=True)
class SceneInfo:
    """What the pipeline needs to know about an input scene, read once from its header."""

    path: str  # as GDAL opens it: a local path or a virtual one (/vsis3/..., never normalised)
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    block_shape: tuple[int, int]
    mask: SceneMask | None = None  # pixels that are not ground (clouds, shadows): read as nodata
    acquired: str | None = None  # when the image was taken (ISO 8601, UTC), if its metadata says

    @property
    def name(self) -> str:
        """The file stem (a job names its outputs itself: :mod:`geoseg.inference.outputs`)."""
        return Path(self.path).stem

    @property
    def pixel_area_m2(self) -> float:
        """Ground area of one pixel, in squared CRS units (metres for projected CRSs)."""
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)


def same_projection(a: CRS, b: CRS) -> bool:
    """True when two CRSs place pixels identically up to the datum realisation they are tagged with.

    Archives often tag one grid with two EPSG codes that differ only by datum realisation (NAD83 vs
    NAD83(HARN), say): the projection parameters are equal and the metre-level datum shift is below a
    pixel, so treating them as different grids would only add a resampling step and its errors.
    """
    if a == b:
        return True
    from pyproj import CRS as ProjCRS

    pa, pb = ProjCRS.from_user_input(a.to_wkt()), ProjCRS.from_user_input(b.to_wkt())
    if not (pa.is_projected and pb.is_projected) or pa.coordinate_operation is None or pb.coordinate_operation is None:
        return False
    same_op = pa.coordinate_operation.to_proj4() == pb.coordinate_operation.to_proj4()
    return bool(same_op and pa.ellipsoid == pb.ellipsoid)


def on_grid(src: rasterio.DatasetReader, crs: CRS, transform: Affine, width: int, height: int) -> bool:
    """Whether ``src``'s pixels are exactly this grid's, so it can be read without resampling.

    Training labels and evaluation truth both ask this, so one pair of files is never "the same grid" for one
    and warped for the other. CRSs differing only by datum realisation tag count as equal (:func:`same_projection`).
    """
    if src.crs is None or src.transform != transform or (src.width, src.height) != (width, height):
        return False
    return same_projection(src.crs, crs)


def acquisition_time(src: rasterio.DatasetReader) -> str | None:
    """When the image was taken, from GDAL's ``IMAGERY`` metadata domain (``ACQUISITIONDATETIME``: what GDAL
    reads from a scene's vendor metadata, e.g. a Landsat MTL, a DigitalGlobe IMD, a Pleiades DIMAP), or from an
    ``ACQUISITIONDATETIME`` tag of the file itself; None when neither says. Never the file's TIFFTAG_DATETIME,
    which is when the *file* was written."""
    from datetime import UTC, datetime

    text = src.tags(ns="IMAGERY").get("ACQUISITIONDATETIME") or src.tags().get("ACQUISITIONDATETIME")
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None  # a vendor's format we do not know: no date rather than a wrong one
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def open_scene(path: str | Path) -> SceneInfo:
    """Read and check a scene's header; every problem is a one-line :class:`GeoSegError` naming the file."""
    path = str(path)
    keep_gdal_environment()
    try:
        with rasterio.open(path) as src:
            if src.transform == Affine.identity():
                if src.gcps[0]:
                    raise GeoSegError(
                        "georeferenced by ground control points only (no geotransform): warp it first, "
                        "e.g. gdalwarp -r near",
                        path,
                    )
                raise GeoSegError("no geotransform: pixel positions are unknown", path)
            if src.crs is None:
                raise GeoSegError("no CRS: the raster is not georeferenced", path)
            dtype = np.dtype(src.dtypes[0])
            if dtype.kind not in _NUMERIC_KINDS:
                raise GeoSegError(f"unsupported pixel type {dtype.name}", path)
            return SceneInfo(
                path=path,
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=dtype.name,
                crs=src.crs,
                transform=src.transform,
                nodata=src.nodata,
                block_shape=src.block_shapes[0],
                acquired=acquisition_time(src),
            )
    except RasterioIOError as exc:
        cause = str(exc).split(": ", 1)[-1] if str(exc) else "cannot be read"
        raise GeoSegError(f"cannot open as a raster ({cause})", path) from exc


class OpenDatasets:
    """A few read handles kept open between calls, so GDAL's block cache outlives one batch of tiles.

    Neighbouring tile rows overlap by the halo and blend band, and a tile row rarely starts on a source block
    boundary, so the blocks under one tile row are needed again by the next. Opening the file per batch
    throws its decoded blocks away; a handle kept open decodes each source block once per process (while
    GDAL's cache, ``GDAL_CACHEMAX``, holds a couple of block rows). A handle is keyed by the file's path,
    inode, size and modification time: a rewritten file is opened afresh, never read through a stale handle.
    GDAL virtual paths (``/vsis3/...``, ``/vsimem/...``) have no local file to stat and are keyed by name.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._open: OrderedDict[tuple[str, int, int, int], rasterio.DatasetReader] = OrderedDict()

    def get(self, path: str | Path) -> rasterio.DatasetReader:
        try:
            stat = os.stat(path)
            key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:  # not a local file: rasterio.open below says what is wrong if it is not virtual either
            key = (str(path), -1, -1, -1)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        dataset = rasterio.open(path)
        self._open[key] = dataset
        while len(self._open) > self.capacity:
            self._open.popitem(last=False)[1].close()
        return dataset

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


# Pixel types handed to the model worker as they are: torch converts them to float32 exactly as GDAL does, and
# 16-bit imagery then travels at half the bytes of float32. Everything else is read as float32 by GDAL.
NATIVE_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"})


def pixel_dtype(dtype: str) -> str:
    """The type a band of ``dtype`` is read in for the model: itself when torch takes it, else float32."""
    return dtype if dtype in NATIVE_DTYPES else "float32"


def read_tile(
    src: rasterio.DatasetReader,
    window: Window,
    bands: list[int] | None = None,
    pad_mode: PadMode = "reflect",
    native: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (which may extend past the raster) as ``[bands, h, w]`` plus a validity mask ``[h, w]``.

    Pixels are float32, or with ``native`` the source type when :func:`pixel_dtype` keeps it (converted to
    float32 later, with the same result). Only the part of the window inside the raster is read from disk. The
    rest is filled by ``pad_mode``: ``reflect`` mirrors the image (good context for the model at scene
    borders), ``constant`` fills zeros, ``nodata`` marks the padding invalid. The mask is False where the source
    says nodata (nodata value, internal mask or alpha band, via GDAL's mask flags), where a value is NaN/inf,
    and in ``nodata`` padding.
    """
    bands = bands or list(range(1, src.count + 1))
    dtype = pixel_dtype(np.result_type(*[src.dtypes[b - 1] for b in bands]).name) if native else "float32"
    row0, col0 = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    top, left = max(0, -row0), max(0, -col0)
    bottom = max(0, row0 + height - src.height)
    right = max(0, col0 + width - src.width)
    if min(width - left - right, height - top - bottom) <= 0:
        raise ValueError(f"window {window} does not intersect the {src.width}x{src.height} raster")
    inner = Window(col0 + left, row0 + top, width - left - right, height - top - bottom)
    if pad_mode == "reflect" and (top or bottom or left or right):
        # Mirror the *image* about its edges (not the window's inner part), so a pixel's padding is the same
        # whichever window it is read through: batching cannot change the output.
        rows = reflect_index(np.arange(row0, row0 + height), src.height)
        cols = reflect_index(np.arange(col0, col0 + width), src.width)
        if top < inner.height and bottom < inner.height and left < inner.width and right < inner.width:
            return _reflect_margins(
                *_read(src, bands, inner, dtype),
                rows - int(inner.row_off),
                cols - int(inner.col_off),
                (top, bottom, left, right),
            )
        r0, c0 = int(rows.min()), int(cols.min())  # a raster smaller than the padding: mirrored more than once
        inside = Window(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
        data, valid = _read(src, bands, inside, dtype)
        return data[:, rows - r0][:, :, cols - c0], valid[rows - r0][:, cols - c0]
    data, valid = _read(src, bands, inner, dtype)
    if top or bottom or left or right:
        pads = ((top, bottom), (left, right))
        data = np.pad(data, ((0, 0), *pads), mode="constant")
        valid = np.pad(valid, pads, mode="constant", constant_values=pad_mode == "constant")
    return data, valid


def _reflect_margins(
    data: np.ndarray, valid: np.ndarray, rows: np.ndarray, cols: np.ndarray, pads: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The window from its inner part (read) and mirrored margins: only the margins are gathered, the inner
    part is one copy (gathering the whole window through index arrays cost a border block ~5 ns per pixel)."""
    top, bottom, left, right = pads
    height, width = len(rows), len(cols)
    out = np.empty((data.shape[0], height, width), dtype=data.dtype)
    mask = np.empty((height, width), dtype=bool)
    inner_rows, inner_cols = slice(top, height - bottom), slice(left, width - right)
    out[:, inner_rows, inner_cols] = data
    mask[inner_rows, inner_cols] = valid
    for margin in (slice(0, top), slice(height - bottom, height)):  # rows first, over the inner columns
        out[:, margin, inner_cols] = out[:, rows[margin] + top, inner_cols]
        mask[margin, inner_cols] = mask[rows[margin] + top, inner_cols]
    for margin in (slice(0, left), slice(width - right, width)):  # then columns, over every row
        out[:, :, margin] = out[:, :, cols[margin] + left]
        mask[:, margin] = mask[:, cols[margin] + left]
    return out, mask


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map pixel indices outside ``[0, size)`` into it by mirroring about the edge pixels (numpy's 'reflect')."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded < size, folded, period - folded)


def _read(
    src: rasterio.DatasetReader, bands: list[int], window: Window, dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = src.read(bands, window=window, out_dtype=dtype)
        valid = valid_mask(src, bands, window, data)
    except RasterioIOError as exc:  # GDAL's own reason is in the chained error; rasterio's says "see previous"
        detail = str(exc.__cause__ or exc).strip().splitlines()[-1]
        raise GeoSegError(
            f"cannot read pixels at row {int(window.row_off)}, column {int(window.col_off)} "
            f"(truncated or corrupt file? GDAL: {detail})",
            src.name,
        ) from exc
    if data.dtype.kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
    return data, valid


def valid_mask(src: rasterio.DatasetReader, bands: list[int], window: Window, data: np.ndarray) -> np.ndarray:
    """All bands valid, by GDAL's mask semantics; computed from the pixels when that is the same and cheaper.

    Integer bands whose only mask is their nodata value are compared with it here (GDAL's nodata mask is
    exactly that comparison, and a nodata value the type cannot hold masks nothing); bands without any mask
    are all valid; everything else (float nodata, internal masks, alpha bands) asks GDAL.
    """
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return np.ones(data.shape[1:], dtype=bool)
    if data.dtype.kind in "iu" and all(f == [MaskFlags.nodata] for f in flags):
        valid = np.ones(data.shape[1:], dtype=bool)
        limits = np.iinfo(data.dtype)
        for i, band in enumerate(bands):
            nodata = src.nodatavals[band - 1]
            if nodata is not None and float(nodata).is_integer() and limits.min <= nodata <= limits.max:
                valid &= data[i] != np.asarray(nodata).astype(data.dtype)
        return valid
    return np.all(src.read_masks(bands, window=window) > 0, axis=0)


def onto_grid(
    src: rasterio.DatasetReader, crs: CRS, transform: Affine, width: int, height: int
) -> rasterio.DatasetReader | WarpedVRT:
    """``src`` read on this grid: itself when its pixels are the grid's (:func:`on_grid`), else warped onto it
    (:func:`warp_to_grid`). Training labels, evaluation truth and evaluation regions all come through here."""
    if on_grid(src, crs, transform, width, height):
        return src
    return warp_to_grid(src, crs, transform, width, height)


def warp_to_grid(src: rasterio.DatasetReader, crs: CRS, transform: Affine, width: int, height: int) -> WarpedVRT:
    """``src`` (a class raster) seen on another grid, nearest-neighbour, with a mask that is False outside its
    footprint: without a nodata value the warp would fill the uncovered area with 0, a valid class."""
    return WarpedVRT(
        src,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        resampling=Resampling.nearest,
        add_alpha=src.nodata is None,
    )
