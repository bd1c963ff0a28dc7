"""Outputs read back the way GDAL and QGIS read them: category names, scales, QML styles, RFC 7946 GeoJSON."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil

from geoseg.io import open_scene
from geoseg.io.styles import ClassStyle, _write_png, dress_class_raster, style_class_raster
from geoseg.io.writer import class_staging, probability_staging, publish_cog
from geoseg.vector.job import vectorize_raster
from geoseg.vector.polygonize import VectorizeOptions

NAMES = ["water", "forest & shrub", "urban <dense>"]  # names that need escaping in XML
COLORS = [(31, 119, 180), (44, 160, 44), (214, 39, 40)]


def _rgba(png: Path) -> np.ndarray:
    """A PNG as a viewer shows it, ``[4, h, w]`` RGBA, decoded by Pillow (not by GDAL, which wrote it)."""
    from PIL import Image

    with Image.open(png) as picture:
        return np.asarray(picture.convert("RGBA")).transpose(2, 0, 1)


def _gdalinfo(path: Path) -> dict:
    return json.loads(
        subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, check=True).stdout
    )


@pytest.fixture
def class_raster(make_geotiff, tmp_path: Path) -> Path:
    scene = open_scene(make_geotiff(np.zeros((1, 40, 50), np.uint8), name="source.tif"))
    data = np.zeros((40, 50), np.uint8)
    data[:, 20:] = 1
    data[30:, :10] = 2
    out = tmp_path / "classes.tif"
    with class_staging(out, scene, [0, 1, 2], NAMES, COLORS, 64) as staging:
        staging.write(rasterio.windows.Window(0, 0, 50, 40), data)
    publish_cog(staging.staging, out, "nearest")
    style_class_raster(out)
    return out


def test_class_raster_has_category_names_colours_and_a_paletted_style(class_raster: Path) -> None:
    band = _gdalinfo(class_raster)["bands"][0]
    assert band["categories"] == NAMES
    assert [e[:3] for e in band["colorTable"]["entries"][:3]] == [list(c) for c in COLORS]
    qml = ET.parse(class_raster.with_suffix(".qml")).getroot()
    renderer = qml.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = [(e.get("value"), e.get("label"), e.get("color")) for e in renderer.iter("paletteEntry")]
    assert entries == [("0", NAMES[0], "#1f77b4"), ("1", NAMES[1], "#2ca02c"), ("2", NAMES[2], "#d62728")]


def test_dressing_from_held_pixels_writes_the_same_files_as_from_the_raster(make_geotiff, tmp_path: Path) -> None:
    """A one-block scene's quicklook and styles are drawn from the block it still holds, without reopening the
    COG: the same bytes as from the COG, nodata included, classes given in any order."""
    scene = open_scene(make_geotiff(np.zeros((1, 40, 50), np.uint8), name="source.tif"))
    data = np.random.default_rng(3).integers(0, 3, (40, 50)).astype(np.uint8)
    data[:5, :7] = 255  # nodata: transparent
    files = {}
    for how in ("raster", "held"):
        out = tmp_path / how / "classes.tif"
        out.parent.mkdir()
        with class_staging(out, scene, [0, 1, 2], NAMES, COLORS, 64) as staging:
            staging.write(rasterio.windows.Window(0, 0, 50, 40), data)
        publish_cog(staging.staging, out, "nearest")
        table = [ClassStyle(i, NAMES[i], COLORS[i]) for i in (2, 0, 1)]
        written = dress_class_raster(out, (table, data) if how == "held" else None)
        files[how] = {path.name: path.read_bytes() for path in written}
    assert set(files["held"]) == {"classes.tif.aux.xml", "classes.qml", "classes.png"}
    assert files["held"] == files["raster"]
    rgba = _rgba(tmp_path / "held" / "classes.png")
    assert (rgba[3][:5, :7] == 0).all() and (rgba[3][5:] == 255).all()
    assert tuple(rgba[:3, 20, 20]) == COLORS[data[20, 20]]
    # Pillow encodes the quicklook; GDAL's own PNG writer makes the same picture of the same paletted pixels: the
    # same RGBA as a viewer decodes it, and the same band and colour table as GDAL (and so QGIS) reads them.
    with warnings.catch_warnings(category=rasterio.errors.NotGeoreferencedWarning, action="ignore"):
        with rasterio.open("direct", "w", driver="MEM", width=50, height=40, count=1, dtype="uint8") as picture:
            picture.write(np.where(data == 255, 3, data)[None])  # nodata: the transparent entry after the last class
            picture.write_colormap(1, {i: (*COLORS[i], 255) for i in range(3)} | {3: (0, 0, 0, 0)})
            rasterio.shutil.copy(picture, tmp_path / "direct.png", driver="PNG")
        np.testing.assert_array_equal(_rgba(tmp_path / "direct.png"), rgba)
        with rasterio.open(tmp_path / "direct.png") as by_gdal, rasterio.open(tmp_path / "held/classes.png") as ours:
            assert ours.count == 1 and ours.colorinterp[0] == rasterio.enums.ColorInterp.palette
            np.testing.assert_array_equal(ours.read(1), by_gdal.read(1))
            assert [ours.colormap(1)[i] for i in range(4)] == [by_gdal.colormap(1)[i] for i in range(4)]
    (tmp_path / "direct.png").unlink()
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == sorted([*files["held"], "classes.tif"])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_the_quicklook_shows_each_class_in_its_colour_and_nodata_transparent(tmp_path: Path, dtype: str) -> None:
    """Every pixel of the picture a viewer decodes: class colours, transparent nodata and transparent ids the table
    does not name. A byte raster's quicklook is paletted (a quarter of the bytes to encode); a change map whose
    ids pass 254 gets an RGBA one."""
    top = 3 if dtype == "uint8" else 300
    table = [ClassStyle(1, "a", (10, 20, 30)), ClassStyle(top, "b", (200, 100, 0)), ClassStyle(0, "c", (0, 0, 255))]
    classes = np.random.default_rng(5).integers(0, top + 3, (30, 40)).astype(dtype)
    classes[0, :4] = [0, 1, top, top + 1]  # each class, and an id the table does not name
    valid = np.random.default_rng(6).random((30, 40)) > 0.2
    valid[0, :4] = True
    out = _write_png(tmp_path / "classes.tif", sorted(table, key=lambda c: c.id), classes, valid)
    expected = np.zeros((4, 30, 40), np.uint8)
    for c in table:
        here = valid & (classes == c.id)
        expected[:, here] = np.array([*c.rgb, 255], np.uint8)[:, None]
    np.testing.assert_array_equal(_rgba(out), expected)
    assert tuple(_rgba(out)[:, 0, 3]) == (0, 0, 0, 0)  # an unnamed id: transparent
    quiet = warnings.catch_warnings(category=rasterio.errors.NotGeoreferencedWarning, action="ignore")
    with quiet, rasterio.open(out) as png:
        assert png.count == (1 if dtype == "uint8" else 4)


def test_probability_bands_carry_their_scale(make_geotiff, tmp_path: Path) -> None:
    scene = open_scene(make_geotiff(np.zeros((1, 20, 20), np.uint8), name="source.tif"))
    out = tmp_path / "p.tif"
    with probability_staging(out, scene, ["a", "b"], 64) as staging:
        staging.write(rasterio.windows.Window(0, 0, 20, 20), np.full((3, 20, 20), 127, np.uint8))
    publish_cog(staging.staging, out, "average")
    bands = _gdalinfo(out)["bands"]
    assert [b["scale"] for b in bands] == pytest.approx([1 / 254] * 3) and all(b["offset"] == 0 for b in bands)
    with rasterio.open(out) as src:  # what QGIS shows: value x scale
        assert src.read(1)[0, 0] * src.scales[0] == pytest.approx(0.5)


@pytest.mark.parametrize("memory", [False, True], ids=["staging-file", "held-block"])
def test_probabilities_of_two_or_three_classes_are_grey_bands_not_rgb_or_alpha(
    make_geotiff, tmp_path: Path, memory: bool
) -> None:
    """GTiff makes 3 or 4 byte bands RGB(A) unless told otherwise: 2 classes + confidence opened as a colour
    image, and 3 classes' confidence band became an alpha band that QGIS and gdalwarp mask by."""
    from qgis_client import run_qgis

    scene = open_scene(make_geotiff(np.zeros((1, 20, 20), np.uint8), name="source.tif"))
    paths = []
    for names in (["a", "b"], ["a", "b", "c"]):
        out = tmp_path / f"p{len(names)}.tif"
        staging = probability_staging(out, scene, names, 64, memory=memory)
        staging.write(rasterio.windows.Window(0, 0, 20, 20), np.full((len(names) + 1, 20, 20), 40, np.uint8))
        if memory:
            publish_cog(staging.dataset, out, "average")
            staging.abort()
        else:
            publish_cog(staging.close(), out, "average")
        assert [b["colorInterpretation"] for b in _gdalinfo(out)["bands"]] == ["Gray"] + ["Undefined"] * len(names)
        paths.append(str(out))
    found = run_qgis(
        f"""
        from qgis.core import QgsRaster
        out = []
        for path in {paths!r}:
            layer = QgsRasterLayer(path, "p")
            provider = layer.dataProvider()
            interp = [provider.colorInterpretation(b) for b in range(1, provider.bandCount() + 1)]
            out.append([layer.isValid(), layer.renderer().alphaBand(),
                        sum(i in (QgsRaster.RedBand, QgsRaster.GreenBand, QgsRaster.BlueBand, QgsRaster.AlphaBand)
                            for i in interp)])
        print(json.dumps(out))
        """,
        tmp_path,
    )
    assert found == [[True, -1, 0], [True, -1, 0]]  # no band read as a colour or as transparency


