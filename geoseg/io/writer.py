"""Atomic raster outputs: uint8 blocks into a staging GeoTIFF, then a Cloud-Optimized GeoTIFF under the final name.

Writing is split in two so that each half runs where it is cheapest. :class:`StagingRaster` takes finished
blocks in any order (the driver writes them as workers return them): its internal tiles are the prediction
blocks themselves, so every block is one tile written once and never read back. The staging file is not
compressed: it lives for one scene, and compressing it cost the driver 2.8 ns of CPU per pixel (zstd level 1,
measured), most of the driver's work per pixel, for bytes that are read once by the COG build. :func:`publish_cog`
turns the finished staging file into a COG (overviews, deflate) with GDAL's COG driver on all CPUs and renames
it into place; it needs no model and no driver state, so a job runs it in a task beside the workers. Until the
rename nothing exists under the final name, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.io
import rasterio.shutil
from rasterio.io import MemoryFile
from rasterio.windows import Window

from geoseg.io.raster import SceneInfo

if TYPE_CHECKING:
    from typing_extensions import Buffer

CLASS_NODATA = 255
PROBABILITY_NODATA = 255
PROBABILITY_SCALE = 254  # probability p is stored as round(p * 254); 255 is nodata
COG_BLOCK = 512
# DEFLATE level 1: 2.9x less CPU than the default level 6 for 20-25 % more bytes on a noisy 67 Mpx class map
# (0.83 vs 2.4 CPU-s, measured); class maps compress 6-20x either way, and the CPU is what a GPU node lacks.
COG_DEFLATE_LEVEL = 1
_MAX_STAGING_TILE = 4096
COG_CACHE = 64 * 2**20
COG_CACHE_PER_BAND = 16 * 2**20
# Written blocks are flushed, not held: the memory of the driver (or of an in-process job) does not grow with a
# scene (64 MiB let an 8192² scene hold 60 MiB more dirty blocks than a 2048² one; one block is ~1-4 MiB).
STAGING_CACHE = 16 * 2**20
SCRATCH_UNCOMPRESSED_MAX = 2 * 2**30  # bytes of overviews a COG build may keep uncompressed on the output's disk


FULL_DISK_BYTES = 4 * 2**20


def disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no space left."""
    try:
        status = os.statvfs(folder)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < FULL_DISK_BYTES


@contextmanager
def said_plainly(folder: Path) -> Iterator[None]:
    """GDAL reports a disk that filled up mid-write as whatever failed next ("TIFFRewriteDirectory: Error
    fetching directory count", "not recognized as a supported file format"): say "No space left on device"
    when that is the cause, checked before anything is cleaned up and the space comes back."""
    try:
        yield
    except Exception as exc:
        if disk_full(folder) and not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise OSError(errno.ENOSPC, f"No space left on device in {folder} (GDAL: {detail})") from exc
        raise


