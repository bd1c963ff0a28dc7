"""Every product of ``predict``, opened the way its users open it: in QGIS (Debian's PyQGIS, headless) for the
rasters and every polygon format, and as a STAC client reads the results catalogue.

One job per polygon format, on a scene with class names that hold spaces, a nodata corner and an acquisition
time in its metadata, beside a scene whose metadata says nothing of when it was taken.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from bad_inputs import write_geotiff
from qgis_client import run_qgis
from rasterio.transform import from_origin
from test_cli import run

CLASSES = {"open water": "#1f78b4", "forest": "#33a02c", "built-up area": "#e31a1c"}
FORMATS = ("gpkg", "shp", "geojson", "fgb", "parquet")
QGIS_FORMATS = ("gpkg", "shp", "geojson", "fgb")  # Debian's GDAL 3.6 has no Parquet driver: QGIS cannot open it


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("products")
    classes = [arg for name, colour in CLASSES.items() for arg in ("--class", f"{name}={colour}")]
    made = run(
        "bundle", "init", "--arch", "unet", "--in-channels", "3", "--num-classes", "3", *classes,
        "--base-channels", "4", "--depth", "2", "--out", str(root / "bundle"),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    rng = np.random.default_rng(4)
    dated = rng.integers(1, 3000, (3, 60, 80)).astype(np.uint16)
    dated[:, :6, :9] = 0  # nodata
    transform = from_origin(500_000, 5_000_000, 10, 10)
    write_geotiff(root / "dated.tif", dated, crs="EPSG:32633", transform=transform, nodata=0)
    with rasterio.open(root / "dated.tif", "r+") as dst:
        dst.update_tags(ACQUISITIONDATETIME="2024-06-05T10:30:00Z")
    undated = rng.integers(1, 3000, (3, 40, 50)).astype(np.uint16)
    write_geotiff(root / "undated.tif", undated, crs="EPSG:32633", transform=transform, nodata=0)
    out = {}
    for fmt in FORMATS:
        out[fmt] = root / fmt
        args = ["predict", "--model", str(root / "bundle"), "--output", str(out[fmt]), "--in-process"]
        args += ["--probabilities", "--vectorize", fmt, "--stac-items"]
        args += [str(root / "dated.tif"), str(root / "undated.tif")]
        done = run(*args)
        assert done.returncode == 0, done.stderr
    return out


def _polygons(job: Path, fmt: str) -> Path:
    return job / ("dated.gpkg" if fmt == "gpkg" else f"dated_polygons.{fmt}")


def test_each_product_has_a_style_of_its_own(jobs: dict[str, Path]) -> None:
    """``predict --vectorize shp`` wrote ``dated.shp`` beside ``dated.tif``: the raster's ``dated.qml`` took the
    shared name and the polygons opened unstyled (issue 23)."""
    for fmt in FORMATS:
        names = {p.name for p in jobs[fmt].iterdir()}
        assert {"dated.tif", "dated.qml", "dated.tif.aux.xml", "dated.png", "dated_probabilities.tif"} <= names
        if fmt == "gpkg":
            assert "dated.gpkg" in names and not any(n.endswith("_polygons.qml") for n in names)
        else:
            assert {f"dated_polygons.{fmt}", "dated_polygons.qml"} <= names, names
            assert "categorizedSymbol" in (jobs[fmt] / "dated_polygons.qml").read_text()


def test_qgis_shows_each_map_named_coloured_and_scaled(jobs: dict[str, Path], tmp_path: Path) -> None:
    """Legend entries and labels, default styles applied, nodata transparent, probabilities scaled; and the
    class raster alone (its ``.qml`` not copied) lists its classes, not the 256 entries of a TIFF palette."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("dated.tif", "dated.tif.aux.xml"):
        shutil.copy(jobs["gpkg"] / name, alone / name)
    polygons = {fmt: str(_polygons(jobs[fmt], fmt)) for fmt in QGIS_FORMATS}
    found = run_qgis(
        f"""
        def raster(path):
            layer = QgsRasterLayer(path, "r")
            provider = layer.dataProvider()
            renderer = layer.renderer()
            classes = renderer.classes() if renderer.type() == "paletted" else []
            return {{
                "valid": layer.isValid(),
                "renderer": renderer.type(),
                "legend": [[c.value, c.label, c.color.name()] for c in classes],
                "nodata": [provider.sourceHasNoDataValue(1), provider.sourceNoDataValue(1),
                           provider.useSourceNoDataValue(1)],
                "scale": [provider.bandScale(1), provider.bandOffset(1)],
            }}

        def vector(path):
            layer = QgsVectorLayer(path, "v", "ogr")
            renderer = layer.renderer()
            categories = renderer.categories() if renderer.type() == "categorizedSymbol" else []
            return {{
                "valid": layer.isValid(),
                "renderer": renderer.type(),
                "field": renderer.classAttribute() if categories else None,
                "legend": [[int(c.value()), c.label(), c.symbol().color().name()] for c in categories],
                "features": layer.featureCount(),
            }}

        print(json.dumps({{
            "classes": raster("{jobs["gpkg"] / "dated.tif"}"),
            "alone": raster("{alone / "dated.tif"}"),
            "probabilities": raster("{jobs["gpkg"] / "dated_probabilities.tif"}"),
            "polygons": {{fmt: vector(path) for fmt, path in {polygons!r}.items()}},
        }}))
        """,
        tmp_path,
    )
    legend = [[i, name, colour] for i, (name, colour) in enumerate(CLASSES.items())]
    for key in ("classes", "alone"):
        layer = found[key]
        assert layer["valid"] and layer["renderer"] == "paletted", layer
        assert layer["legend"] == legend, (key, layer["legend"][:5], len(layer["legend"]))
        assert layer["nodata"] == [True, 255, True]  # nodata is transparent
    probabilities = found["probabilities"]
    assert probabilities["valid"] and probabilities["scale"] == pytest.approx([1 / 254, 0.0])
    assert probabilities["nodata"][:2] == [True, 255]
    for fmt, layer in found["polygons"].items():
        assert layer["valid"] and layer["features"] > 0, fmt
        assert layer["renderer"] == "categorizedSymbol" and layer["field"] == "class_id", (fmt, layer)
        assert layer["legend"] == legend, (fmt, layer["legend"])