def test_polygons_carry_colours_and_a_default_qgis_style(class_raster: Path, tmp_path: Path) -> None:
    gpkg, shp = tmp_path / "v" / "polys.gpkg", tmp_path / "v" / "polys.shp"
    vectorize_raster(class_raster, [gpkg, shp], VectorizeOptions(), workers=1)
    frame = gpd.read_file(gpkg)
    assert dict(zip(frame.class_id, frame.color, strict=True)) == {0: "#1f77b4", 1: "#2ca02c", 2: "#d62728"}
    assert set(gpd.read_file(shp).color) == {"#1f77b4", "#2ca02c", "#d62728"}
    with sqlite3.connect(gpkg) as db:
        [(table, default, qml, when)] = db.execute(
            "SELECT f_table_name, useAsDefault, styleQML, update_time FROM layer_styles"
        ).fetchall()
    assert table == "polys" and default == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", when), when  # ISO 8601, as GDAL reads it
    for style in (ET.fromstring(qml.split("\n", 1)[1]), ET.parse(shp.with_suffix(".qml")).getroot()):
        renderer = style.find("renderer-v2")
        assert renderer is not None and renderer.get("attr") == "class_id"
        assert [(c.get("value"), c.get("label")) for c in renderer.iter("category")] == [
            ("0", NAMES[0]),
            ("1", NAMES[1]),
            ("2", NAMES[2]),
        ]


def test_geojson_is_rfc7946(class_raster: Path, tmp_path: Path) -> None:
    out = tmp_path / "polys.geojson"
    vectorize_raster(class_raster, [out], VectorizeOptions(), workers=1)
    document = json.loads(out.read_text())
    assert "crs" not in document  # RFC 7946 drops the legacy member: WGS84 always
    coordinates = [xy for f in document["features"] for ring in f["geometry"]["coordinates"] for xy in ring]
    assert all(len(repr(v).split(".")[-1]) <= 7 for xy in coordinates for v in xy)
    assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in coordinates)
