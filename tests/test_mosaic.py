"""``geoseg mosaic``: finished predict jobs -> one map (tests over jobs written as predict writes them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from mosaic_jobs import CLASSES, FakeScene, random_probabilities, scene_arrays, write_job
from qgis_client import run_qgis
from test_cli import _one_line_error, run

from geoseg.errors import GeoSegError
from geoseg.mosaic.job import MosaicOptions, mosaic, parse_period

UTM17 = Affine(30, 0, 600_000, 0, -30, 4_000_000)
IDS = sorted(CLASSES)


def _read(path: Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band) if band else src.read()


def _shifted(dx: int, dy: int, base: Affine = UTM17) -> Affine:
    return base * Affine.translation(dx, dy)


def _probs(*classes_per_pixel: np.ndarray) -> np.ndarray:
    """Probabilities that make each pixel's class the given one (0.6 / 0.2 / 0.2)."""
    cls = classes_per_pixel[0]
    p = np.full((len(IDS), *cls.shape), 0.2)
    for k, cid in enumerate(IDS):
        p[k][cls == cid] = 0.6
    return p


def test_one_scene_on_its_own_grid_is_that_scene_bit_for_bit(tmp_path: Path) -> None:
    p = random_probabilities(np.random.default_rng(1), 150, 110)
    job = write_job(tmp_path / "job", [FakeScene("a", p, UTM17, acquired="2024-05-01")])
    for method in ("mean", "mode", "latest", "best"):
        out = tmp_path / method
        mosaic([job], out, MosaicOptions(method=method, tile=64))  # type: ignore[arg-type]
        with rasterio.open(out / "mosaic.vrt") as m, rasterio.open(job / "a.tif") as a:
            assert (m.transform, m.shape, m.crs) == (a.transform, a.shape, a.crs)
            np.testing.assert_array_equal(m.read(1), a.read(1), err_msg=method)
        stats = _read(out / "mosaic_stats.vrt")
        assert (stats[0] == 1).all() and (stats[2] == 254).all()
        assert (stats[3] == (np.datetime64("2024-05-01") - np.datetime64("1970-01-01")).astype(int)).all()