def test_the_parquet_polygons_read_as_geoparquet(jobs: dict[str, Path]) -> None:
    import geopandas as gpd

    frame = gpd.read_parquet(_polygons(jobs["parquet"], "parquet"))
    assert frame.crs.to_epsg() == 32633 and set(frame["class_name"]) <= set(CLASSES)
    assert frame.area.sum() == pytest.approx(60 * 80 * 100 - 6 * 9 * 100)  # every valid pixel, once


def test_the_quicklook_is_the_map_in_its_colours(jobs: dict[str, Path]) -> None:
    with rasterio.open(jobs["gpkg"] / "dated.tif") as src:
        classes, valid = src.read(1), src.read_masks(1) > 0
    from PIL import Image

    with Image.open(jobs["gpkg"] / "dated.png") as png:  # decoded as a viewer does (it is a paletted PNG)
        assert png.size == (80, 60)  # small scenes at full size
        rgba = np.asarray(png.convert("RGBA")).transpose(2, 0, 1)
    colours = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in CLASSES.values()], dtype=np.uint8)
    np.testing.assert_array_equal(rgba[:3][:, valid], colours[classes[valid]].T)
    assert (rgba[3][~valid] == 0).all() and (rgba[3][valid] == 255).all()  # nodata transparent


def test_the_results_catalogue_describes_every_file(jobs: dict[str, Path]) -> None:
    """What STAC validators and clients found: styles and categories were not assets; class names with spaces
    broke the classification extension; the polygons had no media type; the probabilities did not state their
    scale; an item's datetime was the job's time for a scene whose acquisition nobody knew (issue 23)."""
    media = {
        "gpkg": "application/geopackage+sqlite3",
        "shp": "application/vnd.shp",
        "geojson": "application/geo+json",
        "fgb": "application/vnd.flatgeobuf",
        "parquet": "application/vnd.apache.parquet",
    }
    for fmt in FORMATS:
        job = jobs[fmt]
        item = json.loads((job / "stac" / "dated" / "dated.json").read_text())
        assets = item["assets"]
        expected = {"classes", "style", "categories", "thumbnail", "probabilities", "polygons"}
        assert set(assets) == expected | ({"polygons-style"} if fmt != "gpkg" else set()), set(assets)
        for asset in assets.values():
            target = (job / "stac" / "dated" / asset["href"]).resolve()
            assert target.is_file(), asset["href"]  # every href leads to its file
            assert asset.get("type") and asset.get("roles"), asset
        assert assets["polygons"]["type"] == media[fmt] and assets["polygons"]["roles"] == ["data"]
        assert assets["thumbnail"]["roles"] == ["thumbnail"] and assets["thumbnail"]["type"] == "image/png"
        bands = assets["probabilities"]["raster:bands"]
        assert len(bands) == 4 and all(b["scale"] == pytest.approx(1 / 254) and b["nodata"] == 255 for b in bands)
        listed = assets["classes"]["classification:classes"]
        assert [c["title"] for c in listed] == list(CLASSES)
        assert [c["name"] for c in listed] == ["open-water", "forest", "built-up-area"]
        assert all(re.fullmatch(r"[0-9A-Za-z_-]+", c["name"]) for c in listed)
        assert item["properties"]["datetime"] == "2024-06-05T10:30:00Z"  # from the scene's own metadata
        assert "processing:datetime" in item["properties"]
    undated = json.loads((jobs["gpkg"] / "stac" / "undated" / "undated.json").read_text())["properties"]
    assert undated["datetime"] is None and undated["start_datetime"] == "0001-01-01T00:00:00Z"
    assert undated["end_datetime"] == undated["processing:datetime"]  # the one bound known: the image existed then
