"""Styles that travel with the outputs, so QGIS shows class names and colours instead of bare ids.

The class table (id, name, colour) has one home: the class raster itself, as its colour table and its
``class_<id>`` tags, written from the bundle. Everything here is derived from it:

* the class raster gets GDAL category names and a colour table of only its classes (a PAM ``.aux.xml`` beside
  it: TIFF has no field for names and holds 256 colours, GDAL's GTiff driver keeps PAM there too) and a
  paletted QGIS style ``<stem>.qml`` with the names as labels;
* polygons get a ``color`` attribute (``#rrggbb``) and a categorized QGIS style: inside a GeoPackage as its
  default style (the ``layer_styles`` table QGIS reads), beside other formats as ``<stem>.qml`` (predict names them
  ``<scene>_polygons.<ext>``, so the raster's ``<scene>.qml`` is not theirs).

QGIS loads ``<stem>.qml`` beside a file, and a GeoPackage's default ``layer_styles`` row, when the layer is
added. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from geoseg.io.writer import CLASS_NODATA, class_names_from_tags, write_bytes_atomic

QGIS_VERSION = "3.28.0"  # the oldest long-term release whose style format this is


@dataclass(frozen=True)
class ClassStyle:
    id: int
    name: str
    rgb: tuple[int, int, int]

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


def class_table(src: rasterio.DatasetReader) -> list[ClassStyle]:
    """Classes of a class raster from its tags and colour table (empty when it has neither)."""
    names = class_names_from_tags(src.tags())
    try:
        colors = src.colormap(1)
    except ValueError:  # no colour table
        colors = {}
    ids = sorted(names) if names else []
    return [ClassStyle(i, names[i], tuple(colors.get(i, (128, 128, 128, 255))[:3])) for i in ids]


def _qgis(children: ET.Element) -> str:
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    root.append(children)
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode")


def raster_qml(table: list[ClassStyle]) -> str:
    """A paletted QGIS style: one entry per class, its name as the legend label."""
    pipe = ET.Element("pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in table:
        ET.SubElement(palette, "paletteEntry", value=str(c.id), color=c.hex, alpha="255", label=c.name)
    return _qgis(pipe)


def _categorized(table: list[ClassStyle], field: str, kind: str) -> ET.Element:
    """A categorized renderer on ``field``: one symbol per class (``fill`` for polygons, ``marker`` for points)
    in its colour, its name as the label."""
    renderer = ET.Element("renderer-v2", type="categorizedSymbol", attr=field, symbollevels="0", forceraster="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    shape = (("outline_width", "0.1"), ("style", "solid")) if kind == "fill" else (("name", "circle"), ("size", "3"))
    for n, c in enumerate(table):
        ET.SubElement(categories, "category", value=str(c.id), label=c.name, symbol=str(n), render="true")
        symbol = ET.SubElement(symbols, "symbol", type=kind, name=str(n), alpha="1", clip_to_extent="1")
        layer_class = "SimpleFill" if kind == "fill" else "SimpleMarker"
        layer = ET.SubElement(symbol, "layer", {"class": layer_class, "pass": "0", "locked": "0", "enabled": "1"})
        options = ET.SubElement(layer, "Option", type="Map")
        colours = (("color", f"{c.rgb[0]},{c.rgb[1]},{c.rgb[2]},255"), ("outline_color", "35,35,35,255"))
        for key, value in (*colours, *shape):
            ET.SubElement(options, "Option", name=key, type="QString", value=value)
    return renderer


def vector_qml(table: list[ClassStyle], field: str = "class_id") -> str:
    """A categorized QGIS style on ``field``: a fill per class in its colour, its name as the label."""
    return _qgis(_categorized(table, field, "fill"))


def category_names_pam(table: list[ClassStyle]) -> str:
    """A GDAL PAM document giving band 1 its category names and a colour table of only the class ids
    (index = class id; gaps are empty and transparent).

    TIFF stores a palette of 2^bits entries, so an 8-bit class raster's own colour table has 256 and QGIS
    listed 256 legend entries for a 3-class map opened without its ``.qml``. GDAL reports the PAM colour table
    in place of the file's, so QGIS (and ArcGIS, which reads PAM too) list exactly the classes, named, from the
    raster and its ``.aux.xml``; the file keeps its own 256-entry palette, so its colours survive without it.
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    by_id = {c.id: c for c in table}
    count = max(by_id) + 1 if by_id else 0
    for value in range(count):
        ET.SubElement(names, "Category").text = by_id[value].name if value in by_id else ""
    if count:
        ET.SubElement(band, "ColorInterp").text = "Palette"
        colours = ET.SubElement(band, "ColorTable")
        for value in range(count):
            rgb, alpha = (by_id[value].rgb, 255) if value in by_id else ((0, 0, 0), 0)
            ET.SubElement(colours, "Entry", c1=str(rgb[0]), c2=str(rgb[1]), c3=str(rgb[2]), c4=str(alpha))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


