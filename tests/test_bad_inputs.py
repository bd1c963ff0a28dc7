"""The bad-input corpus through the CLI: one line naming the file and the cause, exit status non-zero, the
other scenes finished, nothing half-written; and the awkward-but-valid cases handled and checked by value."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from bad_inputs import CONFIG_CASES, SCENE_CASES, break_bundle, write_geotiff, write_scene_cases
from test_cli import _one_line_error, run

from geoseg.bundle import init_bundle
from geoseg.io.writer import CLASS_NODATA


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=3)


TILING = ["--tile", "64", "--halo", "8", "--overlap", "8"]


@pytest.mark.ray
@pytest.mark.slow
def test_one_job_over_the_whole_scene_corpus(bundle: Path, tmp_path: Path) -> None:
    scenes = write_scene_cases(tmp_path / "scenes")
    good = tmp_path / "scenes" / "..good scene.tif"  # a name that tries to climb out of the job folder
    write_geotiff(good, np.random.default_rng(9).integers(1, 200, (3, 70, 90)).astype(np.uint8))
    job = tmp_path / "job"
    inputs = [str(good), *map(str, scenes.values())]
    result = run("predict", "--model", str(bundle), "--output", str(job), *TILING, *inputs)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failures = [ln for ln in result.stderr.splitlines() if ln.startswith("failed ")]
    report = {s["scene"]: s for s in json.loads((job / "report.json").read_text())["scenes"]}
    for case in SCENE_CASES:
        path = scenes[case.name]
        if case.error:
            mine = [ln for ln in failures if str(path) in ln]
            assert len(mine) == 1 and case.error in mine[0], (case.name, result.stderr)
            assert report[case.name]["status"] == "failed" and case.error in report[case.name]["error"]
        else:
            assert report[case.name]["status"] == "ok", (case.name, report[case.name].get("error"))
    assert len(failures) == sum(c.error is not None for c in SCENE_CASES)

    # Only finished outputs, all inside the job folder; no temp files left by the failed scenes.
    handled = {c.name for c in SCENE_CASES if c.error is None}
    assert {p.name for p in job.iterdir()} == {f"{n}.tif" for n in handled} | {
        "good_scene.tif",
        "manifest.json",
        "report.json",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "scenes"]

    def classes(name: str) -> np.ndarray:
        with rasterio.open(job / f"{name}.tif") as src:
            return src.read(1)

    assert (classes("all_nodata") == CLASS_NODATA).all() and report["all_nodata"]["tiles_run"] == 0
    with rasterio.open(scenes["nan_inf"]) as src:
        finite = np.isfinite(src.read()).all(axis=0)
    nan_inf = classes("nan_inf")
    assert ((nan_inf == CLASS_NODATA) == ~finite).all() and (nan_inf[finite] < 4).all()
    assert classes("one_pixel").shape == (1, 1) and classes("one_pixel")[0, 0] < 4
    line = classes("line_70000x1")
    assert line.shape == (1, 70_000) and (line < 4).all()
    with rasterio.open(scenes["rotated"]) as src, rasterio.open(job / "rotated.tif") as out:
        assert out.transform == src.transform and out.crs == src.crs
        assert (out.read(1) < 4).all()


@pytest.mark.parametrize("how", ["corrupt_weights", "incompatible_version", "pickle_payload"])
def test_a_broken_bundle_stops_the_job_before_any_output(bundle: Path, tmp_path: Path, how: str) -> None:
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    cause = break_bundle(broken, how)
    scene = tmp_path / "s.tif"
    write_geotiff(scene, np.ones((3, 40, 40), np.uint8))
    result = run("predict", "--model", str(broken), "--output", str(tmp_path / "job"), str(scene))
    _one_line_error(result, str(broken), cause)
    assert not (tmp_path / "job").exists()
    assert not (broken / "pwned").exists()  # the pickle payload never ran


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_job_files(tmp_path: Path, case: str) -> None:
    text, cause = CONFIG_CASES[case]
    config = tmp_path / "job.yaml"
    config.write_text(text)
    result = run("predict", "--config", str(config), cwd=tmp_path)
    _one_line_error(result, str(config), cause)
    assert not (tmp_path / "pwned").exists()


def test_unwritable_output_folder(bundle: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the job folder's parent should be")
    scene = tmp_path / "s.tif"
    write_geotiff(scene, np.ones((3, 40, 40), np.uint8))
    result = run("predict", "--model", str(bundle), "--output", str(blocker / "job"), str(scene))
    _one_line_error(result, str(blocker / "job"), "cannot create the job folder")


@pytest.mark.ray
def test_full_disk_fails_one_scene_and_leaves_no_partial_file(
    ray_local: None, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geoseg.io.writer as writer
    from geoseg.inference import distributed, scene
    from geoseg.inference.job import predict_archive
    from geoseg.inference.options import PredictOptions

    # Publish in this process, where the injected failure is (the job runs it in a Ray task otherwise).
    monkeypatch.setattr(distributed.RayExecutor, "publish", lambda self, staged: scene.publish_scene(staged))

    real_copy = writer.rasterio.shutil.copy

    def disk_fills_on_scene_1(src: object, dst: str, **kwargs: object) -> None:
        if "s1" in Path(dst).name:  # half the file reaches the disk, then the disk is full
            Path(dst).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        real_copy(src, dst, **kwargs)

    monkeypatch.setattr(writer.rasterio.shutil, "copy", disk_fills_on_scene_1)
    scenes = []
    for i in range(3):
        scenes.append(tmp_path / f"s{i}.tif")
        write_geotiff(scenes[-1], np.random.default_rng(i).integers(1, 200, (3, 50, 60)).astype(np.uint8))
    job = tmp_path / "job"
    reports = predict_archive(bundle, [str(s) for s in scenes], job, PredictOptions(tile=64, halo=8, overlap=8))
    assert [r.status for r in reports] == ["ok", "failed", "ok"]
    assert reports[1].error is not None and reports[1].error.startswith(str(scenes[1]))
    assert "No space left on device" in reports[1].error and "\n" not in reports[1].error
    assert {p.name for p in job.iterdir()} == {"s0.tif", "s2.tif", "manifest.json", "report.json"}
    # A rerun once space is back redoes only the scene that failed.
    monkeypatch.setattr(writer.rasterio.shutil, "copy", real_copy)
    again = predict_archive(bundle, [str(s) for s in scenes], job, PredictOptions(tile=64, halo=8, overlap=8))
    assert [r.status for r in again] == ["skipped", "ok", "skipped"]


def test_label_raster_on_another_grid_is_warped(tmp_path: Path) -> None:
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    classes = np.zeros((1, 200, 200), np.uint8)
    classes[:, 50:150, 20:120] = 1
    classes[:, 120:190, 100:190] = 2
    pred = tmp_path / "pred.tif"
    write_geotiff(pred, classes)
    # The truth: the same classes on a geographic grid at a different resolution.
    bounds = rasterio.transform.array_bounds(200, 200, rasterio.Affine(10, 0, 500_000, 0, -10, 5_800_000))
    transform, width, height = calculate_default_transform("EPSG:32633", "EPSG:4326", 200, 200, *bounds)
    warped = np.full((1, height * 2, width * 2), 255, np.uint8)
    transform = transform * rasterio.Affine.scale(0.5)
    reproject(
        classes,
        warped,
        src_transform=rasterio.Affine(10, 0, 500_000, 0, -10, 5_800_000),
        src_crs="EPSG:32633",
        dst_transform=transform,
        dst_crs="EPSG:4326",
        resampling=Resampling.nearest,
        dst_nodata=255,
    )
    truth = tmp_path / "truth.tif"
    write_geotiff(truth, warped, crs="EPSG:4326", transform=transform, nodata=255)
    result = run("evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pixel_accuracy"] > 0.98 and metrics["miou"] > 0.95

    # A label raster that does not overlap the prediction at all is an error, not a score of zero.
    far = tmp_path / "far.tif"
    write_geotiff(far, classes, transform=rasterio.Affine(10, 0, 900_000, 0, -10, 5_800_000))
    _one_line_error(run("evaluate", "--pred", str(pred), "--truth", str(far)), str(far), "share no valid pixels")