def test_agreeing_observations_give_their_class_and_full_agreement(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    truth = rng.choice(IDS, size=(96, 96))
    scenes = [
        FakeScene(f"s{i}", _probs(truth[16 * i :, 16 * i :]), _shifted(16 * i, 16 * i), acquired=f"2024-0{i + 1}-01")
        for i in range(3)
    ]
    job = write_job(tmp_path / "job", scenes)
    for method in ("mean", "mode"):
        out = tmp_path / method
        mosaic([job], out, MosaicOptions(method=method, tile=40))  # type: ignore[arg-type]
        np.testing.assert_array_equal(_read(out / "mosaic.vrt", 1), truth)
        stats = _read(out / "mosaic_stats.vrt")
        expected_count = np.zeros((96, 96), int)
        for i in range(3):
            expected_count[16 * i :, 16 * i :] += 1
        np.testing.assert_array_equal(stats[0], expected_count)
        assert (stats[2] == 254).all()


def test_methods_and_their_ties_on_hand_made_pixels(tmp_path: Path) -> None:
    # Three observations of a 1 x 4 strip, dated 1, 2 and 3 March (stored as p x 254, rounded):
    #   px0: a water .5, b water .5, c forest .7   mode water (2 votes); mean forest (sums 292/306/166)
    #   px1: a water .5, b forest .5, c crops .5   every sum 255 and every vote 1: lowest id (water);
    #                                             best: all 127, ties to the later observation (crops)
    #   px2: a crops .9, b forest .5, c forest .5  mode forest (2 votes); mean crops (sums 141/267/357)
    #   px3: a water .8, b forest .4, c masked     count 2; mode tie: water; latest: b (c is masked)
    def strip(spec: list[tuple[int, float]]) -> np.ndarray:
        p = np.zeros((3, 1, len(spec)))
        for x, (cid, top) in enumerate(spec):
            rest = (1 - top) / 2
            p[:, 0, x] = rest
            p[IDS.index(cid), 0, x] = top
        return p

    a = strip([(1, 0.5), (1, 0.5), (3, 0.9), (1, 0.8)])
    b = strip([(1, 0.5), (2, 0.5), (2, 0.5), (2, 0.4)])
    c = strip([(2, 0.7), (3, 0.5), (2, 0.5), (3, 0.9)])
    c[:, 0, 3] = np.nan
    job = write_job(
        tmp_path / "job",
        [
            FakeScene("c", c, UTM17, acquired="2024-03-03"),  # names out of date order: dates decide
            FakeScene("a", a, UTM17, acquired="2024-03-01"),
            FakeScene("b", b, UTM17, acquired="2024-03-02"),
        ],
    )
    results = {}
    for method in ("mean", "mode", "latest", "best"):
        mosaic([job], tmp_path / method, MosaicOptions(method=method))  # type: ignore[arg-type]
        results[method] = (
            _read(tmp_path / method / "mosaic.vrt", 1)[0],
            _read(tmp_path / method / "mosaic_stats.vrt")[:, 0],
        )
    assert list(results["mode"][0]) == [1, 1, 2, 1]
    assert list(results["latest"][0]) == [2, 3, 2, 2]
    assert list(results["mean"][0]) == [2, 1, 3, 1]
    assert list(results["best"][0]) == [2, 3, 3, 1]
    day = {d: (np.datetime64(f"2024-03-0{d}") - np.datetime64("1970-01-01")).astype(int) for d in (1, 2, 3)}
    count, confidence, agreement, date = results["mean"][1]
    assert list(count) == [3, 3, 3, 2]
    assert list(confidence) == [102, 85, 119, 140]  # round(306/3), round(255/3), round(357/3), round(279/2)
    assert list(agreement) == [85, 85, 85, 127]  # one vote of 3 for forest, water, crops; 1 of 2 for water
    assert list(date) == [day[3], day[1], day[1], day[1]]  # the latest observation of the winning class
    count, confidence, agreement, date = results["mode"][1]
    assert list(confidence) == [169, 85, 169, 127] and list(confidence) == list(agreement)
    assert list(date) == [day[2], day[1], day[3], day[1]]
    count, confidence, agreement, date = results["best"][1]
    assert list(confidence) == [178, 127, 229, 203] and list(date) == [day[3], day[3], day[1], day[1]]
    count, confidence, agreement, date = results["latest"][1]
    assert list(date) == [day[3], day[3], day[3], day[2]] and list(confidence) == [178, 127, 127, 102]


# Two scenes either side of the UTM 17/18 boundary (78 W), overlapping, into a third CRS (CONUS Albers).
ZONE17 = Affine(30, 0, 740_000, 0, -30, 3_900_000)  # ~78.3 W, 35.2 N
ZONE18 = Affine(30, 0, 194_000, 0, -30, 3_901_000)  # overlaps the west scene by ~half


def _two_zone_jobs(tmp_path: Path, probabilities: bool = True) -> list[Path]:
    rng = np.random.default_rng(7)
    a = FakeScene("west", random_probabilities(rng, 200, 260, smooth=6), ZONE17, "EPSG:32617", "2024-06-01")
    b = FakeScene("east", random_probabilities(rng, 220, 240, smooth=5), ZONE18, "EPSG:32618", "2024-06-11")
    b.probabilities[:, 40:90, 60:150] = np.nan  # a cloud masked at prediction
    return [write_job(tmp_path / "job_a", [a], probabilities), write_job(tmp_path / "job_b", [b], probabilities)]


def test_a_mosaic_is_the_same_in_any_tiling_and_any_order_of_jobs(tmp_path: Path) -> None:
    jobs = _two_zone_jobs(tmp_path)
    common = {"crs": "EPSG:5070", "resolution": 30.0}
    mosaic(jobs, tmp_path / "one", MosaicOptions(tile=4096, **common))
    mosaic(jobs[::-1], tmp_path / "tiled", MosaicOptions(tile=96, **common))
    for name in ("mosaic.vrt", "mosaic_stats.vrt"):
        one, tiled = _read(tmp_path / "one" / name), _read(tmp_path / "tiled" / name)
        np.testing.assert_array_equal(one, tiled)
    classes = _read(tmp_path / "one" / "mosaic.vrt", 1)
    assert set(np.unique(classes)) == {1, 2, 3, 255}
    assert (_read(tmp_path / "one" / "mosaic_stats.vrt", 1) == 2).sum() > 5000  # the scenes overlap


@pytest.mark.parametrize("method", ["mode", "latest"])
def test_across_zones_a_pixel_one_scene_covers_is_gdalwarp_nearest_of_it(tmp_path: Path, method: str) -> None:
    jobs = _two_zone_jobs(tmp_path, probabilities=False)
    out = tmp_path / "m"
    mosaic(jobs, out, MosaicOptions(method=method, crs="EPSG:5070", resolution=30.0, tile=128))  # type: ignore[arg-type]
    with rasterio.open(out / "mosaic.vrt") as m:
        classes, bounds, shape = m.read(1), m.bounds, m.shape
    warped = []
    for job, name in zip(jobs, ("west", "east"), strict=True):
        target = tmp_path / f"{name}_warped.tif"
        subprocess.run(
            ["gdalwarp", "-q", "-t_srs", "EPSG:5070", "-te", *map(repr, bounds), "-ts", str(shape[1]), str(shape[0]),
             "-r", "near", "-et", "0", "-dstnodata", "255", str(job / f"{name}.tif"), str(target)],
            check=True,
        )  # fmt: skip
        warped.append(_read(target, 1))
    only_a = (warped[0] != 255) & (warped[1] == 255)
    only_b = (warped[1] != 255) & (warped[0] == 255)
    assert only_a.sum() > 10_000 and only_b.sum() > 10_000
    np.testing.assert_array_equal(classes[only_a], warped[0][only_a])
    np.testing.assert_array_equal(classes[only_b], warped[1][only_b])
    assert (classes[(warped[0] == 255) & (warped[1] == 255)] == 255).all()


def _cloudy_archive(tmp_path: Path, masked: bool) -> tuple[list[Path], np.ndarray]:
    """Four overlapping scenes of one truth, each with a cloud the model calls water with 0.9 (when not masked)."""
    rng = np.random.default_rng(11)
    truth = rng.choice(IDS, size=(120, 120))
    truth = np.repeat(np.repeat(truth[::4, ::4], 4, 0), 4, 1)
    scenes = []
    for i, (dx, dy) in enumerate([(0, 0), (20, 8), (8, 24), (30, 30)]):
        p = _probs(truth[dy : dy + 90, dx : dx + 90])
        cy, cx = rng.integers(0, 60, size=2)
        cloud = np.zeros((90, 90), bool)
        cloud[cy : cy + 30, cx : cx + 25] = True
        if masked:
            p[:, cloud] = np.nan
        else:
            p[:, cloud] = 0.05
            p[0, cloud] = 0.9
        scenes.append(FakeScene(f"s{i}", p, _shifted(dx, dy), acquired=f"2024-07-{i + 1:02d}"))
    return [write_job(tmp_path / ("masked" if masked else "unmasked"), scenes)], truth


def test_clouds_never_leak_and_masking_beats_no_masking(tmp_path: Path) -> None:
    masked_jobs, truth = _cloudy_archive(tmp_path, masked=True)
    unmasked_jobs, _ = _cloudy_archive(tmp_path, masked=False)
    mosaic(masked_jobs, tmp_path / "m", MosaicOptions(tile=50))
    mosaic(unmasked_jobs, tmp_path / "u", MosaicOptions(tile=50))
    count = _read(tmp_path / "m" / "mosaic_stats.vrt", 1)
    # Brute force: every output pixel against every scene's own valid pixels, through the transforms.
    with rasterio.open(tmp_path / "m" / "mosaic.vrt") as m:
        grid = m.transform
        expected = np.zeros(m.shape, int)
        for scene in sorted((tmp_path / "masked").glob("s?.tif")):
            with rasterio.open(scene) as src:
                valid, inverse = src.read(1) != 255, ~src.transform
                for r in range(m.height):
                    for c in range(m.width):
                        col, row = (int(v // 1) for v in inverse * (grid * (c + 0.5, r + 0.5)))
                        if 0 <= row < src.height and 0 <= col < src.width and valid[row, col]:
                            expected[r, c] += 1
    np.testing.assert_array_equal(count, expected)
    masked, unmasked = _read(tmp_path / "m" / "mosaic.vrt", 1), _read(tmp_path / "u" / "mosaic.vrt", 1)
    seen = count > 0
    masked_accuracy = (masked[seen] == truth[seen]).mean()
    unmasked_accuracy = (unmasked[seen] == truth[seen]).mean()
    assert masked_accuracy == 1.0 and unmasked_accuracy < 0.97


def test_rerun_redoes_only_the_tiles_a_changed_scene_touches(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    scenes = [FakeScene(f"s{i}", random_probabilities(rng, 64, 64), _shifted(64 * i, 0)) for i in range(3)]
    job = write_job(tmp_path / "job", scenes)
    first = mosaic([job], tmp_path / "m", MosaicOptions(tile=64))
    assert (first.tiles_run, first.tiles_skipped) == (3, 0)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "m" / "tiles").iterdir()}
    again = mosaic([job], tmp_path / "m", MosaicOptions(tile=64))
    assert (again.tiles_run, again.tiles_skipped) == (0, 3)
    scenes[1].probabilities = random_probabilities(rng, 64, 64)  # the job redid scene s1
    write_job(job, [scenes[1]])
    redo = mosaic([job], tmp_path / "m", MosaicOptions(tile=64))
    assert (redo.tiles_run, redo.tiles_skipped) == (1, 2)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "m" / "tiles").iterdir()}
    assert [n for n in before if before[n] != after[n]] == ["r000_c001.tif", "r000_c001_stats.tif"]
    expected, _ = scene_arrays(scenes[1].probabilities, IDS)
    np.testing.assert_array_equal(_read(tmp_path / "m" / "mosaic.vrt", 1)[:, 64:128], expected)
    other = mosaic([job], tmp_path / "m", MosaicOptions(tile=64, method="mode"))  # another method: every tile
    assert other.tiles_run == 3