@functools.lru_cache(maxsize=16)
def _class_raster_styles(table: tuple[ClassStyle, ...]) -> tuple[bytes, bytes]:
    """The ``.aux.xml`` and ``.qml`` of a class table, encoded once: every scene of a job has the same table, and
    building the two XML documents was ~0.5 ms of a 256² scene's publishing (profiled)."""
    return category_names_pam(list(table)).encode("utf-8"), raster_qml(list(table)).encode("utf-8")


def style_class_raster(path: Path, table: list[ClassStyle] | None = None) -> list[Path]:
    """Write ``<path>.aux.xml`` (category names) and ``<stem>.qml`` beside a class raster; returns them.
    ``table``: the raster's own class table when the caller has read it already (one open per product)."""
    if table is None:
        with rasterio.open(path) as src:
            table = class_table(src)
    if not table:
        return []
    written = [path.with_name(path.name + ".aux.xml"), path.with_suffix(".qml")]
    try:
        for target, text in zip(written, _class_raster_styles(tuple(table)), strict=True):
            write_bytes_atomic(target, text)
    except BaseException:  # a full disk: no half of a style left behind
        for leftover in written:
            leftover.unlink(missing_ok=True)
        raise
    return written


def dress_class_raster(path: Path, held: tuple[list[ClassStyle], np.ndarray] | None = None) -> list[Path]:
    """The quicklook, the category names and the QGIS style of a freshly published class raster (see
    :func:`write_thumbnail` and :func:`style_class_raster`), from one open of it: for an archive of small scenes
    each open is a large share of the scene's cost.

    ``held``: the raster's class table and all of its pixels, when the caller still holds them (a one-block
    scene): a quicklook at full size is then drawn from them and the raster is not opened at all (1.5-2 ms a
    scene, measured). The same picture either way: the raster's mask is its nodata value.
    """
    if held is not None and max(held[1].shape) <= THUMBNAIL_SIDE:
        table, classes = sorted(held[0], key=lambda c: c.id), held[1]
        valid = classes != CLASS_NODATA
    else:
        table, classes, valid = _thumbnail_source(path, THUMBNAIL_SIDE)
    picture = _write_png(path, table, classes, valid) if table else None
    return style_class_raster(path, table) + ([picture] if picture is not None else [])


THUMBNAIL_SIDE = 512  # pixels on the longer side: a STAC browser's card, a file manager's preview


def write_thumbnail(path: Path, max_side: int = THUMBNAIL_SIDE) -> Path | None:
    """``<stem>.png`` beside a class raster: its classes in their colours, nodata transparent, at most
    ``max_side`` pixels a side (decimated by nearest neighbour, from the COG's overviews: a few blocks read,
    not the scene). The STAC item's thumbnail, and a picture of the result without a GIS. None when the raster
    has no class table."""
    table, classes, valid = _thumbnail_source(path, max_side)
    return _write_png(path, table, classes, valid) if table else None


def _thumbnail_source(path: Path, max_side: int) -> tuple[list[ClassStyle], np.ndarray, np.ndarray]:
    """A class raster's class table, and its classes and validity at most ``max_side`` pixels a side."""
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        table = class_table(src)
        if not table:
            return table, np.zeros((0, 0), np.uint8), np.zeros((0, 0), bool)
        scale = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        valid = src.read_masks(1, out_shape=shape, resampling=Resampling.nearest) > 0
    return table, classes, valid


