"""Metrics by hand, and evaluate() against raster or vector truth, window by window."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from geoseg.errors import GeoSegError
from geoseg.evaluate import evaluate
from geoseg.metrics import confusion_matrix, summarize
from geoseg.vector.export import to_geodataframe, write_polygons
from geoseg.vector.polygonize import polygonize


def test_confusion_and_summary_by_hand() -> None:
    truth = np.array([0, 0, 1, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2, 0])
    cm = confusion_matrix(pred, truth, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    s = summarize(cm, {0: "a", 1: "b", 2: "c"})
    assert s["per_class"]["a"]["iou"] == pytest.approx(1 / 3)
    assert s["per_class"]["b"]["iou"] == pytest.approx(2 / 4)
    assert s["per_class"]["c"]["iou"] == 1.0
    assert s["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert s["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert s["per_class"]["a"]["f1"] == pytest.approx(2 * 1 / (2 + 2))
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)


def test_absent_classes_do_not_enter_the_mean() -> None:
    s = summarize(confusion_matrix(np.array([0, 0]), np.array([0, 0]), 5))
    assert s["miou"] == 1.0 and list(s["per_class"]) == ["0"]


def test_evaluate_raster_and_vector_truth_agree(make_geotiff, tmp_path) -> None:
    rng = np.random.default_rng(0)
    truth = np.kron(rng.integers(0, 3, (10, 12)), np.ones((7, 7), int)).astype(np.uint8)
    pred = truth.copy()
    pred[rng.random(truth.shape) < 0.1] = 2
    pred[:3] = 255
    truth_path = make_geotiff(truth, name="truth.tif")
    pred_path = make_geotiff(pred, name="pred.tif", nodata=255)
    vectors = write_polygons(to_geodataframe(polygonize(str(truth_path))), tmp_path / "truth.gpkg")
    by_raster, by_vector = evaluate(pred_path, truth_path), evaluate(pred_path, vectors)
    valid = pred != 255
    expected = summarize(confusion_matrix(pred[valid], truth[valid], 3))
    assert by_raster["miou"] == pytest.approx(expected["miou"])
    assert by_vector["miou"] == pytest.approx(expected["miou"])
    assert by_raster["confusion_matrix"] == expected["confusion_matrix"]


def test_truth_on_another_grid_is_warped(make_geotiff) -> None:
    truth = np.zeros((40, 40), np.uint8)
    truth[:, 20:] = 1
    pred = np.repeat(np.repeat(truth, 2, axis=0), 2, axis=1)  # same area, 5 m pixels instead of 10 m
    truth_path = make_geotiff(truth, name="t.tif")
    pred_path = make_geotiff(pred, name="p.tif", transform=Affine(5, 0, 500_000, 0, -5, 5_800_000))
    assert evaluate(pred_path, truth_path)["miou"] == 1.0


def test_truth_tagged_with_another_datum_realisation_is_read_as_is(make_geotiff, monkeypatch) -> None:
    """NAD83 vs NAD83(HARN) tags on one grid: the same grid for evaluation as for training labels (no warp)."""
    import geoseg.io.raster

    truth = np.kron(np.random.default_rng(1).integers(0, 3, (6, 5)), np.ones((5, 5), int)).astype(np.uint8)
    truth_path = make_geotiff(truth, name="t.tif", crs="EPSG:3747")  # NAD83(HARN) / UTM 17N
    pred_path = make_geotiff(truth, name="p.tif", crs="EPSG:26917")  # NAD83 / UTM 17N

    def no_warp(*args, **kwargs):
        raise AssertionError("truth on the same grid was warped")

    monkeypatch.setattr(geoseg.io.raster, "warp_to_grid", no_warp)  # where onto_grid() warps
    result = evaluate(pred_path, truth_path)
    assert result["miou"] == 1.0 and sum(map(sum, result["confusion_matrix"])) == truth.size


def test_missing_truth_attribute(make_geotiff, tmp_path) -> None:
    path = make_geotiff(np.zeros((4, 4), np.uint8))
    frame = to_geodataframe(polygonize(str(path))).rename(columns={"class_id": "cls"})
    vectors = write_polygons(frame, tmp_path / "t.gpkg")
    with pytest.raises(GeoSegError, match="no 'class_id' attribute"):
        evaluate(path, vectors)


def test_ambiguous_truth_polygons_are_refused_in_one_line(make_geotiff, tmp_path) -> None:
    """Invalid polygons, overlapping polygons of two classes and a class field that is null everywhere were
    scored without a word (or said "share no valid pixels"). Polygons of one class may overlap; neighbours touch."""
    import geopandas as gpd
    import shapely

    pred = make_geotiff(np.zeros((20, 20), np.uint8))
    x0, y0 = 500_000, 5_800_000 - 200  # the fixture's 10 m grid, 20 x 20 pixels

    def truth(name: str, shapes: list, classes: list) -> str:
        path = tmp_path / f"{name}.gpkg"
        gpd.GeoDataFrame({"class_id": classes}, geometry=shapes, crs="EPSG:32633").to_file(path)
        return str(path)

    a, b = shapely.box(x0, y0, x0 + 120, y0 + 200), shapely.box(x0 + 80, y0, x0 + 200, y0 + 200)
    with pytest.raises(GeoSegError, match=r"polygons 0 \(class 1\) and 1 \(class 2\) overlap"):
        evaluate(pred, truth("overlap", [a, b], [1, 2]))
    bowtie = shapely.Polygon([(x0, y0), (x0 + 200, y0 + 200), (x0 + 200, y0), (x0, y0 + 200)])
    with pytest.raises(GeoSegError, match=r"polygon 0 is not a valid geometry \(Self-intersection"):
        evaluate(pred, truth("bowtie", [bowtie], [1]))
    with pytest.raises(GeoSegError, match="'class_id' attribute is empty \\(null\\) on all 2 polygons"):
        evaluate(pred, truth("nulls", [a, b], [None, None]))
    left, right = shapely.box(x0, y0, x0 + 100, y0 + 200), shapely.box(x0 + 100, y0, x0 + 200, y0 + 200)
    assert evaluate(pred, truth("neighbours", [left, right], [0, 1]))["pixel_accuracy"] == 0.5
    assert evaluate(pred, truth("same_class", [a, b], [0, 0]))["pixel_accuracy"] == 1.0


@pytest.mark.realdata
def test_object_f1_on_real_building_footprints(real_data, tmp_path) -> None:
    import rasterio

    folder = real_data / "atlanta_buildings"
    mask = folder / "sample_geotiff_buildings_mask.tif"
    same = evaluate(mask, mask)
    assert same["objects"]["f1"] == 1.0 and same["objects"]["truth"] > 30
    with rasterio.open(mask) as src:
        data, profile = src.read(1), src.profile
    shifted = np.zeros_like(data)
    shifted[:, 6:] = data[:, :-6]  # 3 m shift: small buildings drop below IoU 0.5, large ones survive
    with rasterio.open(tmp_path / "shifted.tif", "w", **profile) as dst:
        dst.write(shifted, 1)
    objects = evaluate(tmp_path / "shifted.tif", mask)["objects"]
    assert objects["truth"] == same["objects"]["truth"]
    assert 0 < objects["matched"] < objects["truth"]
    assert objects["f1"] == pytest.approx(
        2 * objects["precision"] * objects["recall"] / (objects["precision"] + objects["recall"]), abs=1e-5
    )


def test_ids_above_255_and_nan_truth_are_carried_exactly(make_geotiff) -> None:
    """Truth ids 300 and 70 000 keep their own rows (they were dropped when the matrix was capped at 255), and
    NaN truth pixels with no nodata declared are no pixel at all (they were scored as class 0)."""
    truth = np.zeros((20, 30), np.float32)
    truth[:, 10:20] = 300
    truth[:, 20:] = 70_000
    truth[:5, :] = np.nan  # 150 pixels with no class
    pred = np.where(np.isnan(truth), 0, truth).astype(np.uint32)
    pred[10:, 25:] = 300  # 50 pixels of 70 000 predicted as 300
    result = evaluate(make_geotiff(pred, name="p.tif"), make_geotiff(truth, name="t.tif"))
    assert result["class_ids"] == [0, 300, 70_000]
    assert result["confusion_matrix"] == [[150, 0, 0], [0, 150, 0], [0, 50, 100]]
    assert result["pixel_accuracy"] == pytest.approx(400 / 450)
    assert result["per_class"]["70000"]["recall"] == pytest.approx(100 / 150)


def test_negative_or_fractional_truth_is_refused_not_wrapped(make_geotiff) -> None:
    pred = make_geotiff(np.zeros((4, 4), np.uint8), name="p.tif")
    with pytest.raises(GeoSegError, match=r"negative class ids \(-3\)") as negative:
        evaluate(pred, make_geotiff(np.full((4, 4), -3, np.int16), name="neg.tif"))
    assert "neg.tif" in str(negative.value)
    with pytest.raises(GeoSegError, match="fractional"):
        evaluate(pred, make_geotiff(np.full((4, 4), 0.5, np.float32), name="frac.tif"))


def test_footprints_scored_with_remap_and_background(make_geotiff, tmp_path) -> None:
    """A 0/255 building mask is scored as 0/1 with remap; footprint polygons score the background only when
    told which class it is (otherwise only the footprints' own pixels count)."""
    import geopandas as gpd
    import shapely

    pred = np.zeros((40, 40), np.uint8)
    pred[10:20, 10:20] = 1  # one building, 100 px; the truth's is 100 px, 50 of them shared
    truth = np.zeros((40, 40), np.uint8)
    truth[10:20, 15:25] = 255
    pred_path = make_geotiff(pred, name="pred.tif")
    remapped = evaluate(pred_path, make_geotiff(truth, name="mask.tif"), remap={255: 1})
    assert remapped["class_ids"] == [0, 1]
    assert remapped["confusion_matrix"] == [[1450, 50], [50, 50]]  # 1600 px: 150 in either building, 50 in both
    # The footprint as a polygon (pixel (15, 10) .. (25, 20) at 10 m, origin 500000, 5800000).
    box = shapely.box(500_150, 5_799_800, 500_250, 5_799_900)
    footprints = tmp_path / "footprints.gpkg"
    gpd.GeoDataFrame({"class_id": [1]}, geometry=[box], crs="EPSG:32633").to_file(footprints)
    only_footprints = evaluate(pred_path, footprints)
    assert sum(map(sum, only_footprints["confusion_matrix"])) == 100  # background never scored
    with_background = evaluate(pred_path, footprints, background=0)
    assert with_background["confusion_matrix"] == remapped["confusion_matrix"]
    assert with_background["objects"]["truth"] == 1


def test_a_region_limits_the_scored_pixels(make_geotiff, tmp_path) -> None:
    import geopandas as gpd
    from bad_inputs import TRANSFORM
    from rasterio.transform import array_bounds
    from shapely.geometry import box

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (40, 60)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.3, (truth + 1) % 3, truth).astype(np.uint8)
    truth_path, pred_path = make_geotiff(truth, name="t.tif"), make_geotiff(pred, name="p.tif")
    roles = np.zeros((40, 60), np.uint8)
    roles[:, 45:] = 2  # a split map: 2 is the test set, 3 a buffer
    roles[:, 40:45] = 3
    roles_path = make_geotiff(roles, name="split.tif")
    west, south, east, north = array_bounds(40, 60, TRANSFORM)
    x45 = west + 45 * TRANSFORM.a
    gpd.GeoDataFrame(geometry=[box(x45, south, east, north)], crs="EPSG:32633").to_file(tmp_path / "test.gpkg")
    expected = summarize(confusion_matrix(pred[:, 45:].ravel(), truth[:, 45:].ravel(), 3))
    by_raster = evaluate(pred_path, truth_path, region=roles_path, region_values={2})
    by_polygon = evaluate(pred_path, truth_path, region=tmp_path / "test.gpkg")
    assert by_raster["confusion_matrix"] == expected["confusion_matrix"] == by_polygon["confusion_matrix"]
    nonzero = summarize(confusion_matrix(pred[:, 40:].ravel(), truth[:, 40:].ravel(), 3))
    assert evaluate(pred_path, truth_path, region=roles_path)["confusion_matrix"] == nonzero["confusion_matrix"]
    with pytest.raises(GeoSegError, match="no valid pixels inside the region"):
        evaluate(pred_path, truth_path, region=roles_path, region_values={7})