def test_period_keeps_the_scenes_acquired_in_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    scenes = [
        FakeScene("spring", random_probabilities(rng, 32, 32), UTM17, acquired="2023-04-02T10:30:00Z"),
        FakeScene("autumn", random_probabilities(rng, 32, 32), UTM17, acquired="2023-10-02T10:30:00+00:00"),
        FakeScene("undated", random_probabilities(rng, 32, 32), UTM17),
    ]
    job = write_job(tmp_path / "job", scenes)
    summary = mosaic([job], tmp_path / "m", MosaicOptions(period=parse_period("2023-09-01/2023-12-31")))
    assert summary.observations == 1
    np.testing.assert_array_equal(_read(tmp_path / "m" / "mosaic.vrt", 1), _read(job / "autumn.tif", 1))
    assert mosaic([job], tmp_path / "y", MosaicOptions(period=parse_period("2023"), undated=True)).observations == 3
    with pytest.raises(GeoSegError, match="selects none of the 3 finished scenes"):
        mosaic([job], tmp_path / "n", MosaicOptions(period=parse_period("2022-01-01/2022-12-31")))


def test_two_workers_on_ray_make_the_same_bytes_as_one(tmp_path: Path) -> None:
    jobs = _two_zone_jobs(tmp_path)
    result = run("mosaic", *map(str, jobs), "--output", str(tmp_path / "ray"), "--tile-size", "128", "--crs",
                 "EPSG:5070", "--resolution", "30", "--workers", "2", "--ray")  # fmt: skip
    assert result.returncode == 0, result.stderr
    mosaic(jobs, tmp_path / "here", MosaicOptions(tile=128, crs="EPSG:5070", resolution=30.0, in_process=True))
    tiles = sorted(p.name for p in (tmp_path / "here" / "tiles").iterdir())
    assert tiles == sorted(p.name for p in (tmp_path / "ray" / "tiles").iterdir()) and len(tiles) > 4
    for name in ("mosaic.vrt", "mosaic_stats.vrt"):
        np.testing.assert_array_equal(_read(tmp_path / "ray" / name), _read(tmp_path / "here" / name))