def _write_png(path: Path, table: list[ClassStyle], classes: np.ndarray, valid: np.ndarray) -> Path:
    """``<stem>.png`` beside ``path``: ``classes`` in the colours of ``table``, invalid pixels transparent.

    A paletted PNG (one byte a pixel, its colours in ``PLTE``, transparency in ``tRNS``) when every class id fits
    below 255, as for all class rasters but change maps with more ids: what a viewer shows is the RGBA picture
    pixel for pixel (tested), from a quarter of the bytes to encode. libpng's RGBA encoding cost 3.6-5.6 ms of a
    256² scene's ~10 ms of publishing, paletted 1.0-1.6 (measured). Pixels of ids outside ``table`` are
    transparent either way.

    Encoded by Pillow, not by GDAL's PNG driver: a picture has no georeferencing for GDAL to carry, and GDAL
    writes PNGs only as copies of another dataset (a memory raster built, given its colour table, copied into
    memory, then written). The same 256² picture cost 1.0-1.3 ms of CPU through GDAL and 0.35 ms through
    Pillow (300 pictures each, three interleaved runs), and decodes to the same RGBA pixels (tested).
    """
    from PIL import Image

    out = path.with_suffix(".png")
    height, width = classes.shape
    top = max((c.id for c in table), default=0)
    options: dict[str, bytes] = {}
    if top < 255 and classes.dtype == np.uint8:
        clear = top + 1  # the transparent entry, after the last class: a palette no longer than needed
        colours = np.zeros((clear + 1, 3), dtype=np.uint8)
        alpha = np.zeros(clear + 1, dtype=np.uint8)
        for c in table:
            colours[c.id], alpha[c.id] = c.rgb, 255
        indexed = np.where(valid & (classes < clear), classes, clear).astype(np.uint8)
        picture = Image.frombytes("P", (width, height), indexed.tobytes())
        picture.putpalette(colours.tobytes())
        options["transparency"] = alpha.tobytes()
    else:
        lut = np.zeros((max(256, int(classes.max()) + 1), 4), dtype=np.uint8)
        for c in table:
            lut[c.id] = (*c.rgb, 255)
        # One 4-byte gather per pixel (a [256, 4] table gathered row by row took 4x longer).
        rgba = np.where(valid, lut.view(np.uint32)[:, 0][classes], 0)  # R, G, B, A in memory order
        picture = Image.frombytes("RGBA", (width, height), rgba.tobytes())
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG", **options)
    write_bytes_atomic(out, encoded.getbuffer())
    return out


def gpkg_default_style(
    path: Path, layer: str, qml: str, geometry_column: str = "geom", description: str = "geoseg classes"
) -> None:
    """Store ``qml`` as the layer's default style in the GeoPackage, as QGIS's "Save as default" does."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS layer_styles (id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256),"
            " f_table_schema TEXT(256), f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30),"
            " styleQML TEXT, styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),"
            " update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
        )
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier) VALUES (?, ?, ?)",
            ("layer_styles", "attributes", "layer_styles"),
        )
        db.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName,"
            " styleQML, styleSLD, useAsDefault, description, update_time)"
            " VALUES ('', '', ?, ?, ?, ?, '', 1, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",  # ISO 8601 for GDAL
            (layer, geometry_column, layer, qml, description),
        )


def sheet_qml(table: list[ClassStyle], field: str, choices: dict[str, list[tuple[str, str]]], locked: list[str]) -> str:
    """A labelling form for a point layer, as QGIS's layer properties save it: points coloured by ``field``'s
    class (names as labels), a drop-down (value map) per field of ``choices`` (label, stored value), and the
    fields in ``locked`` read-only, so an interpreter can only fill in what the sheet asks for."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology|Fields|Forms")
    root.append(_categorized(table, field, "marker"))
    fields = ET.SubElement(root, "fieldConfiguration")
    for name, entries in choices.items():
        widget = ET.SubElement(ET.SubElement(fields, "field", name=name, configurationFlags="None"), "editWidget")
        widget.set("type", "ValueMap")
        config = ET.SubElement(ET.SubElement(widget, "config"), "Option", type="Map")
        values = ET.SubElement(config, "Option", name="map", type="List")
        for label, stored in entries:
            entry = ET.SubElement(values, "Option", type="Map")
            ET.SubElement(entry, "Option", name=label, value=stored, type="QString")
    editable = ET.SubElement(root, "editable")
    for name in locked:
        ET.SubElement(editable, "field", name=name, editable="0")
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode")
