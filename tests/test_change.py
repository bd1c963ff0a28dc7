"""``geoseg change``: from/to rasters and transition areas, checked against numpy, gdalwarp, geodesic areas and QGIS."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from class_maps import TRANSFORM, write_class_map
from pyproj import Geod
from qgis_client import run_qgis
from test_cli import _one_line_error, run

from geoseg.areas.change import TransitionTable
from geoseg.io.styles import ClassStyle

NAMES = {1: "developed", 2: "forest", 3: "water"}


def two_maps(tmp_path: Path, seed: int = 1) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.choice([1, 2, 3], size=(130, 170), p=[0.2, 0.6, 0.2]).astype(np.uint8)
    b = a.copy()
    b[(a == 2) & (rng.random(a.shape) < 0.1)] = 1  # deforestation
    b[(a == 3) & (rng.random(a.shape) < 0.05)] = 2
    a[:5] = 255  # a nodata collar in A, another in B
    b[:, -7:] = 255
    return (
        write_class_map(tmp_path / "a.tif", a, NAMES, block=64),
        write_class_map(tmp_path / "b.tif", b, NAMES, block=32),
        a,
        b,
    )


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_from_to_raster_and_transition_areas(tmp_path: Path) -> None:
    map_a, map_b, a, b = two_maps(tmp_path)
    out = tmp_path / "change"
    result = run("change", str(map_a), str(map_b), "--output", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "transitions.json").read_text())
    table = TransitionTable([ClassStyle(i, n, (0, 0, 0)) for i, n in NAMES.items()], no_change=False)
    valid = (a != 255) & (b != 255)
    expected = np.full(a.shape, 255, dtype=np.uint8)
    expected[valid] = table.table[a[valid] - 1, b[valid] - 1]
    np.testing.assert_array_equal(read(out / "change.tif"), expected)
    pairs, counts = np.unique(np.stack([a[valid], b[valid]]), axis=1, return_counts=True)
    found = {(t["from"], t["to"]): t for t in record["transitions"]}
    assert set(found) == {tuple(p) for p in pairs.T.tolist()}  # exactly the transitions that occur
    for (f, t), n in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        assert found[(f, t)]["pixels"] == n and found[(f, t)]["area_m2"] == n * 900.0
        assert found[(f, t)]["name"] == (NAMES[f] if f == t else f"{NAMES[f]} -> {NAMES[t]}")
    assert record["total_area_m2"] == valid.sum() * 900.0 == sum(t["area_m2"] for t in record["transitions"])
    with rasterio.open(out / "change.tif") as src:
        tags = src.tags()
        assert src.crs.to_epsg() == 32617 and src.transform == TRANSFORM and src.nodata == 255
        assert {int(k[6:]) for k in tags if k.startswith("class_")} == {t["id"] for t in record["transitions"]}
        assert src.overviews(1) or max(src.shape) < 512  # a COG
    matrix = (out / "transitions.csv").read_text().splitlines()
    assert matrix[0] == "from \\ to (ha),developed,forest,water,total A"
    assert float(matrix[-1].split(",")[-1]) == pytest.approx(valid.sum() * 0.09)
    assert "forest -> developed" in result.stdout and "ha changed" in result.stderr


def test_identical_maps_and_the_no_change_id(tmp_path: Path) -> None:
    map_a, _, a, _ = two_maps(tmp_path)
    out = tmp_path / "same"
    assert run("change", str(map_a), str(map_a), "--output", str(out), "--no-change").returncode == 0
    record = json.loads((out / "transitions.json").read_text())
    assert [(t["id"], t["name"]) for t in record["transitions"]] == [(0, "no change")]
    assert record["transitions"][0]["pixels"] == np.sum(a != 255)
    assert set(np.unique(read(out / "change.tif")).tolist()) == {0, 255}


def test_map_b_on_another_grid_is_warped_like_gdalwarp_nearest(tmp_path: Path) -> None:
    """B in another CRS (UTM 18N -> 17N), a 20 m grid: the from/to pairs are A against `gdalwarp -r near` of B."""
    map_a, _, a, _ = two_maps(tmp_path)
    rng = np.random.default_rng(7)
    other = rng.choice([1, 2, 3], size=(260, 300)).astype(np.uint8)
    map_b = write_class_map(
        tmp_path / "b_other.tif", other, NAMES, crs="EPSG:32618", transform=Affine(20, 0, 62_000, 0, -20, 4_010_000)
    )
    if shutil.which("gdalwarp") is None:
        pytest.fail("gdalwarp (gdal-bin) is needed: it is the reference")
    with rasterio.open(map_a) as src:
        left, bottom, right, top = src.bounds
        width, height = src.width, src.height
    warped = tmp_path / "warped.tif"
    subprocess.run(
        [
            "gdalwarp",
            "-q",
            "-r",
            "near",
            "-t_srs",
            "EPSG:32617",
            "-te",
            str(left),
            str(bottom),
            str(right),
            str(top),
            "-ts",
            str(width),
            str(height),
            str(map_b),
            str(warped),
        ],
        check=True,
    )
    reference = read(warped)
    out = tmp_path / "change"
    result = run("change", str(map_a), str(map_b), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = TransitionTable([ClassStyle(i, n, (0, 0, 0)) for i, n in NAMES.items()], no_change=False)
    valid = (a != 255) & (reference != 255)
    assert valid.sum() > 0.3 * a.size
    got = read(out / "change.tif")
    np.testing.assert_array_equal(got[valid], table.table[a[valid] - 1, reference[valid] - 1])
    assert np.all(got[~valid] == 255)


def test_areas_on_a_geographic_grid_are_geodesic(tmp_path: Path) -> None:
    """A lon/lat map from 50 to 60 degrees north: each pixel's own area, summing to the footprint's area on
    the WGS84 ellipsoid (pyproj.Geod), not pixel counts times one pixel's area."""
    a = np.ones((100, 50), dtype=np.uint8)
    b = a.copy()
    b[:50] = 2  # the northern half changed: smaller pixels than the southern half
    transform = Affine(0.1, 0, 10.0, 0, -0.1, 60.0)
    map_a = write_class_map(tmp_path / "a.tif", a, NAMES, crs="EPSG:4326", transform=transform)
    map_b = write_class_map(tmp_path / "b.tif", b, NAMES, crs="EPSG:4326", transform=transform)
    assert run("change", str(map_a), str(map_b), "--output", str(tmp_path / "c")).returncode == 0
    record = json.loads((tmp_path / "c" / "transitions.json").read_text())
    geod = Geod(ellps="WGS84")

    def band(north: float, south: float) -> float:
        """Between two parallels (densified: a geodesic between two points of a parallel is not the parallel)."""
        lons = np.linspace(10, 15, 2001)
        lats = np.r_[np.full(lons.size, north), np.full(lons.size, south)]
        return abs(geod.polygon_area_perimeter(np.r_[lons, lons[::-1]], lats)[0])

    areas = {t["name"]: t["area_m2"] for t in record["transitions"]}
    assert areas["developed -> forest"] == pytest.approx(band(60, 55), rel=1e-6)
    assert areas["developed"] == pytest.approx(band(55, 50), rel=1e-6)
    assert record["total_area_m2"] == pytest.approx(band(60, 50), rel=1e-6)
    # sample's strata carry the same per-pixel areas
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(map_b), "--output", str(sheet), "--size", "10", "--min-per-class", "5").returncode == 0
    strata = pyogrio.read_dataframe(sheet, layer="strata", read_geometry=False)
    assert dict(zip(strata["name"], strata["area_m2"], strict=True)) == pytest.approx(
        {"developed": band(55, 50), "forest": band(60, 55)}, rel=1e-6
    )


