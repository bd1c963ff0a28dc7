"""The bad-input corpus through the CLI: one line naming the file and the cause, exit status non-zero, the
other scenes finished, nothing half-written; and the awkward-but-valid cases handled and checked by value."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
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
    assert {p.name for p in job.iterdir()} == _published(*handled, "good_scene") | {"manifest.json", "report.json"}
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
    from geoseg.inference import publishing, scene
    from geoseg.inference.job import predict_archive
    from geoseg.inference.options import PredictOptions

    # Publish in this process, where the injected failure is (the job runs it in a publishing process otherwise).
    monkeypatch.setattr(publishing.PublishingProcess, "__call__", lambda self, staged: scene.publish_scene(staged))

    real_copy = writer.rasterio.shutil.copy

    def disk_fills_on_scene_1(src: object, dst: str, **kwargs: object) -> None:
        if "s1" in Path(dst).name:  # half the file reaches the disk, then the disk is full
            Path(dst).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        real_copy(src, dst, **kwargs)

    def open_fills_on_scene_1(name: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode and "s1" in Path(str(name)).name:  # a file built in memory (a one-block scene's COG)
            Path(str(name)).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device", str(name))
        return open(name, mode, *args, **kwargs)  # type: ignore[call-overload]

    # The disk fills wherever bytes of scene 1 reach it: GDAL writing a file, or the bytes of one built in memory.
    monkeypatch.setattr(writer.rasterio.shutil, "copy", disk_fills_on_scene_1)
    monkeypatch.setattr(writer, "open", open_fills_on_scene_1, raising=False)
    scenes = []
    for i in range(3):
        scenes.append(tmp_path / f"s{i}.tif")
        write_geotiff(scenes[-1], np.random.default_rng(i).integers(1, 200, (3, 50, 60)).astype(np.uint8))
    job = tmp_path / "job"
    reports = predict_archive(bundle, [str(s) for s in scenes], job, PredictOptions(tile=64, halo=8, overlap=8))
    assert [r.status for r in reports] == ["ok", "failed", "ok"]
    assert reports[1].error is not None and reports[1].error.startswith(str(scenes[1]))
    assert "No space left on device" in reports[1].error and "\n" not in reports[1].error
    assert {p.name for p in job.iterdir()} == _published("s0", "s2") | {"manifest.json", "report.json"}
    # A rerun once space is back redoes only the scene that failed.
    monkeypatch.setattr(writer.rasterio.shutil, "copy", real_copy)
    monkeypatch.delattr(writer, "open")
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


def _scene(path: Path, height: int = 70, width: int = 90, bands: int = 3, seed: int = 0, **profile: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(1, 200, (bands, height, width)).astype(np.uint8)
    write_geotiff(path, data, **profile)
    return path


def test_an_output_folder_holding_the_inputs_is_refused_before_anything_is_written(bundle: Path, tmp_path) -> None:
    folder = tmp_path / "d"
    scene = _scene(folder / "a.tif")
    before = scene.read_bytes()
    result = run("predict", "--model", str(bundle), *TILING, "--output", str(folder), str(folder))
    _one_line_error(result, str(folder / "a.tif"), "the job would write over the input")
    assert scene.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.tif"]


@pytest.mark.ray
@pytest.mark.slow
def test_colliding_names_bad_stacks_and_replaced_inputs(bundle: Path, tmp_path) -> None:
    from affine import Affine

    ok = _scene(tmp_path / "ok.tif")
    x, xp = _scene(tmp_path / "p" / "x.tif", seed=1), _scene(tmp_path / "p" / "x_probabilities.tif", seed=2)
    stacks = [
        "+".join(str(_scene(tmp_path / f / f"B0{k}.tif", bands=1, seed=k)) for k in (2, 3, 4)) for f in ("a", "bb")
    ]
    missing = "+".join(
        [
            str(_scene(tmp_path / "s" / "b1.tif", bands=1)),
            str(_scene(tmp_path / "s" / "b2.tif", bands=1)),
            str(tmp_path / "s" / "missing.tif"),
        ]
    )
    coarse = Affine(20, 0, 500_000, 0, -20, 5_800_000)
    odd_first = "+".join(
        [
            str(_scene(tmp_path / "r" / "c1.tif", 35, 45, bands=1, transform=coarse)),
            str(_scene(tmp_path / "r" / "c2.tif", bands=1)),
            str(_scene(tmp_path / "r" / "c3.tif", bands=1)),
        ]
    )
    inputs = [str(ok), str(x), str(xp), *stacks, missing, odd_first]
    job = tmp_path / "job"
    args = ["predict", "--model", str(bundle), *TILING, "--probabilities", "--output", str(job), *inputs]

    first = run(*args)
    assert first.returncode == 1 and "Traceback" not in first.stderr
    report = {s["source"]: s for s in json.loads((job / "report.json").read_text())["scenes"]}
    assert "missing.tif: band 3 of the stack cannot be opened as a raster" in report[missing]["error"]
    assert (
        "c1.tif: band 1 of the stack is not on the other bands' grid: its pixels are 20 x 20"
        in report[odd_first]["error"]
    )
    good = [str(ok), str(x), str(xp), *stacks]
    assert all(report[s]["status"] == "ok" for s in good)
    outputs = [Path(report[s][k]) for s in good for k in ("output", "probabilities")]
    assert len({p.name.casefold() for p in outputs}) == 10 and all(p.parent == job for p in outputs)
    with rasterio.open(report[str(x)]["probabilities"]) as a, rasterio.open(report[str(xp)]["output"]) as b:
        assert a.count == 5 and b.count == 1  # x's probabilities and x_probabilities' classes: two files

    # Rerun: every finished scene settles (skipped), the two bad stacks fail again, nothing else changes.
    again = json.loads((job / "report.json").read_text()) if run(*args).returncode == 1 else None
    assert again is not None
    statuses = {s["source"]: s["status"] for s in again["scenes"]}
    assert all(statuses[s] == "skipped" for s in good) and statuses[missing] == statuses[odd_first] == "failed"

    # An input replaced by another scene under the same name is redone, not skipped.
    _scene(ok, height=200, width=150, seed=9)
    third = run(*args)
    scenes = {s["source"]: s for s in json.loads((job / "report.json").read_text())["scenes"]}
    assert third.returncode == 1 and scenes[str(ok)]["status"] == "ok"
    assert all(scenes[s]["status"] == "skipped" for s in good[1:])
    with rasterio.open(scenes[str(ok)]["output"]) as out:
        assert out.shape == (200, 150)


def _tmpfs(folder: Path, size: str, *options: str) -> None:
    """Mount a small tmpfs at ``folder`` (a real file system that fills up or turns read-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    _tmpfs(folder, "3m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_full_disk_fails_one_scene_with_its_cause_and_leaves_no_partial_file(
    bundle: Path, tmp_path: Path, small_disk: Path
) -> None:
    small = [_scene(tmp_path / "s0.tif"), _scene(tmp_path / "s2.tif", seed=2)]
    big = _scene(tmp_path / "s1.tif", 1700, 1700)  # its staging raster alone is larger than the 3 MB disk
    job = small_disk / "job"
    args = ["predict", "--model", str(bundle), *TILING, "--output", str(job), *map(str, [*small, big])]
    result = run(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "unexpected" not in result.stderr
    report = {s["scene"]: s for s in json.loads((job / "report.json").read_text())["scenes"]}
    # The big scene fails with the real cause, named in one line; a small scene either finished or was being
    # written while the disk was full, and then says so too. Nothing half-written is left.
    assert report["s1"]["status"] == "failed" and report["s1"]["error"].startswith(f"{big}: No space left on device")
    for entry in report.values():
        assert entry["status"] == "ok" or "No space left on device" in entry["error"], entry
        assert "\n" not in (entry["error"] or "")
    finished = sorted(f"{n}.tif" for n, e in report.items() if e["status"] == "ok")
    published = _published(*(n for n, e in report.items() if e["status"] == "ok"))
    assert finished and {p.name for p in job.iterdir()} == published | {"manifest.json", "report.json"}
    for name in finished:
        with rasterio.open(job / name) as src:
            assert src.read(1).shape == (70, 90)
    # Once there is room again, a rerun redoes exactly the scenes that failed.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert run(*args).returncode == 0
    rerun = {s["scene"]: s["status"] for s in json.loads((job / "report.json").read_text())["scenes"]}
    assert rerun == {n: "skipped" if e["status"] == "ok" else "ok" for n, e in report.items()}


@pytest.mark.ray
@pytest.mark.slow
def test_a_job_folder_turned_read_only_is_one_line(bundle: Path, tmp_path: Path, small_disk: Path) -> None:
    job = small_disk / "job"
    scene = _scene(tmp_path / "s0.tif")
    assert run("predict", "--model", str(bundle), *TILING, "--output", str(job), str(scene)).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    more = _scene(tmp_path / "s1.tif", seed=1)
    result = run("predict", "--model", str(bundle), *TILING, "--output", str(job), str(scene), str(more))
    _one_line_error(result, str(job), "cannot write to the job folder (Read-only file system)")


def _input_corpus(root: Path) -> dict[str, Path]:
    """Files a user hands geoseg by mistake or in odd shapes, written on demand."""
    import geopandas as gpd
    import shapely
    from affine import Affine
    from rasterio.control import GroundControlPoint

    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"missing": root / "missing.tif", "folder": root / "a folder"}
    files["folder"].mkdir()
    files["html"] = root / "html.tif"
    files["html"].write_text("<html>404</html>")
    classes = np.random.default_rng(0).integers(0, 3, (1, 40, 50)).astype(np.uint8)

    def put(name: str, data: np.ndarray, **profile: object) -> None:
        files[name] = root / f"{name}.tif"
        write_geotiff(files[name], data, **profile)

    big = classes.astype("uint32")
    big[0, 0, 0] = 3_000_000_000
    put("classes", classes)
    put("rgb", np.repeat(classes, 3, axis=0))
    put("complex", classes.astype("complex64"))
    put("no_crs", classes, crs=None)
    put("negative", classes.astype("int16") - 1)
    put("fraction", classes.astype("float32") + 0.5)
    put("uint32_big", big)
    put("far_labels", classes, transform=Affine(10, 0, 900_000, 0, -10, 5_800_000))
    put("unknown_ids", classes + 7)
    files["image"] = _scene(root / "image.tif", 40, 50)
    local = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    files["local_image"] = _scene(root / "local_image.tif", 40, 50, crs=rasterio.crs.CRS.from_wkt(local))
    put("local_classes", classes, crs=rasterio.crs.CRS.from_wkt(local))
    corners = [(0, 0, 500_000, 5_800_000), (40, 50, 500_500, 5_799_600), (0, 50, 500_500, 5_800_000)]
    files["gcp_only"] = root / "gcp_only.tif"
    profile = {"driver": "GTiff", "count": 1, "height": 40, "width": 50, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(files["gcp_only"], "w", gcps=[GroundControlPoint(*c) for c in corners], **profile) as dst:
        dst.write(classes)
    files["string_field"] = root / "string_field.gpkg"
    box = shapely.box(500_000, 5_799_700, 500_300, 5_800_000)
    gpd.GeoDataFrame({"class_id": ["yes"], "other": [1]}, geometry=[box], crs="EPSG:32633").to_file(
        files["string_field"]
    )
    files["bad_yaml"] = root / "bad.yaml"
    files["bad_yaml"].write_text("data: [unclosed\n")
    return files


def _train_config(root: Path, labels: Path, image: Path) -> Path:
    config = root / f"train_{labels.stem}_{image.stem}.yaml"
    config.write_text(
        "data:\n"
        f"  root: {root}\n"
        f"  scenes: [{{image: {image.name}, labels: {labels.name}}}]\n"
        "  split: region\n  val_fraction: 0.5\n  patch_size: 32\n  patches_per_epoch: 8\n"
        "classes: [{id: 0, name: a, color: [1, 1, 1]}, {id: 1, name: b, color: [2, 2, 2]}, "
        "{id: 2, name: c, color: [3, 3, 3]}]\n"
        "model: {arch: unet, kwargs: {base_channels: 2, depth: 1}}\noptim: {epochs: 1, batch_size: 2}\n"
        "scaling: {workers: 1}\n"
    )
    return config


def test_every_command_over_the_bad_input_corpus(bundle: Path, tmp_path: Path) -> None:
    """Each command, over every input it cannot use: one line naming the file and the cause, exit 1; never a
    traceback, never "unexpected error", never exit 2; and nothing left behind that looks like an output."""
    from concurrent.futures import ThreadPoolExecutor

    f = _input_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    a_file = f["classes"]

    def train(labels: Path, image: Path, run: str) -> list[str]:
        """``geoseg train`` on a one-scene config of ``image`` and ``labels`` into ``out/run``."""
        return ["train", "--config", str(_train_config(tmp_path / "corpus", labels, image)), "--output", str(out / run)]

    cases: list[tuple[list[str], str, str]] = [  # (arguments, the file the line names, the cause)
        (
            ["vectorize", str(f["missing"]), "--output", str(out / "v.gpkg")],
            str(f["missing"]),
            "cannot open as a raster",
        ),
        (["vectorize", str(f["html"]), "--output", str(out / "v.gpkg")], str(f["html"]), "cannot open as a raster"),
        (["vectorize", str(f["folder"]), "--output", str(out / "v.gpkg")], str(f["folder"]), "cannot open as a raster"),
        (["vectorize", str(f["rgb"]), "--output", str(out / "v.gpkg")], str(f["rgb"]), "has 3 bands"),
        (["vectorize", str(f["complex"]), "--output", str(out / "v.gpkg")], str(f["complex"]), "complex64"),
        (["vectorize", str(f["no_crs"]), "--output", str(out / "v.gpkg")], str(f["no_crs"]), "no CRS"),
        (
            ["vectorize", str(f["uint32_big"]), "--output", str(out / "v.gpkg"), "--workers", "1"],
            str(f["uint32_big"]),
            "class id 3000000000 does not fit",
        ),
        (["vectorize", str(f["fraction"]), "--output", str(out / "v.gpkg")], str(f["fraction"]), "fractional"),
        (["vectorize", str(a_file), "--output", str(f["folder"]), "--format", "gpkg"], str(f["folder"]), "is a folder"),
        (
            ["evaluate", "--pred", str(f["missing"]), "--truth", str(a_file)],
            str(f["missing"]),
            "cannot open the prediction",
        ),
        (["evaluate", "--pred", str(a_file), "--truth", str(f["missing"])], str(f["missing"]), "cannot open the truth"),
        (
            ["evaluate", "--pred", str(a_file), "--truth", str(f["negative"])],
            str(f["negative"]),
            "negative class ids (-1)",
        ),
        (
            ["evaluate", "--pred", str(a_file), "--truth", str(f["gcp_only"])],
            str(f["gcp_only"]),
            "ground control points",
        ),
        (["evaluate", "--pred", str(a_file), "--truth", str(f["rgb"])], str(f["rgb"]), "has 3 bands"),
        (["evaluate", "--pred", str(a_file), "--truth", str(f["fraction"])], str(f["fraction"]), "fractional"),
        (
            ["evaluate", "--pred", str(a_file), "--truth", str(f["string_field"])],
            str(f["string_field"]),
            "holds 'yes', not a class id",
        ),
        (
            ["evaluate", "--pred", str(a_file), "--truth", str(f["string_field"]), "--class-field", "kind"],
            str(f["string_field"]),
            "no 'kind' attribute (they have: 'class_id', 'other')",
        ),
        (
            ["evaluate", "--pred", str(a_file), "--truth", str(a_file), "--out", str(f["folder"])],
            str(f["folder"]),
            "is a folder",
        ),
        (["evaluate", "--pred", str(a_file), "--truth", str(f["far_labels"])], str(f["far_labels"]), "share no valid"),
        (
            ["train", "--config", str(f["missing"]), "--output", str(out / "t0")],
            str(f["missing"]),
            "cannot read config",
        ),
        (["train", "--config", str(f["bad_yaml"]), "--output", str(out / "t1")], str(f["bad_yaml"]), "invalid YAML"),
        (
            train(f["far_labels"], f["image"], "t2"),
            str(f["far_labels"]),
            "no usable pixel",
        ),
        (
            train(f["unknown_ids"], f["image"], "t3"),
            str(f["unknown_ids"]),
            "are none of the config's classes",
        ),
        (
            train(f["classes"], f["html"], "t4"),
            str(f["html"]),
            "cannot open as a raster",
        ),
        (  # an image in a local (engineering) CRS: it ended in a WorkerGroupError with a cut-off PROJJSON
            train(f["classes"], f["local_image"], "t5"),
            str(f["classes"]),
            "cannot bring the labels onto",
        ),
        (["change", str(f["missing"]), str(a_file), "--output", str(out / "c0")], str(f["missing"]), "cannot open"),
        (["change", str(a_file), str(f["html"]), "--output", str(out / "c1")], str(f["html"]), "cannot open"),
        (["change", str(a_file), str(f["rgb"]), "--output", str(out / "c2")], str(f["rgb"]), "has 3 bands"),
        (["change", str(a_file), str(f["far_labels"]), "--output", str(out / "c3")], str(f["far_labels"]), "overlap"),
        (["change", str(a_file), str(a_file), "--output", str(a_file)], str(a_file), "is a file; --output takes"),
        (["sample", str(f["fraction"]), "--output", str(out / "s0.gpkg"), "--size", "5"], str(f["fraction"]), "fract"),
        (["sample", str(f["negative"]), "--output", str(out / "s1.gpkg"), "--size", "5"], str(f["negative"]), "negat"),
        (["sample", str(f["complex"]), "--output", str(out / "s2.gpkg"), "--size", "5"], str(f["complex"]), "complex"),
        (["sample", str(f["no_crs"]), "--output", str(out / "s3.gpkg"), "--size", "5"], str(f["no_crs"]), "no CRS"),
        (["sample", str(a_file), "--output", str(a_file.with_suffix(".gpkg")), "--size", "0"], "--size", "range"),
        (["assess", str(f["folder"])], str(f["folder"]), "no such sheet"),
        (["mosaic", str(f["missing"]), "--output", str(out / "m0")], str(f["missing"]), "is not a folder"),
        (["mosaic", str(f["folder"]), "--output", str(out / "m1")], str(f["folder"]), "is not a predict job folder"),
        (["mosaic", str(f["folder"]), "--output", str(a_file)], str(a_file), "is a file; --output takes a folder"),
        (["assess", str(f["html"])], str(f["html"]), "cannot read as a GeoPackage"),
        (["assess", str(f["missing"]), "--out", str(f["folder"])], str(f["folder"]), "is a folder"),
        (  # a local (engineering) CRS has no place on the globe: it was "unexpected error: ProjError"
            ["vectorize", str(f["local_classes"]), "--output", str(out / "v.geojson")],
            str(out / "v.geojson"),
            "cannot be transformed to EPSG:4326",
        ),
        (
            ["vectorize", str(a_file), "--output", str(out / "v.gpkg"), "--min-area", "1e12"],
            str(a_file),
            "at least the whole raster's area",
        ),
        (
            [
                "bundle",
                "init",
                "--arch",
                "unet",
                "--in-channels",
                "1",
                "--num-classes",
                "2",
                "--class",
                "a",
                "--class",
                "a",
                "--out",
                str(out / "b_dup"),
            ],
            str(out / "b_dup"),
            "class name 'a' is given twice",
        ),
        (
            [
                "bundle",
                "init",
                "--arch",
                "unet",
                "--in-channels",
                "1",
                "--num-classes",
                "2",
                "--band",
                "x:nan:nan",
                "--out",
                str(out / "b_nan"),
            ],
            "--band",
            "finite numbers",
        ),
        (["predict", "--model", str(bundle), "--output", str(out / "c.tif"), str(f["image"])], "c.tif", "job folder"),
        (["bundle", "info", str(f["missing"])], str(f["missing"]), "not a model bundle"),
        (["bundle", "info", str(a_file)], str(a_file), "not a model bundle"),
        (
            [
                "bundle",
                "init",
                "--arch",
                "unet",
                "--in-channels",
                "3",
                "--num-classes",
                "2",
                "--out",
                str(a_file / "b"),
            ],
            str(a_file / "b"),
            "cannot create the bundle",
        ),
        (  # a folder that is not a bundle is never replaced (it used to be deleted)
            ["bundle", "init", "--arch", "unet", "--in-channels", "3", "--num-classes", "2", "--out", str(f["folder"])],
            str(f["folder"]),
            "is not a model bundle; refusing to replace it",
        ),
        (
            ["bundle", "init", "--arch", "unet", "--in-channels", "0", "--num-classes", "2", "--out", str(out / "b")],
            "--in-channels",
            "not in the range",
        ),
        (
            ["predict", "--model", str(f["folder"]), "--output", str(out / "p0"), str(a_file)],
            str(f["folder"]),
            "not a model bundle",
        ),
        (
            ["predict", "--model", str(bundle), "--output", str(out / "p1"), str(tmp_path / "nothing*.tif")],
            "nothing*.tif",
            "no input scenes found",
        ),
        (
            ["predict", "--model", str(bundle), "--output", str(a_file), str(f["image"])],
            str(a_file),
            "cannot create the job folder",
        ),
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run(*case[0]), cases))
    for (args, where, cause), result in zip(cases, results, strict=True):
        assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, (args, result.stderr)
        assert result.returncode == 1, (args, result.returncode, result.stderr)
        _one_line_error(result, where, cause)
    assert not any(p.name.startswith(("t", "c", "s", "b", "v")) for p in out.iterdir()) if out.exists() else True
    assert f["folder"].is_dir() and not list(f["folder"].parent.glob(".*.partial"))


def _published(*names: str) -> set[str]:
    """The files a published scene has: its class COG, GDAL category names, QGIS style and quicklook."""
    return {f"{n}{suffix}" for n in names for suffix in (".tif", ".tif.aux.xml", ".qml", ".png")}
