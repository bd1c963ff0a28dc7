"""``geoseg sample``: the stratified sample and its labelling sheet, checked by value and in QGIS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from class_maps import TRANSFORM, write_class_map
from qgis_client import run_qgis
from test_cli import _one_line_error, run

NAMES = {1: "developed", 2: "forest", 3: "water"}


def a_map(path: Path, nodata_rows: int = 10) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    classes = rng.choice([1, 2, 3], size=(150, 130), p=[0.15, 0.6, 0.25]).astype(np.uint8)
    classes[:nodata_rows] = 255
    return write_class_map(path, classes, NAMES, block=64), classes


def test_strata_sizes_points_and_reproducibility(tmp_path: Path) -> None:
    path, classes = a_map(tmp_path / "map.tif")
    args = ["--target-se", "0.02", "--expected-ua", "1=0.7", "2=0.9", "3=0.85", "--min-per-class", "40"]
    first, second, other = (tmp_path / f"{n}.gpkg" for n in ("first", "second", "other"))
    for sheet, seed in ((first, "3"), (second, "3"), (other, "4")):
        result = run("sample", str(path), "--output", str(sheet), *args, "--seed", seed)
        assert result.returncode == 0, result.stderr
    a, b, c = (pyogrio.read_dataframe(s, layer="samples") for s in (first, second, other))
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry")) and a.geometry.equals(b.geometry)
    assert set(zip(a["row"], a["col"], strict=True)) != set(zip(c["row"], c["col"], strict=True))
    # strata: the map's classes, with exact pixel counts and areas (30 m pixels), never nodata
    strata = pyogrio.read_dataframe(first, layer="strata", read_geometry=False)
    counts = {k: int(np.sum(classes == k)) for k in NAMES}
    assert dict(zip(strata["stratum"], strata["pixels"], strict=True)) == counts
    assert dict(zip(strata["stratum"], strata["area_m2"], strict=True)) == {k: v * 900.0 for k, v in counts.items()}
    # eq. 13 with these accuracies: n = (sum W S)^2 / (0.02^2 + sum W S^2 / N), allocated with a floor of 40
    w = np.array([counts[k] for k in NAMES]) / sum(counts.values())
    ua = np.array([0.7, 0.9, 0.85])
    s = np.sqrt(ua * (1 - ua))
    n = int(np.ceil(np.sum(w * s) ** 2 / (0.02**2 + np.sum(w * s**2) / sum(counts.values()))))
    assert len(a) == n == strata["samples"].sum()
    assert min(strata["samples"]) >= 40
    per_class = a["map_class"].value_counts().to_dict()
    assert per_class == dict(zip(strata["stratum"], strata["samples"], strict=True))
    # every point is a pixel centre of its stratum, none on nodata, none twice
    assert np.all(classes[a["row"], a["col"]] == a["map_class"])
    x, y = TRANSFORM * (a["col"].to_numpy() + 0.5, a["row"].to_numpy() + 0.5)
    assert np.allclose(a.geometry.x, x) and np.allclose(a.geometry.y, y)
    assert len(set(zip(a["row"], a["col"], strict=True))) == len(a)
    assert list(a["map_class_name"]) == [NAMES[k] for k in a["map_class"]]
    assert a["reference_class"].isna().all() and a["confidence"].isna().all()
    assert sorted(a["id"]) == list(range(1, len(a) + 1))
    assert not a["map_class"].is_monotonic_increasing  # interleaved strata: the sheet does not give them away
    design = pyogrio.read_dataframe(first, layer="design", read_geometry=False)
    assert dict(zip(design["key"], design["value"], strict=True))["seed"] == "3"
    with rasterio.open(path) as src:
        assert pyogrio.read_info(first, layer="samples")["crs"] in (src.crs.to_string(), "EPSG:32617")


def test_equal_and_explicit_allocations_and_an_aoi(tmp_path: Path) -> None:
    path, classes = a_map(tmp_path / "map.tif")
    equal = tmp_path / "equal.gpkg"
    result = run(
        "sample", str(path), "--output", str(equal), "--size", "90", "--allocation", "equal", "--min-per-class", "0"
    )
    assert result.returncode == 0 and "warning" not in result.stderr
    assert pyogrio.read_dataframe(equal, layer="samples")["map_class"].value_counts().to_dict() == {1: 30, 2: 30, 3: 30}
    # an AOI: the west half of the map (pixel centres inside), drawn in another CRS
    west, top = TRANSFORM.c, TRANSFORM.f
    box = gpd.GeoDataFrame(
        geometry=gpd.GeoSeries.from_wkt(
            [
                f"POLYGON(({west} {top}, {west + 65 * 30} {top}, "
                f"{west + 65 * 30} {top - 150 * 30}, {west} {top - 150 * 30}, "
                f"{west} {top}))"
            ]
        ),
        crs="EPSG:32617",
    ).to_crs(4326)
    aoi = tmp_path / "aoi.gpkg"
    box.to_file(aoi)
    sheet = tmp_path / "aoi_sheet.gpkg"
    result = run("sample", str(path), "--output", str(sheet), "--per-class", "1=20", "2=25", "3=30", "--aoi", str(aoi))
    assert result.returncode == 0, result.stderr
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    assert frame["map_class"].value_counts().to_dict() == {1: 20, 2: 25, 3: 30}
    assert frame["col"].max() < 65
    strata = pyogrio.read_dataframe(sheet, layer="strata", read_geometry=False)
    inside = classes[:, :65]
    assert dict(zip(strata["stratum"], strata["pixels"], strict=True)) == {k: int(np.sum(inside == k)) for k in NAMES}


def test_a_change_maps_transitions_are_strata(tmp_path: Path) -> None:
    a = write_class_map(tmp_path / "a.tif", np.repeat([[1, 2, 3, 2]], 40, axis=0).repeat(10, axis=1), NAMES)
    b = write_class_map(tmp_path / "b.tif", np.repeat([[1, 1, 3, 3]], 40, axis=0).repeat(10, axis=1), NAMES)
    assert run("change", str(a), str(b), "--output", str(tmp_path / "change")).returncode == 0
    sheet = tmp_path / "sheet.gpkg"
    assert (
        run("sample", str(tmp_path / "change" / "change.tif"), "--output", str(sheet), "--size", "40").returncode == 0
    )
    strata = pyogrio.read_dataframe(sheet, layer="strata", read_geometry=False)
    assert sorted(strata["name"]) == ["developed", "forest -> developed", "forest -> water", "water"]
    assert strata["pixels"].sum() == 40 * 40


def test_bad_requests_are_one_line_and_nothing_is_replaced(tmp_path: Path) -> None:
    path, _ = a_map(tmp_path / "map.tif")
    sheet = tmp_path / "sheet.gpkg"
    _one_line_error(run("sample", str(path), "--output", str(sheet), "--per-class", "1=5", "2=5"), "3 (water)")
    _one_line_error(
        run("sample", str(path), "--output", str(sheet), "--target-se", "0.01", "--expected-ua", "1=0.7"),
        "--expected-ua gives no value for the strata 2 (forest), 3 (water)",
    )
    _one_line_error(run("sample", str(path), "--output", str(sheet)), "give the sample size")
    _one_line_error(run("sample", str(path), "--output", str(sheet), "--per-class", "1=x"), "ID=INT")
    _one_line_error(run("sample", str(path), "--output", str(sheet), "--size", "5", "--per-class", "1=2"), "give one")
    _one_line_error(run("sample", str(path), "--output", str(tmp_path / "s.csv"), "--size", "5"), "name it .gpkg")
    assert not sheet.exists()
    # an existing file is never replaced: it may be a sheet that holds labels (or the map itself)
    result = run("sample", str(path), "--output", str(sheet), "--size", "30")
    assert result.returncode == 0 and "warning: 150 samples, not --size 30" in result.stderr  # floors of 50 win
    before = sheet.read_bytes()
    _one_line_error(run("sample", str(path), "--output", str(sheet), "--size", "30"), str(sheet), "never replaces")
    assert sheet.read_bytes() == before
    nodata_only = write_class_map(tmp_path / "empty.tif", np.full((20, 20), 255, np.uint8), NAMES)
    _one_line_error(
        run("sample", str(nodata_only), "--output", str(tmp_path / "e.gpkg"), "--size", "5"), "no valid pixel"
    )
    _one_line_error(
        run("sample", str(tmp_path / "nope.tif"), "--output", str(tmp_path / "n.gpkg"), "--size", "5"),
        "nope.tif",
        "cannot open as a raster",
    )
    assert not list(tmp_path.glob(".*partial*"))


def test_qgis_opens_the_sheet_as_a_labelling_form_and_its_edits_are_assessed(tmp_path: Path) -> None:
    path, _ = a_map(tmp_path / "map.tif")
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(path), "--output", str(sheet), "--per-class", "1=3", "2=3", "3=3").returncode == 0
    found = run_qgis(
        f"""
        layer = QgsVectorLayer("{sheet}|layername=samples", "samples", "ogr")
        fields = layer.fields()
        widget = layer.editorWidgetSetup(fields.indexFromName("reference_class"))
        confidence = layer.editorWidgetSetup(fields.indexFromName("confidence"))
        form = layer.editFormConfig()
        layer.startEditing()
        for feature in layer.getFeatures():  # the interpreter agrees with the map, except on sample 1
            value = 3 if feature["id"] == 1 and feature["map_class"] != 3 else feature["map_class"]
            layer.changeAttributeValue(feature.id(), fields.indexFromName("reference_class"), value)
            layer.changeAttributeValue(feature.id(), fields.indexFromName("confidence"), "high")
        committed = layer.commitChanges()
        print(json.dumps({{
            "valid": layer.isValid(), "count": layer.featureCount(),
            "widget": widget.type(), "map": widget.config().get("map"), "confidence": confidence.config().get("map"),
            "renderer": [c.label() for c in layer.renderer().categories()],
            "read_only": [form.readOnly(fields.indexFromName(n)) for n in ("id", "map_class", "reference_class")],
            "committed": committed,
        }}))
        """,
        tmp_path,
    )
    assert found["valid"] and found["count"] == 9 and found["committed"]
    assert found["widget"] == "ValueMap"
    assert found["map"] == [{"developed": "1"}, {"forest": "2"}, {"water": "3"}]
    assert found["confidence"] == [{"high": "high"}, {"medium": "medium"}, {"low": "low"}]
    assert found["renderer"] == ["developed", "forest", "water"]
    assert found["read_only"] == [True, True, False]
    result = run("assess", str(sheet))
    assert result.returncode == 0, result.stderr
    assert "(9 labelled samples, 0 unlabelled skipped)" in result.stdout
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    assert (frame["confidence"] == "high").all()
    first = frame.loc[frame["id"] == 1].iloc[0]
    assert first["reference_class"] == (3 if first["map_class"] != 3 else first["map_class"])


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_wider_class_types(tmp_path: Path, dtype: str) -> None:
    classes = np.repeat([[300, 5, 1000]], 30, axis=0).repeat(10, axis=1)
    path = write_class_map(tmp_path / "map.tif", classes, None, nodata=None, dtype=dtype)
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(path), "--output", str(sheet), "--size", "9", "--min-per-class", "3").returncode == 0
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    assert frame["map_class"].value_counts().to_dict() == {5: 3, 300: 3, 1000: 3}
    assert set(frame["map_class_name"]) == {"class 5", "class 300", "class 1000"}