def test_vectorized_transitions_carry_the_same_areas_and_qgis_shows_their_names(tmp_path: Path) -> None:
    map_a, map_b, _, _ = two_maps(tmp_path)
    out = tmp_path / "change"
    result = run("change", str(map_a), str(map_b), "--output", str(out), "--vectorize", "gpkg")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "transitions.json").read_text())
    polygons = pyogrio.read_dataframe(out / "change.gpkg", layer="change")
    by_name = polygons.groupby("class_name")["area_m2"].sum().to_dict()
    assert by_name == pytest.approx({t["name"]: t["area_m2"] for t in record["transitions"]})
    assert "change.gpkg" in record["products"]
    found = run_qgis(
        f"""
        raster = QgsRasterLayer("{out / "change.tif"}", "change")
        vectors = QgsVectorLayer("{out / "change.gpkg"}", "polygons", "ogr")
        print(json.dumps({{
            "raster": [c.label for c in raster.renderer().classes()],
            "vectors": sorted(c.label() for c in vectors.renderer().categories()),
        }}))
        """,
        tmp_path,
    )
    assert found["raster"] == [t["name"] for t in record["transitions"]]  # the legend: only what occurs, named
    assert found["vectors"] == sorted(t["name"] for t in record["transitions"])


def test_more_classes_than_a_byte_of_transitions(tmp_path: Path) -> None:
    names = {i: f"c{i}" for i in range(20)}
    a = np.arange(20, dtype=np.uint8).repeat(4).reshape(8, 10)
    b = a[::-1].copy()
    map_a, map_b = write_class_map(tmp_path / "a.tif", a, names), write_class_map(tmp_path / "b.tif", b, names)
    assert run("change", str(map_a), str(map_b), "--output", str(tmp_path / "c")).returncode == 0
    with rasterio.open(tmp_path / "c" / "change.tif") as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 65535
        assert src.read(1).max() > 255


