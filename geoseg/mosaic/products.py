"""The mosaic's files: each tile's two COGs, the VRTs over them, the single COG.

A tile writes ``tiles/<tile>.tif`` (classes: uint8, the bundle's colour table and ``class_<id>`` names, nodata
255) and ``tiles/<tile>_stats.tif`` (uint16 bands count, confidence, agreement, date, each with its GDAL scale;
no nodata value: a count of 0 says no observation, and the other bands are 0 there), each staged under a
temporary name and published as a COG by the writer predict uses. The VRTs reference the tiles by relative
paths, so the folder can be moved or synced to a bucket as it is.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from rasterio.windows import Window

from geoseg.inference.manifest import file_size
from geoseg.io.raster import SceneInfo
from geoseg.io.stack import write_vrt
from geoseg.io.styles import ClassStyle, style_class_raster
from geoseg.io.writer import (
    CLASS_NODATA,
    COG_BLOCK,
    StagingRaster,
    build_cog,
    class_tags,
    publish_cog,
)
from geoseg.mosaic.compose import STAT_BANDS, STAT_SCALES, Method, compose_tile
from geoseg.mosaic.grid import OutputGrid, Tile
from geoseg.mosaic.inputs import Observation

TILES = "tiles"
CLASSES_VRT, STATS_VRT, COG = "mosaic.vrt", "mosaic_stats.vrt", "mosaic.tif"


def tile_files(out_dir: Path, name: str) -> tuple[Path, Path]:
    """A tile's class COG and stats COG."""
    return out_dir / TILES / f"{name}.tif", out_dir / TILES / f"{name}_stats.tif"


@dataclass
class TileRecord:
    name: str
    key: str
    status: str  # "ok" or "empty" (no valid observation: no file)
    classes_bytes: int | None = None
    stats_bytes: int | None = None
    valid_pixels: int = 0


@dataclass(frozen=True)
class TileWork:
    """Everything one tile needs: picklable, so a Ray task runs it on any node."""

    tile: Tile
    grid: OutputGrid
    observations: tuple[Observation, ...]
    classes: tuple[ClassStyle, ...]
    method: Method
    key: str
    out_dir: Path
    aoi_wkb: bytes | None


def run_tile(work: TileWork) -> TileRecord:
    """Compose one tile and write its two COGs (temporary names, then renamed)."""
    from rasterio.features import geometry_mask

    tile, grid = work.tile, work.grid
    inside = None
    if work.aoi_wkb is not None:
        from shapely import wkb

        inside = geometry_mask([wkb.loads(work.aoi_wkb)], tile.shape, tile.transform, invert=True)
    ids = [c.id for c in work.classes]
    arrays = compose_tile(tile, grid, work.observations, ids, work.method, inside)
    valid = int(arrays.stats[0].astype(bool).sum())
    classes_path, stats_path = tile_files(work.out_dir, tile.name)
    if valid == 0:
        for path in (classes_path, stats_path):
            path.unlink(missing_ok=True)
        return TileRecord(tile.name, work.key, "empty")
    h, w = tile.shape
    info = SceneInfo("", w, h, 1, "uint8", grid.crs, tile.transform, None, (COG_BLOCK, COG_BLOCK))
    whole = Window(0, 0, w, h)
    classes = StagingRaster(
        classes_path,
        info,
        ["class"],
        CLASS_NODATA,
        COG_BLOCK,
        colormap={c.id: c.rgb for c in work.classes},
        tags=class_tags(ids, [c.name for c in work.classes]),
    )
    with classes:
        classes.write(whole, arrays.classes)
    stats = StagingRaster(
        stats_path,
        info,
        list(STAT_BANDS),
        None,
        COG_BLOCK,
        tags={"date": "days since 1970-01-01 (0: undated)", "count": "valid observations (0: none)"},
        scale=STAT_SCALES,
        dtype="uint16",
    )
    with stats:
        stats.write(whole, arrays.stats)
    try:
        publish_cog(classes.staging, classes_path, "nearest")
        publish_cog(stats.staging, stats_path, "nearest")
    except BaseException:
        for path in (classes_path, stats_path, classes.staging, stats.staging):
            path.unlink(missing_ok=True)
        raise
    return TileRecord(tile.name, work.key, "ok", file_size(classes_path), file_size(stats_path), valid)


def write_vrts(
    out_dir: Path, grid: OutputGrid, tiles: list[Tile], records: dict[str, TileRecord], classes: list[ClassStyle]
) -> None:
    """``mosaic.vrt`` (classes: colour table, class names, QGIS style) and ``mosaic_stats.vrt`` over the tiles."""
    written = [t for t in tiles if records[t.name].status == "ok"]

    def sources(suffix: str, band: int) -> str:
        parts = []
        for t in written:
            h, w = t.shape
            name = html.escape(f"{TILES}/{t.name}{suffix}.tif")
            parts.append(
                f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{int(t.window.col_off)}" yOff="{int(t.window.row_off)}" xSize="{w}" ySize="{h}"/>'
                "</SimpleSource>"
            )
        return "".join(parts)

    colours = {c.id: c.rgb for c in classes}
    entries = "".join(
        '<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*colours.get(i, (0, 0, 0)), 255 if i in colours else 0)
        for i in range(256)
    )
    metadata = "".join(
        f'<MDI key="{k}">{html.escape(v)}</MDI>'
        for k, v in class_tags([c.id for c in classes], [c.name for c in classes]).items()
    )
    class_band = (
        '<VRTRasterBand dataType="Byte" band="1"><Description>class</Description>'
        f"<NoDataValue>{CLASS_NODATA}</NoDataValue>"
        f"<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>{sources('', 1)}</VRTRasterBand>"
    )
    write_vrt(
        out_dir / CLASSES_VRT,
        grid.width,
        grid.height,
        grid.crs,
        grid.transform,
        [f"<Metadata>{metadata}</Metadata>", class_band],
    )
    style_class_raster(out_dir / CLASSES_VRT)
    stat_bands = [
        f'<VRTRasterBand dataType="UInt16" band="{i}"><Description>{name}</Description>'
        f"<Scale>{scale!r}</Scale><Offset>0</Offset>{sources('_stats', i)}</VRTRasterBand>"
        for i, (name, scale) in enumerate(zip(STAT_BANDS, STAT_SCALES, strict=True), start=1)
    ]
    write_vrt(out_dir / STATS_VRT, grid.width, grid.height, grid.crs, grid.transform, stat_bands)


def publish_single_cog(vrt: Path, path: Path) -> None:
    """The whole mosaic as one COG (GDAL's COG driver from the VRT), with its styles."""
    build_cog(vrt, path, "nearest", cache=64 * 2**20)
    style_class_raster(path)