def test_aoi_keeps_pixels_inside_and_qgis_shows_the_legend(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    p = random_probabilities(np.random.default_rng(5), 100, 100)
    job = write_job(tmp_path / "job", [FakeScene("a", p, UTM17)])
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(600_300, 3_998_500, 601_500, 3_999_700)], crs="EPSG:32617").to_file(aoi)
    out = tmp_path / "m"
    assert run("mosaic", str(job), "--output", str(out), "--aoi", str(aoi), "--cog").returncode == 0
    with rasterio.open(out / "mosaic.tif") as m:
        assert m.bounds == (600_300, 3_998_500, 601_500, 3_999_700)
        np.testing.assert_array_equal(m.read(1), _read(job / "a.tif", 1)[10:50, 10:50])
    found = run_qgis(
        f"""
        layers = [QgsRasterLayer("{out}/" + name, name) for name in ("mosaic.vrt", "mosaic.tif")]
        print(json.dumps([[c.label for c in layer.renderer().classes()] for layer in layers]))
        """,
        tmp_path,
    )
    assert found == [list(CLASSES.values())] * 2


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("not_a_job", ["is not a predict job folder"]),
        ("missing_output", ["class raster", "is missing"]),
        ("classes_differ", ["differ from those of"]),
        ("mean_without_probabilities", ["--method mean needs probabilities"]),
        ("empty_period", ["selects none of the"]),
        ("aoi_elsewhere", ["cover(s) none of the"]),
        ("unknown_crs", ["--crs 'EPSG:999999'"]),
        ("zero_resolution", ["--resolution must be a positive"]),
        ("negative_tile", ["--tile-size must be a positive"]),
        ("output_in_job", ["hold one another"]),
        ("output_is_a_file", ["is a file; --output takes a folder"]),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path: Path, case: str, fragments: list[str]) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    p = random_probabilities(np.random.default_rng(6), 32, 32)
    job = write_job(
        tmp_path / "job",
        [FakeScene("a", p, UTM17, acquired="2024-01-05")],
        probabilities=case != "mean_without_probabilities",
    )
    jobs, out, extra = [job], tmp_path / "out", []
    if case == "not_a_job":
        (tmp_path / "plain").mkdir()
        jobs = [tmp_path / "plain"]
    elif case == "missing_output":
        (job / "a.tif").unlink()
    elif case == "classes_differ":
        jobs.append(write_job(tmp_path / "other", [FakeScene("b", p, UTM17)], names=CLASSES | {2: "woodland"}))
    elif case == "mean_without_probabilities":
        extra = ["--method", "mean"]
    elif case == "empty_period":
        extra = ["--period", "2020-01-01/2020-12-31"]
    elif case == "aoi_elsewhere":
        gpd.GeoDataFrame(geometry=[box(10, 10, 11, 11)], crs="EPSG:4326").to_file(tmp_path / "aoi.gpkg")
        extra = ["--aoi", str(tmp_path / "aoi.gpkg")]
    elif case == "unknown_crs":
        extra = ["--crs", "EPSG:999999"]
    elif case == "zero_resolution":
        extra = ["--resolution", "0"]
    elif case == "negative_tile":
        extra = ["--tile-size", "-5"]
    elif case == "output_in_job":
        out = job / "mosaic"
    elif case == "output_is_a_file":
        out = tmp_path / "notes.txt"
        out.write_text("mine")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    result = run("mosaic", *map(str, jobs), "--output", str(out), *extra)
    _one_line_error(result, *fragments)
    assert not out.exists() or out.read_text() == "mine"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.realdata