def test_bad_pairs_are_one_line_and_nothing_is_replaced(tmp_path: Path) -> None:
    map_a, map_b, a, _ = two_maps(tmp_path)
    inputs = {p: p.read_bytes() for p in (map_a, map_b)}
    other_names = write_class_map(tmp_path / "renamed.tif", a, {1: "urban", 2: "forest", 3: "water"})
    _one_line_error(
        run("change", str(map_a), str(other_names), "--output", str(tmp_path / "x")),
        str(other_names),
        "its classes differ",
    )
    far = write_class_map(tmp_path / "far.tif", a, NAMES, transform=Affine(30, 0, 900_000, 0, -30, 1_000_000))
    _one_line_error(run("change", str(map_a), str(far), "--output", str(tmp_path / "x")), str(far), "does not overlap")
    assert not (tmp_path / "x").exists()
    stray = write_class_map(tmp_path / "stray.tif", np.where(a == 3, 9, a).astype(np.uint8), None)
    _one_line_error(run("change", str(map_a), str(stray), "--output", str(tmp_path / "y")), str(stray), "class id 9")
    # a user's file where a product would go is never replaced; an input inside the output folder neither
    out = tmp_path / "out"
    out.mkdir()
    (out / "transitions.csv").write_text("mine")
    _one_line_error(run("change", str(map_a), str(map_b), "--output", str(out)), "transitions.csv", "did not write")
    assert (out / "transitions.csv").read_text() == "mine"
    inside = tmp_path / "job"
    inside.mkdir()
    shutil.copy(map_a, inside / "change.tif")
    _one_line_error(
        run("change", str(inside / "change.tif"), str(map_b), "--output", str(inside)), "would write over the input"
    )
    # a rerun replaces its own products
    ours = tmp_path / "ours"
    assert run("change", str(map_a), str(map_b), "--output", str(ours)).returncode == 0
    assert run("change", str(map_a), str(map_b), "--output", str(ours), "--no-change").returncode == 0
    assert json.loads((ours / "transitions.json").read_text())["no_change"] is True
    assert not list(tmp_path.rglob(".*partial*"))
    assert all(p.read_bytes() == data for p, data in inputs.items())  # inputs never written


@pytest.mark.realdata
def test_real_land_cover_map_without_a_class_table(real_data: Path, tmp_path: Path) -> None:
    """NC's land-cover raster (float32, strips of 4 rows, no class names, tagged EPSG:3358) against an edited
    copy on the Landsat grid's EPSG:32119 tag: the same grid up to the datum tag, so nothing is resampled."""
    strata = real_data / "nc_landsat" / "strata.tif"
    with rasterio.open(strata) as src:
        a = src.read(1)
        profile = src.profile
    b = a.copy()
    b[100:200, 100:300][b[100:200, 100:300] == 5] = 1  # forest cleared to developed in a block
    copy = tmp_path / "later.tif"
    with rasterio.open(copy, "w", **(profile | {"crs": "EPSG:32119"})) as dst:
        dst.write(b, 1)
    out = tmp_path / "change"
    result = run("change", str(strata), str(copy), "--output", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "transitions.json").read_text())
    valid = a != -99999
    found = {t["name"]: t["pixels"] for t in record["transitions"]}
    assert found["class 5 -> class 1"] == int(np.sum((a == 5) & (b == 1)))
    assert found["class 5"] == int(np.sum((a == 5) & (b == 5)))
    assert sum(found.values()) == valid.sum()
    assert record["total_area_m2"] == pytest.approx(valid.sum() * 28.5**2)
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(strata), "--output", str(sheet), "--size", "200", "--min-per-class", "10").returncode == 0
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    assert np.all(a[frame["row"], frame["col"]] == frame["map_class"])
    assert sorted(frame["map_class"].unique()) == [1, 2, 3, 4, 5, 6, 7]
