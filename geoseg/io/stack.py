"""Multi-file band stacks (one file per band, as Landsat ships) as a single virtual raster (GDAL VRT).

Each source keeps its own nodata value and data type; the VRT presents them as bands 1..n of one scene, so
every later stage reads windows from it like any GeoTIFF and nothing is copied.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from geoseg.errors import GeoSegError

STACK_SEPARATOR = "+"


def _vrt_type(dtype: str) -> str:
    return {
        "uint8": "Byte",
        "int8": "Int8",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }[dtype]


def stack_name(paths: Sequence[Path]) -> str:
    """A scene name for a band stack: the common prefix of the file stems (``lsat7_2000`` for Landsat)."""
    prefix = os.path.commonprefix([p.stem for p in paths]).rstrip("_-. ")  # noqa: RUF071 (character prefix wanted)
    return prefix or paths[0].stem


def build_stack_vrt(paths: Sequence[Path], out: Path) -> Path:
    """Write ``out`` (.vrt) stacking band 1 of every file in ``paths``; they must share one grid."""
    bands = []
    reference = None
    for path in paths:
        try:
            with rasterio.open(path) as src:
                grid = (src.crs, src.transform, src.width, src.height)
                if reference is None:
                    reference = grid
                elif grid != reference:
                    raise GeoSegError("is not on the grid of the first band file (CRS, transform or size differ)", path)
                bands.append((Path(path).resolve(), src.dtypes[0], src.nodata, src.block_shapes[0]))
        except rasterio.errors.RasterioIOError as exc:
            raise GeoSegError("cannot open as a raster", path) from exc
    assert reference is not None
    crs, transform, width, height = reference
    dtype = np.result_type(*[np.dtype(d) for _, d, _, _ in bands]).name
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"<SRS>{html.escape(crs.to_wkt()) if crs else ''}</SRS>",
        f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>",
    ]
    for i, (path, band_dtype, nodata, (block_h, block_w)) in enumerate(bands, start=1):
        nodata_xml = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        parts.append(
            f'<VRTRasterBand dataType="{_vrt_type(dtype)}" band="{i}">{nodata_xml}'
            f"<Description>{html.escape(path.stem)}</Description><SimpleSource>"
            f'<SourceFilename relativeToVRT="0">{html.escape(str(path))}</SourceFilename><SourceBand>1</SourceBand>'
            f'<SourceProperties RasterXSize="{width}" RasterYSize="{height}" DataType="{_vrt_type(band_dtype)}" '
            f'BlockXSize="{block_w}" BlockYSize="{block_h}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f"{'<NODATA>' + repr(nodata) + '</NODATA>' if nodata is not None else ''}"
            "</SimpleSource></VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    staging.write_text("\n".join(parts))
    os.replace(staging, out)  # several training workers may write the same VRT: never a half file
    return out