def test_real_scene_predicted_as_two_overlapping_windows_mosaics_to_the_whole_scene(
    real_data: Path, tmp_path: Path
) -> None:
    """NC Landsat (5 bands) predicted whole, and as two overlapping windows (two scenes of one job); the mean
    mosaic on the scene's grid equals the whole-scene prediction wherever each window covering a pixel has its
    real neighbours within the model's reach (away from the window's cut edge by the receptive field)."""
    from geoseg.bundle import init_bundle, load_bundle
    from geoseg.inference.job import predict_archive
    from geoseg.inference.options import PredictOptions

    bundle = init_bundle(tmp_path / "bundle", "unet", 5, 3, base_channels=4, depth=2, seed=2)
    reach = load_bundle(bundle)[0].geometry().receptive_field
    source = real_data / "nc_landsat" / "landsat_multiband.tif"
    cuts = {"west": (0, 330), "east": (150, None)}  # columns; 180 shared
    with rasterio.open(source) as src:
        profile, data = src.profile, src.read()
        for name, (c0, c1) in cuts.items():
            part = data[:, :, c0:c1]
            window_profile = profile | {"width": part.shape[2], "transform": src.transform * Affine.translation(c0, 0)}
            with rasterio.open(tmp_path / f"{name}.tif", "w", **window_profile) as dst:
                dst.write(part)
        width = src.width
    options = PredictOptions(probabilities=True)
    predict_archive(bundle, [str(source)], tmp_path / "whole", options, in_process=True)
    windows = [str(tmp_path / f"{n}.tif") for n in cuts]
    reports = predict_archive(bundle, windows, tmp_path / "windows", options, in_process=True)
    assert [r.status for r in reports] == ["ok", "ok"]
    summary = mosaic([tmp_path / "windows"], tmp_path / "m", MosaicOptions(method="mean", tile=128))
    assert summary.observations == 2
    with (
        rasterio.open(tmp_path / "m" / "mosaic.vrt") as m,
        rasterio.open(tmp_path / "whole" / "landsat_multiband.tif") as w,
    ):
        assert (m.transform, m.shape) == (w.transform, w.shape)
        mosaic_classes, whole = m.read(1), w.read(1)
    cols = np.arange(width)
    west_ok = cols < 330 - reach  # the west window's cut edge is at 330, the east's at 150
    east_ok = cols >= 150 + reach
    covered_by_west, covered_by_east = cols < 330, cols >= 150
    trusted = (~covered_by_west | west_ok) & (~covered_by_east | east_ok)
    assert trusted.sum() > 0.8 * width and (covered_by_west & covered_by_east & trusted).sum() > 50
    np.testing.assert_array_equal(mosaic_classes[:, trusted], whole[:, trusted])


