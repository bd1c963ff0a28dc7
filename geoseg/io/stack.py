"""Multi-file band stacks (one file per band, as Landsat and Sentinel-2 ship) as one virtual raster (GDAL VRT).

Each source keeps its own nodata value and data type; the VRT presents them as bands 1..n of one scene, so
every later stage reads windows from it like any GeoTIFF and nothing is copied. A stack that cannot be read
as one scene is refused with the band and the cause named: a band file that is missing or unreadable, a band
on another grid (the grid most bands share is the reference, so one odd first band does not make every other
band "wrong"), a file with several bands (a stack takes one band per file; using band 1 of it silently would
change the data), or a pixel type no model input can be (complex).
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from geoseg.errors import GeoSegError
from geoseg.io.paths import is_virtual
from geoseg.io.writer import temp_sibling

_VRT_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "int64": "Int64",
    "uint64": "UInt64",
    "float32": "Float32",
    "float64": "Float64",
}


def _grid_difference(grid: tuple[Any, ...], reference: tuple[Any, ...]) -> str:
    crs, transform, width, height = grid
    ref_crs, ref_transform, ref_width, ref_height = reference
    if crs != ref_crs:
        return f"its CRS differs ({crs.to_string() if crs else 'none'} vs {ref_crs.to_string() if ref_crs else 'none'})"
    size, ref_size = (abs(transform.a), abs(transform.e)), (abs(ref_transform.a), abs(ref_transform.e))
    if size != ref_size:
        return (
            f"its pixels are {size[0]:g} x {size[1]:g}, the other bands' {ref_size[0]:g} x {ref_size[1]:g} "
            "(resample it first)"
        )
    if (width, height) != (ref_width, ref_height):
        return f"it is {width} x {height} px, the other bands {ref_width} x {ref_height}"
    return (
        f"its origin is ({transform.c:g}, {transform.f:g}), the other bands' ({ref_transform.c:g}, {ref_transform.f:g})"
    )


def build_stack_vrt(paths: Sequence[str | Path], out: Path) -> Path:
    """Write ``out`` (.vrt) stacking band 1 of every file in ``paths``; one-line errors name the band at fault."""
    bands = []
    grids = []
    for number, path in enumerate(paths, start=1):
        try:
            with rasterio.open(path) as src:
                if src.count != 1:
                    raise GeoSegError(
                        f"band {number} of the stack has {src.count} bands; a stack takes one band per file", path
                    )
                dtype = np.dtype(src.dtypes[0]).name
                if dtype not in _VRT_TYPES:
                    raise GeoSegError(f"band {number} of the stack has pixel type {dtype}, which no model reads", path)
                grids.append((src.crs, src.transform, src.width, src.height))
                bands.append((str(path), dtype, src.nodata, src.block_shapes[0]))
        except RasterioIOError as exc:
            cause = str(exc).split(": ", 1)[-1] if str(exc) else "cannot be read"
            raise GeoSegError(f"band {number} of the stack cannot be opened as a raster ({cause})", path) from exc
    counts = Counter(grids)
    reference = max(counts, key=lambda g: (counts[g], -grids.index(g)))  # most bands' grid; ties: the first band's
    for number, (grid, (path, *_)) in enumerate(zip(grids, bands, strict=True), start=1):
        if grid != reference:
            raise GeoSegError(
                f"band {number} of the stack is not on the other bands' grid: {_grid_difference(grid, reference)}", path
            )
    crs, transform, width, height = reference
    dtype = np.result_type(*[np.dtype(d) for _, d, _, _ in bands]).name
    parts = []
    for i, (path, band_dtype, nodata, (block_h, block_w)) in enumerate(bands, start=1):
        nodata_xml = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        parts.append(
            f'<VRTRasterBand dataType="{_VRT_TYPES[dtype]}" band="{i}">{nodata_xml}'
            f"<Description>{html.escape(Path(path).stem)}</Description><SimpleSource>"
            f"{vrt_source(path)}<SourceBand>1</SourceBand>"
            f'<SourceProperties RasterXSize="{width}" RasterYSize="{height}" DataType="{_VRT_TYPES[band_dtype]}" '
            f'BlockXSize="{block_w}" BlockYSize="{block_h}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f"{'<NODATA>' + repr(nodata) + '</NODATA>' if nodata is not None else ''}"
            "</SimpleSource></VRTRasterBand>"
        )
    return write_vrt(out, width, height, crs, transform, parts)


def vrt_source(path: str) -> str:
    """A VRT ``SourceFilename`` element: GDAL virtual paths as they are, local files absolute."""
    source = path if is_virtual(path) else str(Path(path).resolve())
    return f'<SourceFilename relativeToVRT="0">{html.escape(source)}</SourceFilename>'


def write_vrt(out: Path, width: int, height: int, crs: Any, transform: Any, bands: list[str]) -> Path:
    """Write a VRT of ``width`` x ``height`` pixels on this grid holding the ``VRTRasterBand`` elements
    ``bands``, atomically (several training workers may write the same VRT: never a half file)."""
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{html.escape(crs.to_wkt()) if crs else ''}</SRS>",
        f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>",
        *bands,
        "</VRTDataset>",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(out)
    staging.write_text("\n".join(parts))
    os.replace(staging, out)
    return out
