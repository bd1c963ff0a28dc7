"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from bad_inputs import write_geotiff

GEOSEG = [sys.executable, "-m", "geoseg"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GEOSEG, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _init_bundle(out: Path, bands: int, classes: int, base: int, depth: int | None = None) -> None:
    extra = ["--depth", str(depth)] if depth else []
    result = run(
        "bundle",
        "init",
        "--arch",
        "unet",
        "--in-channels",
        str(bands),
        "--num-classes",
        str(classes),
        "--base-channels",
        str(base),
        *extra,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr


def _one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("geoseg: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bundle_init_and_info(tmp_path) -> None:
    out = tmp_path / "bundle"
    assert (
        run(
            "bundle",
            "init",
            "--arch",
            "unet",
            "--in-channels",
            "4",
            "--num-classes",
            "3",
            "--base-channels",
            "8",
            "--out",
            str(out),
        ).returncode
        == 0
    )
    info = json.loads(run("bundle", "info", str(out)).stdout)
    assert info["architecture"] == {"name": "unet", "kwargs": {"base_channels": 8}}
    assert len(info["bands"]) == 4 and info["parameters"] > 10_000


def test_broken_bundle_is_one_line(tmp_path) -> None:
    (tmp_path / "bundle.json").write_text("{not json")
    _one_line_error(run("bundle", "info", str(tmp_path)), str(tmp_path / "bundle.json"), "corrupt bundle spec")


def test_synth_vectorize_evaluate(tmp_path) -> None:
    assert run("synth", "--out", str(tmp_path / "s"), "--scenes", "1", "--size", "128").returncode == 0
    labels = tmp_path / "s" / "scene_000_labels.tif"
    result = run("vectorize", str(labels), "--output", str(tmp_path / "v.shp"), "--chunk", "50")
    assert result.returncode == 0 and (tmp_path / "v.prj").exists()
    bracketed = tmp_path / "polys [all].gpkg"
    result = run("vectorize", str(labels), "--output", str(bracketed))
    assert result.returncode == 0 and result.stderr.splitlines()[-1].endswith(f"polygons -> {bracketed}")
    result = run(
        "evaluate", "--pred", str(labels), "--truth", str(tmp_path / "v.shp"), "--out", str(tmp_path / "m.json")
    )
    assert result.returncode == 0 and "mIoU 1.000  pixel accuracy 1.000" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["pixel_accuracy"] == 1.0


def test_vectorize_bad_input(make_geotiff, tmp_path) -> None:
    path = make_geotiff(np.full((3, 3), 0.25, np.float32))
    _one_line_error(run("vectorize", str(path), "--output", str(tmp_path / "o.gpkg")), str(path), "fractional")


def test_train_with_unknown_config_key(tmp_path) -> None:
    repo = Path(__file__).resolve().parents[1]
    result = run(
        "train",
        "--config",
        str(repo / "configs" / "synthetic.yaml"),
        "--output",
        str(tmp_path),
        "--set",
        "optim.learning_rate=1",
    )
    _one_line_error(result, "optim.learning_rate", "Extra inputs are not permitted")


@pytest.mark.ray
def test_predict_exit_code_reflects_failed_scenes(make_geotiff, tmp_path) -> None:
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    good = make_geotiff(np.random.default_rng(0).random((2, 70, 90)).astype(np.float32), name="good.tif")
    missing = tmp_path / "missing.tif"
    result = run(
        "predict",
        "--model",
        str(bundle),
        "--output",
        str(tmp_path / "job"),
        "--tile",
        "64",
        "--input",
        str(good),
        str(missing),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"failed {missing}: cannot open as a raster" in result.stderr.replace("\n", " ")
    assert (tmp_path / "job" / "good.tif").exists()
    job2 = tmp_path / "job [v2]"  # brackets: rich markup must not eat them from the paths it prints
    ok = run("predict", "--model", str(bundle), "--output", str(job2), "--tile", "64", "--input", str(good))
    assert ok.returncode == 0, ok.stderr
    assert f"1 scene(s) done, 0 failed; report: {job2 / 'report.json'}" in ok.stderr.splitlines()
    assert "executor: in-process" in ok.stderr  # 6 300 px: no Ray is started for it
    # Piped output (a batch log) gets progress as plain lines, the publishing stage included: not a silent wait.
    log = ok.stderr.splitlines()
    assert "predict: 0.01 Mpx to do" in log and "\r" not in ok.stderr
    assert any(line.startswith("predict 100%  0.01/0.01 Mpx") and line.endswith("done") for line in log)
    # (one stage line for the scenes that finish within a second of each other: it names the last stage)
    assert any(line.endswith("publishing the last 1 scene(s)") for line in log), ok.stderr
    # The summary as lines a log keeps (no box to wrap at 80 columns); a resumed run says what it found.
    assert "scenes: 1 ok, 0 failed, 0 skipped (done before)" in log and "│" not in ok.stderr
    again = run("predict", "--model", str(bundle), "--output", str(job2), "--tile", "64", str(good))
    assert again.returncode == 0 and "scenes: 0 ok, 0 failed, 1 skipped (done before)" in again.stderr
    assert "nothing to run: every scene was done before (0.01 Mpx, 0.63 km2)" in again.stderr


def test_failed_polygons_never_cost_the_class_raster(make_geotiff, tmp_path) -> None:
    """A minimum mapping unit larger than the scene fails the polygons, not the scene: the class raster stays
    published, the job says so and exits 1, and a rerun makes the polygons without running the model."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 70, 90)).astype(np.float32), name="scene.tif")
    job = tmp_path / "job"
    args = ["predict", "--model", str(bundle), "--output", str(job), "--tile", "64", "--vectorize", "gpkg", str(scene)]
    failed = run(*args, "--min-area", "1e9")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "polygons failed, class raster kept" in failed.stderr and "at least the whole raster's area" in failed.stderr
    assert "1 scene(s) done, 0 failed, 1 without their polygons (rerun to make them)" in failed.stderr
    raster = job / "scene.tif"
    assert raster.exists() and (job / "scene.qml").exists() and not (job / "scene.gpkg").exists()
    before = raster.read_bytes()
    again = run(*args)
    assert again.returncode == 0, again.stderr
    assert "(model not rerun)" in again.stderr and (job / "scene.gpkg").exists()
    assert raster.read_bytes() == before
    report = json.loads((job / "report.json").read_text())
    assert report["scenes"][0]["error"] is None and report["scenes"][0]["vectors"] == str(job / "scene.gpkg")


def test_a_rerun_leaves_no_product_of_an_earlier_model_and_restores_deleted_styles(make_geotiff, tmp_path) -> None:
    """A rerun with another model and fewer products left the earlier probabilities and polygons beside the new
    raster, passing for its products; deleted category names and styles were never restored (issue 23)."""
    first, second = tmp_path / "first", tmp_path / "second"
    _init_bundle(first, bands=2, classes=2, base=4, depth=2)
    _init_bundle(second, bands=2, classes=2, base=8, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="s.tif")
    job = tmp_path / "job"
    common = ["--output", str(job), "--tile", "64", str(scene)]
    ran = run("predict", "--model", str(first), "--probabilities", "--vectorize", "shp", *common)
    assert ran.returncode == 0, ran.stderr
    assert (job / "s_probabilities.tif").exists() and (job / "s_polygons.shp").exists()
    assert "class_1" in (job / "s_polygons.qml").read_text()  # the polygons' own style: s.qml is the raster's
    again = run("predict", "--model", str(second), *common)
    assert again.returncode == 0, again.stderr
    assert "written by an earlier model or option set" in again.stderr
    names = {p.name for p in job.iterdir()}
    assert names == {"s.tif", "s.tif.aux.xml", "s.qml", "s.png", "manifest.json", "report.json"}, names
    (job / "s.qml").unlink()
    (job / "s.tif.aux.xml").unlink()
    (job / "s.png").unlink()
    skipped = run("predict", "--model", str(second), *common)
    assert skipped.returncode == 0 and f"restored the styles of {job / 's.tif'}" in skipped.stderr
    assert f"restored the quicklook of {job / 's.tif'}" in skipped.stderr and (job / "s.png").is_file()
    assert "class_0" in (job / "s.qml").read_text()  # the bundle's class names, as first written
    assert "class_1" in (job / "s.tif.aux.xml").read_text()


def test_one_scene_whatever_its_spelling_and_a_job_never_takes_its_own_products_for_inputs(tmp_path) -> None:
    """The same job typed with an absolute instead of a relative path recomputed everything; one file given in
    two spellings was computed twice; a recursive glob reaching the job folder took last run's class rasters for
    scenes and renamed the real ones (issue 23)."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    data = tmp_path / "data"
    data.mkdir()
    write_geotiff(data / "a.tif", np.random.default_rng(0).random((2, 40, 50)).astype(np.float32))
    job = ["--model", str(bundle), "--tile", "64"]
    first = run("predict", *job, "--output", "data/out", "data/a.tif", "./data//a.tif", cwd=tmp_path)
    assert first.returncode == 0 and "scenes: 1 ok, 0 failed" in first.stderr, first.stderr
    again = run("predict", *job, "--output", str(data / "out"), str(data / "a.tif"))
    assert again.returncode == 0 and "scenes: 0 ok, 0 failed, 1 skipped" in again.stderr, again.stderr
    globbed = run("predict", *job, "--output", "data/out", "data/**/*.tif", cwd=tmp_path)
    assert globbed.returncode == 0, globbed.stderr
    assert "left out 1 input(s) that are this job's own products" in globbed.stderr
    assert "scenes: 0 ok, 0 failed, 1 skipped" in globbed.stderr
    assert sorted(p.name for p in (data / "out").glob("*.tif")) == ["a.tif"]  # no renamed twin


@pytest.mark.parametrize(
    ("record", "damage", "why"),
    [
        ("manifest.json", b"{not json", "is not valid JSON (line 1)"),
        ("manifest.json", b'{"scenes": {"s": "\xff\xfe', "is not UTF-8 text"),
        ("manifest.json", None, "is a folder, not the job's manifest"),
        ("manifest.jsonl", None, "is a folder, not the job's journal"),
    ],
)
def test_damaged_job_records_never_stop_a_job(make_geotiff, tmp_path, record, damage, why) -> None:
    """Garbage, torn UTF-8 or a folder in place of the job's records stopped the job (exit 2). Now: one warning
    line, the damaged record set aside (never deleted), the scenes checked again, the job finishes."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="s.tif")
    job = tmp_path / "job"
    args = ["predict", "--model", str(bundle), "--output", str(job), "--tile", "64", str(scene)]
    assert run(*args).returncode == 0
    before = (job / "s.tif").read_bytes()
    target = job / record
    target.unlink(missing_ok=True)
    if damage is None:
        (target / "inside").mkdir(parents=True)
    else:
        target.write_bytes(damage)
    again = run(*args)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and why in warnings[0] and "checked again" in warnings[0], again.stderr
    aside = [p for p in job.iterdir() if p.name.startswith(f"{record}.damaged-")]
    assert len(aside) == 1 and (aside[0].is_dir() if damage is None else aside[0].read_bytes() == damage)
    assert json.loads((job / "manifest.json").read_text())["scenes"]["s"]["status"] == "ok"
    assert (job / "s.tif").read_bytes() == before  # the scene redone (or kept): the same bytes


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_stops_a_ray_job_as_ctrl_c_does(make_geotiff, tmp_path) -> None:
    """SIGTERM (how Kubernetes stops a pod) printed Ray's native stack dump and died by SIGABRT. Now: one
    "aborted" line, exit 143, the finished scenes recorded, and the rerun skips them and finishes the rest."""
    import os
    import signal

    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    rng = np.random.default_rng(0)
    scenes = [make_geotiff(rng.random((2, 600, 600)).astype(np.float32), name=f"s{i}.tif") for i in range(5)]
    job = tmp_path / "job"
    args = ["predict", "--model", str(bundle), "--output", str(job), "--ray", "--workers", "1", "--tile", "128"]
    args += [str(s) for s in scenes]
    process = subprocess.Popen([*GEOSEG, *args], stderr=subprocess.PIPE, text=True, env=os.environ)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # stop it once a scene is finished: there is a record to keep
        seen.append(line)
        if line.startswith("ok "):
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    process.wait(timeout=300)
    assert process.returncode == 143, rest
    assert rest.strip().splitlines()[-1] == "aborted (SIGTERM)"
    assert "Traceback" not in rest and "***" not in rest and "SIGABRT" not in rest
    recorded = json.loads((job / "manifest.json").read_text())["scenes"]
    assert sum(e["status"] == "ok" for e in recorded.values()) >= 1
    again = run(*args)
    assert again.returncode == 0, again.stderr
    skipped = int(again.stderr.split(" skipped (done before)")[0].rsplit(", ", 1)[-1])
    assert skipped >= 1 and all((job / f"s{i}.tif").exists() for i in range(5))


@pytest.mark.ray
@pytest.mark.slow
def test_killed_job_resumes_and_matches_a_clean_run(make_geotiff, tmp_path) -> None:
    import os
    import signal
    import time

    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=3, classes=3, base=8)
    rng = np.random.default_rng(11)
    count = 24  # three groups of small scenes on Ray (executor.grouped): a kill after the first lands part-way
    scenes = [
        str(make_geotiff(rng.integers(1, 255, (3, 400, 400)).astype(np.uint8), name=f"s{i}.tif")) for i in range(count)
    ]
    args = [
        "predict",
        "--model",
        str(bundle),
        "--tile",
        "64",
        "--halo",
        "8",
        "--overlap",
        "8",
        "--ray",
        "--input",
        *scenes,
    ]
    job = tmp_path / "job"
    proc = subprocess.Popen(
        [*GEOSEG, *args, "--output", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal = job / "manifest.jsonl"  # entries land here first; manifest.json is a periodic snapshot
    deadline = time.time() + 300
    while time.time() < deadline:
        if journal.exists() and '"status": "ok"' in journal.read_text():
            break
        if proc.poll() is not None:  # it ended before the kill: the assertions below say so
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    def recorded(line: str) -> str | None:
        try:
            return json.loads(line)["scene"]
        except json.JSONDecodeError:
            return None  # a line the kill tore: that scene counts as unfinished

    done_before = {recorded(line) for line in journal.read_text().splitlines()} - {None}
    assert not (job / "manifest.json").exists()  # the rerun must find the finished scenes in the journal
    assert 1 <= len(done_before) < count, "the job must be killed part-way"
    finished = {p.name for p in job.glob("*.tif")}
    # Recorded scenes have their files. A scene killed between its COG's rename and its record may have its
    # file too: complete (renamed only once written), and redone on rerun. Nothing half-written has a final name.
    assert {f"{name}.tif" for name in done_before} <= finished
    for name in finished:
        with rasterio.open(job / name) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.read(1).shape == (400, 400)

    resumed = run(*args, "--output", str(job))
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((job / "report.json").read_text())
    statuses = {s["scene"]: s["status"] for s in report["scenes"]}
    assert {n for n, st in statuses.items() if st == "skipped"} == set(done_before)
    assert not list(job.glob(".*.partial"))
    clean = run(*args, "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0
    for i in range(count):
        assert (job / f"s{i}.tif").read_bytes() == (tmp_path / "clean" / f"s{i}.tif").read_bytes()


def test_vectorize_cli_options(tmp_path) -> None:
    assert run("synth", "--out", str(tmp_path / "s"), "--scenes", "1", "--size", "200").returncode == 0
    labels = tmp_path / "s" / "scene_000_labels.tif"
    plain = run("vectorize", str(labels), "--output", str(tmp_path / "plain.fgb"), "--chunk", "64", "--workers", "1")
    cleaned = run(
        "vectorize",
        str(labels),
        "--output",
        str(tmp_path / "clean.data"),
        "--format",
        "gpkg",
        "--chunk",
        "64",
        "--workers",
        "2",
        "--min-area",
        "50",
        "--simplify",
        "2",
        "--skip-class",
        "0",
        "--connectivity",
        "8",
        "--to-crs",
        "EPSG:4326",
    )
    assert plain.returncode == 0 and cleaned.returncode == 0, cleaned.stderr
    import geopandas as gpd

    before = gpd.read_file(tmp_path / "plain.fgb")
    after = gpd.read_file(tmp_path / "clean.data", driver="GPKG")
    assert after.crs.to_epsg() == 4326 and 0 not in set(after["class_id"])
    assert (after["area_m2"] >= 50).all() and len(after) < len(before[before["class_id"] != 0])


def test_no_command_writes_over_a_file_it_did_not_write(tmp_path) -> None:
    """vectorize, evaluate and bundle init meet a user's file at their output: one line, exit 1, the file as it
    was; their own earlier products are replaced (a rerun); into a user's GeoPackage only geoseg's layer goes."""
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import box

    classes = tmp_path / "classes.tif"
    write_geotiff(classes, (np.arange(2000).reshape(1, 40, 50) // 500).astype(np.uint8))
    notes, metrics = tmp_path / "notes.gpkg", tmp_path / "metrics.json"
    notes.write_text("my notes")
    metrics.write_text('{"mine": 1}')
    _one_line_error(run("vectorize", str(classes), "--output", str(notes)), "is not a geoseg polygons product")
    _one_line_error(
        run("evaluate", "--pred", str(classes), "--truth", str(classes), "--out", str(metrics)), "metrics.json"
    )
    assert notes.read_text() == "my notes" and metrics.read_text() == '{"mine": 1}'
    survey = tmp_path / "survey.gpkg"  # a real GeoPackage, someone's layer
    gpd.GeoDataFrame({"plot": [1]}, geometry=[box(500_000, 5_799_600, 500_100, 5_799_700)], crs="EPSG:32633").to_file(
        survey, layer="plots"
    )
    # Into someone's GeoPackage, only geoseg's own layer (named as the file) is added, as gdal_polygonize.py does;
    # their layers stay; a rerun replaces that layer alone.
    for _ in range(2):
        assert run("vectorize", str(classes), "--output", str(survey)).returncode == 0
        assert [str(n) for n, _ in pyogrio.list_layers(survey) if n != "layer_styles"] == ["plots", "survey"]
        assert len(gpd.read_file(survey, layer="survey")) == 4
        assert gpd.read_file(survey, layer="plots")["plot"].tolist() == [1]
    # A layer of that name that is someone's is refused, the file as it was.
    theirs = tmp_path / "theirs.gpkg"
    gpd.GeoDataFrame({"plot": [1]}, geometry=[box(500_000, 5_799_600, 500_100, 5_799_700)], crs="EPSG:32633").to_file(
        theirs, layer="theirs"
    )
    before = theirs.read_bytes()
    _one_line_error(run("vectorize", str(classes), "--output", str(theirs)), "theirs.gpkg")
    assert theirs.read_bytes() == before
    # Their own products: a rerun replaces them.
    ours, record = tmp_path / "ours.gpkg", tmp_path / "ours.json"
    for _ in range(2):
        assert run("vectorize", str(classes), "--output", str(ours)).returncode == 0
        assert run("evaluate", "--pred", str(classes), "--truth", str(classes), "--out", str(record)).returncode == 0
    assert len(gpd.read_file(ours, layer="ours")) == 4 and json.loads(record.read_text())["miou"] == 1.0
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, 3, 2, 4)
    weights = (bundle / "weights.pt").read_bytes()
    again = run("bundle", "init", "--arch", "unet", "--in-channels", "3", "--num-classes", "5", "--out", str(bundle))
    _one_line_error(again, "holds a model bundle (bundle.json)")
    assert (bundle / "weights.pt").read_bytes() == weights


def test_a_job_in_this_process_never_imports_ray(make_geotiff, tmp_path) -> None:
    """Ray's import is 0.25 s of every command's start; a job run in this process has no use for it (its errors
    are recognised only where Ray is loaded)."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="s.tif")
    script = (
        "import sys\nfrom geoseg.cli import main\n"
        f"sys.argv = ['geoseg', 'predict', '--model', {str(bundle)!r}, '--output', {str(tmp_path / 'job')!r}, "
        f"'--in-process', {str(scene)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('ray' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "False", done.stderr[-2000:]
    assert (tmp_path / "job" / "s.tif").is_file()
    ray_path = subprocess.run(  # the check can fail: the Ray executor's module does import it
        [sys.executable, "-c", "import sys, geoseg.inference.distributed; print('ray' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ray_path.stdout.strip() == "True"