def test_polygons_of_a_mosaic_cross_tile_edges_and_cover_it(tmp_path: Path) -> None:
    import pyogrio

    from geoseg.vector.polygonize import VectorizeOptions

    p = random_probabilities(np.random.default_rng(8), 120, 100, smooth=10)
    job = write_job(tmp_path / "job", [FakeScene("a", p, UTM17)])
    options = MosaicOptions(tile=64, vectors=VectorizeOptions(fmt="gpkg"))
    summary = mosaic([job], tmp_path / "m", options)
    frame = pyogrio.read_dataframe(tmp_path / "m" / "mosaic.gpkg", layer="mosaic")
    assert summary.outputs["vectors"].endswith("mosaic.gpkg")
    assert frame.area.sum() == pytest.approx(120 * 100 * 900)
    whole = tmp_path / "whole.gpkg"
    assert run("vectorize", str(job / "a.tif"), "--output", str(whole)).returncode == 0
    assert len(frame) == len(pyogrio.read_dataframe(whole, layer="whole"))  # no polygon cut at a tile edge


def test_stac_items_describe_each_tile_with_the_period_and_are_replaced_on_rerun(tmp_path: Path) -> None:
    import pystac

    rng = np.random.default_rng(9)
    scenes = [
        FakeScene(f"s{i}", random_probabilities(rng, 64, 64), _shifted(64 * i, 0), acquired=f"2024-0{i + 4}-10")
        for i in range(3)
    ]
    job = write_job(tmp_path / "job", scenes)
    out = tmp_path / "m"
    result = run("mosaic", str(job), "--output", str(out), "--tile-size", "64", "--stac-items", "--period", "2024")
    assert result.returncode == 0, result.stderr
    collection = pystac.Collection.from_file(str(out / "stac" / "collection.json"))
    items = sorted(collection.get_items(recursive=True), key=lambda i: i.id)
    assert [i.id for i in items] == ["r000_c000", "r000_c001", "r000_c002"]
    interval = collection.extent.temporal.intervals[0]
    assert (interval[0].isoformat()[:10], interval[1].isoformat()[:10]) == ("2024-01-01", "2024-12-31")
    for item in items:
        assert item.properties["start_datetime"].startswith("2024-01-01") and item.datetime is None
        classes_file = Path(item.assets["classes"].get_absolute_href())
        assert classes_file.resolve() == (out / "tiles" / f"{item.id}.tif").resolve()
        assert Path(item.assets["stats"].get_absolute_href()).resolve() == classes_file.with_name(
            f"{item.id}_stats.tif"
        )
        with rasterio.open(classes_file) as src:
            assert item.properties["proj:code"] == src.crs.to_string() and item.properties["proj:shape"] == [64, 64]
            assert item.properties["proj:transform"] == list(src.transform)[:6]
        names = [(c["value"], c["name"]) for c in item.assets["classes"].extra_fields["classification:classes"]]
        assert names == [(c, CLASSES[c]) for c in IDS]
    # Run again over two scenes only: the collection is rewritten, the third tile's item is gone with its tile.
    job2 = write_job(tmp_path / "job2", scenes[:2])
    result = run("mosaic", str(job2), "--output", str(tmp_path / "m2"), "--tile-size", "64", "--stac-items")
    assert result.returncode == 0, result.stderr
    shrunk = pystac.Collection.from_file(str(tmp_path / "m2" / "stac" / "collection.json"))
    assert sorted(i.id for i in shrunk.get_items(recursive=True)) == ["r000_c000", "r000_c001"]
    # A stac/ folder this mosaic did not write is refused before anything is written.
    (tmp_path / "m3" / "stac").mkdir(parents=True)
    refused = run("mosaic", str(job), "--output", str(tmp_path / "m3"), "--stac-items")
    _one_line_error(refused, "was not written by this mosaic")
    assert sorted(p.name for p in (tmp_path / "m3").iterdir()) == ["stac"]