def temp_sibling(path: Path) -> Path:
    """A unique name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def write_bytes_atomic(path: Path, data: Buffer) -> None:
    """``data`` at ``path``, written under a temporary name and renamed: never half a file."""
    staging = temp_sibling(path)
    try:
        with open(staging, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, written under a temporary name and renamed: never half a file."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def built_in_memory(path: Path) -> Iterator[str]:
    """A GDAL path in memory to build a small file at (a one-block scene's COG); on leaving the block its bytes
    are written to ``path`` atomically (:func:`write_bytes_atomic`), and nothing else is left.

    Why: a file GDAL creates on disk costs more than one Python write and a rename. A one-block COG built on disk
    needs a build folder of its own (see :func:`publish_cog`: mkdir, GDAL's listing of it, rmtree), and GDAL's PNG
    writer (the quicklook's then) goes through a temporary dataset before its copy. Publishing 300 one-block 256²
    scenes took 10.0-11.8 ms a scene written on disk and 9.0-10.1 built in memory (measured, runs interleaved).
    The quicklook's cost did not grow with the output folder either way (3.0 ms among 0, 4000 or 40 000 files).
    The bytes are the same (tested). Only for files of a few MiB: they are held whole in memory.
    """
    with MemoryFile(ext=path.suffix) as memory:
        yield memory.name
        write_bytes_atomic(path, memory.getbuffer())


class StagingRaster:
    """A uint8 raster written window by window under a temporary name beside its final path.

    Args:
        path: the final output path (nothing is written there; see :func:`publish_cog`).
        scene: georeferencing (CRS, transform, size) copied from the source scene.
        descriptions: one name per band.
        nodata: the nodata value of every band (None: every value is data).
        tile: internal tile side; the prediction block size, so each block is exactly one tile (a multiple of
            16, as TIFF requires; otherwise 512-px tiles, and GDAL updates partial tiles in place).
        colormap: RGB per value for band 1 (class rasters).
        tags: dataset metadata (class names).
        scale: GDAL scale of every band, or one per band (value x scale = physical value), e.g. 1/254 for
            probabilities.
        dtype: uint8, or uint16 for class rasters with more ids than a byte holds (change maps).
        memory: in GDAL's memory instead of a file (a one-block scene: see
            :class:`geoseg.inference.scene.HeldBlock`); hand :attr:`dataset` to :func:`publish_cog` before closing.
    """

    def __init__(
        self,
        path: Path,
        scene: SceneInfo,
        descriptions: Sequence[str],
        nodata: int | None,
        tile: int = COG_BLOCK,
        colormap: Mapping[int, tuple[int, int, int]] | None = None,
        tags: Mapping[str, str] | None = None,
        scale: float | Sequence[float] | None = None,
        dtype: str = "uint8",
        memory: bool = False,
    ) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.scene = scene
        self.staging = temp_sibling(self.path)
        aligned = tile % 16 == 0 and tile <= _MAX_STAGING_TILE
        profile = {
            "driver": "GTiff",
            "width": scene.width,
            "height": scene.height,
            "count": len(descriptions),
            "dtype": self.dtype.name,
            "crs": scene.crs,
            "transform": scene.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": tile if aligned else COG_BLOCK,
            "blockysize": tile if aligned else COG_BLOCK,
            "BIGTIFF": "IF_SAFER",
            "interleave": "band",
        }
        if len(descriptions) > 1:
            # Grey bands: GTiff makes 3 or 4 byte bands RGB(A) unless told, and the COG inherits it, so a 3-class
            # probability raster's confidence band became an alpha band (QGIS and gdalwarp mask by it).
            profile["photometric"] = "MINISBLACK"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._memory: MemoryFile | None = None
        if memory and len(descriptions) == 1:
            # GDAL's MEM driver: the pixels as they are, no TIFF to encode and decode again, and the same COG
            # byte for byte (tested); 0.6-1.4 ms less than a GeoTIFF in /vsimem for a 256² scene (measured).
            shape = {k: profile[k] for k in ("width", "height", "count", "dtype", "crs", "transform", "nodata")}
            self._dst = rasterio.open(f"geoseg-{uuid.uuid4().hex}", "w", driver="MEM", **shape)
        elif memory:
            # Several bands: a GeoTIFF in /vsimem with the staging file's profile (the COG takes its colour
            # interpretation from the source; a MEM raster would set it otherwise).
            self._memory = MemoryFile()
            self._dst = self._memory.open(**profile)
        else:
            with said_plainly(self.path.parent):
                self._dst = rasterio.open(self.staging, "w", **profile)
        for band, text in enumerate(descriptions, start=1):
            self._dst.set_band_description(band, text)
        if colormap or tags:
            self.describe(colormap or {}, tags or {})
        if scale is not None:  # GDAL's own scale: QGIS and gdalinfo then show physical values (probabilities)
            scales = (scale,) * len(descriptions) if isinstance(scale, float | int) else tuple(scale)
            self._dst.scales = scales
            self._dst.offsets = (0.0,) * len(descriptions)

    def describe(self, colormap: Mapping[int, tuple[int, int, int]], tags: Mapping[str, str]) -> None:
        """Band 1's colour table and the dataset's tags; may follow the pixels (a change map learns which of
        its ids occur only once every block is written)."""
        if colormap:
            self._dst.write_colormap(1, {value: (*rgb, 255) for value, rgb in colormap.items()})
        if tags:
            self._dst.update_tags(**tags)

    def write(self, window: Window, array: np.ndarray) -> None:
        """Write ``array`` (``[h, w]`` for one band, ``[bands, h, w]``) at ``window``."""
        data = array[None] if array.ndim == 2 else array
        with said_plainly(self.path.parent), rasterio.Env(GDAL_CACHEMAX=STAGING_CACHE):
            self._dst.write(data.astype(self.dtype, copy=False), window=window)

    @property
    def dataset(self) -> rasterio.io.DatasetWriter:
        """The open dataset (a memory raster's pixels live only in it)."""
        return self._dst

    def close(self) -> Path:
        """Finish the staging file; returns its path (hand it to :func:`publish_cog`)."""
        with said_plainly(self.path.parent):
            self._dst.close()
        return self.staging

    def abort(self) -> None:
        """Drop everything written so far (a memory raster too); the final path is left untouched."""
        if not self._dst.closed:
            self._dst.close()
        if self._memory is not None:
            self._memory.close()
        self.staging.unlink(missing_ok=True)

    def __enter__(self) -> StagingRaster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def publish_cog(staging: Path | rasterio.io.DatasetWriter, path: Path, overview_resampling: str) -> Path:
    """Convert a finished staging GeoTIFF (or a memory raster, :class:`StagingRaster` with ``memory``) into a COG
    at ``path`` (atomically) and remove the staging file.

    ``overview_resampling``: ``nearest`` for classes (averaging ids is meaningless), ``average`` for
    probabilities. On any error neither a COG nor the staging file is left behind.

    The COG is built alone in a fresh hidden folder beside ``path`` (``.<name>.<8 hex>.partial/<name>``) and
    renamed out of it: GDAL's GeoTIFF writer lists the folder of every file it creates, to look for sidecar
    files (``GDAL_DISABLE_READDIR_ON_OPEN`` does not stop it), so a COG built beside its final name cost a
    listing of the whole output folder, and a scene's cost grew with the archive (1.6 ms among 5000 files,
    18.6 ms among 50 000, measured). A killed job's leftover folder is removed by the next run, as a
    ``.partial`` file is. A memory raster is at most one block: its COG is built in memory and written to
    ``path`` in one go (:func:`built_in_memory`).
    """
    if not isinstance(staging, Path):  # a held block (one block of a scene): built in memory, its bytes written once
        with built_in_memory(path) as target:
            copy_to_cog(staging, target, overview_resampling)
        return path
    try:
        return build_cog(staging, path, overview_resampling)
    finally:
        staging.unlink(missing_ok=True)


def build_cog(source: Path, path: Path, overview_resampling: str, cache: int | None = None) -> Path:
    """``source`` (left as it is) as a COG at ``path``, built alone in a fresh hidden folder beside it
    (``.<name>.<8 hex>.partial/<name>``) and renamed out of it; nothing else is left, whatever fails.

    Why a folder: GDAL lists the folder of every file it creates (see :func:`publish_cog`), and its COG driver
    computes the overviews in a scratch file named after the target (``<target>.ovr.tmp``): built beside the
    final name, a killed build left that scratch file, which no sweep of ``.partial`` names recognised. One
    folder holds both, and a job's start removes it (:func:`geoseg.inference.outputs.remove_stale_partials`).
    """
    folder = temp_sibling(path)
    try:
        folder.mkdir()
        with said_plainly(path.parent):
            copy_to_cog(source, folder / path.name, overview_resampling, cache)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def overview_scratch_compression(width: int, height: int, count: int, itemsize: int = 1) -> str:
    """How GDAL's COG driver compresses the scratch file it builds a COG's overviews in.

    The driver computes the overviews into a temporary GeoTIFF, then copies them into the COG with the COG's
    own compression, so the scratch file's compression changes no byte of the COG (tested). Its default is
    ZSTD at level 9, which cost more than the whole COG's DEFLATE: an 8192² class raster took 1.3 CPU-s to
    publish with it, 0.5 uncompressed, 0.9 with LZW (measured, the same COG bytes each way). Uncompressed,
    the scratch file holds a third of the raster's bytes for the build's duration; above
    :data:`SCRATCH_UNCOMPRESSED_MAX` (a 76 000² one-byte raster) LZW keeps it small on the output's disk.
    """
    overview_bytes = width * height * count * itemsize // 3
    return "NONE" if overview_bytes <= SCRATCH_UNCOMPRESSED_MAX else "LZW"


def copy_to_cog(
    source: Path | rasterio.io.DatasetReader | rasterio.io.DatasetWriter,
    target: Path | str,
    overview_resampling: str,
    cache: int | None = None,
) -> None:
    """``source`` as a Cloud-Optimized GeoTIFF at ``target`` (written in place: callers give a temporary name):
    DEFLATE level :data:`COG_DEFLATE_LEVEL`, :data:`COG_BLOCK` tiles, overviews by ``overview_resampling``,
    GDAL's threads on all CPUs, and its overview scratch file as :func:`overview_scratch_compression` says.
    The one place a COG is made (prediction outputs, mosaics).

    ``cache``: GDAL's block cache for the build, by default :data:`COG_CACHE_PER_BAND` a band up to
    :data:`COG_CACHE`. Capped because the COG driver streams and GDAL's default (5 % of RAM) would hold the whole
    raster: a class raster needs 16 MiB (64 MiB took 45 MiB more at 8192², no faster); 7 probability bands were
    1.7x slower with 16 MiB than with 64 (measured).
    """
    with rasterio.open(source) if isinstance(source, Path) else nullcontext(source) as src:
        scratch = overview_scratch_compression(src.width, src.height, src.count, np.dtype(src.dtypes[0]).itemsize)
        if cache is None:
            cache = min(COG_CACHE, COG_CACHE_PER_BAND * src.count)
        with rasterio.Env(GDAL_CACHEMAX=cache, COG_TMP_COMPRESSION=scratch):
            rasterio.shutil.copy(
                src,
                target,
                driver="COG",
                compress="deflate",
                level=COG_DEFLATE_LEVEL,
                blocksize=COG_BLOCK,
                overview_resampling=overview_resampling,
                bigtiff="if_safer",
                num_threads="ALL_CPUS",
            )


def class_tags(class_ids: Sequence[int], names: Sequence[str]) -> dict[str, str]:
    """The ``class_<id>=<name>`` tags of a class raster: where its class names live (read by
    :func:`class_names_from_tags`; styles and polygons are derived from them)."""
    return {f"class_{cid}": name for cid, name in zip(class_ids, names, strict=True)}


def class_names_from_tags(tags: Mapping[str, str]) -> dict[int, str]:
    """Class names by id from a class raster's ``class_<id>`` tags (see :func:`class_tags`)."""
    return {int(k[6:]): v for k, v in tags.items() if k.startswith("class_") and k[6:].isdigit()}


def class_staging(
    path: Path,
    scene: SceneInfo,
    class_ids: Sequence[int],
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    tile: int,
    memory: bool = False,
) -> StagingRaster:
    """A class raster: one uint8 band, colour table and ``class_<id>`` names from the bundle, nodata 255."""
    return StagingRaster(
        path,
        scene,
        ["class"],
        CLASS_NODATA,
        tile,
        colormap=dict(zip(class_ids, colors, strict=True)),
        tags=class_tags(class_ids, class_names),
        memory=memory,
    )


def probability_staging(
    path: Path, scene: SceneInfo, class_names: Sequence[str], tile: int, memory: bool = False
) -> StagingRaster:
    """One uint8 band per class (``round(p * 254)``), then a ``confidence`` band (the top probability)."""
    return StagingRaster(
        path,
        scene,
        [*class_names, "confidence"],
        PROBABILITY_NODATA,
        tile,
        tags={"scale": str(1 / PROBABILITY_SCALE), "meaning": "probability = value / 254"},
        scale=1 / PROBABILITY_SCALE,
        memory=memory,
    )
