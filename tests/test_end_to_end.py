"""The demo pipeline end to end on local Ray (Ray Train with 2 workers, Ray actors), then a training resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from rich.console import Console

from geoseg.bundle import load_bundle
from geoseg.demo import DEMO_CONFIG, run_demo
from geoseg.errors import GeoSegError
from geoseg.training.config import load_config
from geoseg.training.loop import train

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = [
    "data.patch_size=64",
    "data.patches_per_epoch=192",  # enough for a model that maps the cloud-free ground (the place test)
    "data.val_stride=64",
    "optim.epochs=2",
    "optim.batch_size=8",
    "model.kwargs={base_channels: 8, depth: 2}",
]


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("demo")
    return run_demo(workdir, scenes=3, size=192, overrides=SMALL)


def test_demo_writes_every_product(demo) -> None:
    workdir = Path(demo["workdir"])
    saved = json.loads((workdir / "report.json").read_text())
    assert saved["miou"] == demo["miou"]
    # The reported mIoU recomputed here from the rasters themselves: pooled over scenes, classes present only.
    import numpy as np

    cm = np.zeros((256, 256), dtype=np.int64)
    for row in demo["scenes"]:
        with rasterio.open(row["output"]) as pred_src:
            pred, valid = pred_src.read(1), pred_src.read_masks(1) > 0
        with rasterio.open(workdir / "synthetic" / f"{row['scene']}_labels.tif") as truth_src:
            truth = truth_src.read(1)
            valid &= truth_src.read_masks(1) > 0
        np.add.at(cm, (truth[valid].astype(int), pred[valid].astype(int)), 1)
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert demo["miou"] == pytest.approx(float((tp[union > 0] / union[union > 0]).mean()), abs=1e-6)
    assert demo["miou"] > 0.1  # two short epochs already separate some classes
    assert len(demo["scenes"]) == 3
    for row in demo["scenes"]:
        assert row["status"] == "ok" and row["tiles"] > 0 and row["pixels"] == 192 * 192
        assert set(row["iou"]) <= {"grassland", "water", "forest", "cropland", "road", "building"}
        source = workdir / "synthetic" / f"{row['scene']}.tif"
        with rasterio.open(source) as src, rasterio.open(row["output"]) as out:
            assert out.crs == src.crs and out.transform == src.transform
        gpkg, shp = (Path(p) for p in row["vector_outputs"])
        assert len(gpd.read_file(gpkg)) == row["polygons"] == len(gpd.read_file(shp))
        assert Path(row["quicklook"]).stat().st_size > 10_000
    # areas: the held-out map sampled, labelled from the synthetic truth, assessed
    areas = demo["areas"]
    assessment = json.loads(Path(areas["assessment"]).read_text())
    assert assessment["samples_labelled"] == 400 and assessment["samples_unlabelled"] == 0
    rows = areas["classes"].values()
    mapped = sum(r["mapped_ha"] for r in rows)
    scene_row = next(r for r in demo["scenes"] if r["scene"] == areas["scene"])
    with rasterio.open(scene_row["output"]) as pred_src:
        assert mapped == pytest.approx(np.sum(pred_src.read_masks(1) > 0) * 4 / 1e4)  # 2 m pixels, nodata left out
    assert sum(r["estimated_ha"] for r in rows) == pytest.approx(mapped)
    assert sum(r["true_ha"] for r in rows) == pytest.approx(mapped)
    assert 0 < assessment["overall_accuracy"] <= 1
    metrics = json.loads((workdir / "train" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert all(r["workers"] == 2 and r["replicas_identical"] for r in metrics["history"])
    assert (workdir / "train" / "curves.png").exists()
    spec, _ = load_bundle(workdir / "train" / "bundle")
    assert spec.metrics["epochs"] == 2 and [b.name for b in spec.bands] == ["blue", "green", "red", "nir"]
    assert all(b.std > 0 for b in spec.bands) and 200 < spec.bands[3].mean < 5000


def test_rerunning_training_resumes_from_the_last_checkpoint(demo) -> None:
    workdir = Path(demo["workdir"])
    cfg = load_config(DEMO_CONFIG, [f"data.root={workdir}", *SMALL, "optim.epochs=3"])
    console = Console(record=True, file=io.StringIO(), width=200)
    train(cfg, workdir / "train", console=console)
    printed = console.export_text()
    assert "epoch 3/3: loss" in printed and "epoch 2/3" not in printed  # progress, and only the new epoch ran
    # another model in the same run folder: refused in one line before Ray starts (it was a size-mismatch
    # traceback from a worker), and the folder's record of its model is left as it was
    record = json.loads((workdir / "train" / "model.json").read_text())
    assert record["architecture"]["kwargs"] == {"base_channels": 8, "depth": 2}
    wider = load_config(DEMO_CONFIG, [f"data.root={workdir}", *SMALL[:-1], "model.kwargs={base_channels: 4, depth: 2}"])
    with pytest.raises(GeoSegError, match=r"holds checkpoints of another model \(architecture changed"):
        train(wider, workdir / "train", console=console)
    assert json.loads((workdir / "train" / "model.json").read_text()) == record
    history = json.loads((workdir / "train" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # Epochs 1-2 come from the checkpoint, untouched: only epoch 3 ran in this fit.
    first_run = json.loads((workdir / "report.json").read_text())["validation"]
    assert history[first_run["best_epoch"] - 1]["val_miou"] == first_run["val_miou"]


def test_a_worker_crash_mid_run_resumes_from_the_checkpoint(demo, tmp_path, monkeypatch) -> None:
    workdir = Path(demo["workdir"])
    marker = tmp_path / "crashed"
    monkeypatch.setenv("GEOSEG_CRASH_MARKER", str(marker))
    monkeypatch.setenv("GEOSEG_CRASH_AFTER_EPOCH", "1")
    cfg = load_config(DEMO_CONFIG, [f"data.root={workdir}", *SMALL, "name=crashy", "scaling.max_failures=1"])
    train(cfg, tmp_path / "run")
    assert marker.read_text() == "crashed"
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]  # epoch 1 from the checkpoint, epoch 2 after the restart
    assert load_bundle(tmp_path / "run" / "bundle")[0].metrics["epochs"] == 2


def test_early_stopping_ends_the_run_when_validation_stops_improving(demo, tmp_path) -> None:
    workdir = Path(demo["workdir"])
    # A frozen model (no BatchNorm statistics, learning rate too small to move a float32 weight) scores the same
    # every epoch: with patience 1 the run must stop after epoch 2 of 6.
    frozen = [
        "optim.epochs=6",
        "optim.early_stopping_patience=1",
        "optim.lr=1e-30",
        "model.kwargs={base_channels: 4, depth: 2, norm: none}",
        "name=early",
    ]
    cfg = load_config(DEMO_CONFIG, [f"data.root={workdir}", *SMALL, *frozen])
    train(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0]["val_miou"] == history[1]["val_miou"]
    assert len(history[0]["val_confusion_matrix"]) == 6 and set(history[0]["val_per_class_f1"]) <= {
        "grassland",
        "water",
        "forest",
        "cropland",
        "road",
        "building",
    }


def test_the_test_set_is_scored_once_on_whole_scene_predictions(demo, tmp_path) -> None:
    """Blocks of every scene held out as validation and test sets; the test set is predicted whole (geoseg predict)
    after training and scored on its own pixels only: metrics.json equals a count made here from the rasters."""
    import numpy as np

    from geoseg.training.split import TEST

    workdir = Path(demo["workdir"])
    blocks = ["data.split=blocks", "data.block_size=64", "data.val_fraction=0.25", "data.test_fraction=0.25"]
    cfg = load_config(DEMO_CONFIG, [f"data.root={workdir}", *SMALL, *blocks, "name=blocks"])
    train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    spec, _ = load_bundle(tmp_path / "run" / "bundle")
    ids = [c.id for c in spec.classes]
    cm = np.zeros((len(ids), len(ids)), dtype=np.int64)
    maps = sorted((tmp_path / "run" / "split").glob("*.tif"))
    assert len(maps) == 3 and metrics["split"]["buffer"] == spec.receptive_field > 0
    for role_map in maps:
        with rasterio.open(role_map) as src:
            roles = src.read(1)
        with rasterio.open(tmp_path / "run" / "test" / role_map.name) as src:
            pred, pred_valid = src.read(1), src.read_masks(1) > 0
        with rasterio.open(workdir / "synthetic" / f"{role_map.stem}_labels.tif") as src:
            truth, truth_valid = src.read(1), src.read_masks(1) > 0
        scored = (roles == TEST) & pred_valid & truth_valid & np.isin(truth, ids)
        assert 0 < scored.sum() < 0.5 * scored.size
        np.add.at(cm, (np.searchsorted(ids, truth[scored]), np.searchsorted(ids, pred[scored])), 1)
    assert metrics["test"]["pixels"] == int(cm.sum())
    assert metrics["test"]["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    assert spec.metrics["test_miou"] == metrics["test"]["miou"] and spec.metrics["val_miou"] is not None


def test_the_demo_maps_a_place_from_a_cloudy_archive_and_no_cloud_leaks(demo) -> None:
    """The synthetic archive predicted with its SCL masks and without, each mosaicked for 2024 across zones 32N and
    33N: the count band equals a brute-force count of clear observations (each 2024 scene's class raster warped by
    gdalwarp -r near -et 0 onto the mosaic's grid), and the masked mosaic beats the unmasked one against the truth."""
    import subprocess

    import numpy as np

    place = demo["place"]
    masked, unmasked = place["masked"], place["unmasked"]
    assert {row["epsg"] for row in masked["scenes"]} == {32632, 32633} and len(masked["scenes"]) == 6
    assert masked["accuracy"] > unmasked["accuracy"] and masked["miou"] > unmasked["miou"]
    # Clouds leave few holes: the masked mosaic maps most of what the scenes cover (all of it, unmasked).
    assert masked["mapped_share"] > 0.85 * unmasked["mapped_share"] and masked["mean_observations"] > 1.5
    # The mosaic's accuracy, recomputed here from its file and the truth.
    from geoseg.synth_series import truth_on_grid

    folder = Path(masked["mosaic"]).parent
    with rasterio.open(folder / "mosaic.vrt") as src:
        pred, mapped = src.read(1), src.read_masks(1) > 0
        grid = (src.crs, src.width, src.height, src.bounds)
        truth = truth_on_grid(Path(place["truth"]), src.crs, src.transform, src.width, src.height)
    assert masked["accuracy"] == pytest.approx(float((pred[mapped] == truth[mapped]).mean()), abs=1e-4)
    with rasterio.open(folder / "mosaic_stats.vrt") as src:
        count = src.read(1)
    expected = np.zeros_like(count, dtype=np.int64)
    crs, width, height, bounds = grid
    for row in masked["scenes"]:
        if not row["acquired"].startswith("2024"):
            continue
        warped = folder.parent / f"brute_{row['scene']}.tif"
        subprocess.run(
            ["gdalwarp", "-q", "-overwrite", "-r", "near", "-et", "0", "-t_srs", crs.to_wkt(), "-te",
             *map(str, bounds), "-ts", str(width), str(height), str(Path(masked["job"]) / f"{row['scene']}.tif"),
             str(warped)],
            check=True,
        )  # fmt: skip
        with rasterio.open(warped) as src:
            expected += src.read_masks(1) > 0
    assert np.array_equal(count, expected)
    # Clouds leak without masks: the unmasked scenes map their clouds, the masked ones never do.
    for row in masked["scenes"]:
        assert row["mapped_share"] <= 1 - row["clouds"] + 1e-9
    assert all(row["mapped_share"] == 1.0 for row in unmasked["scenes"])
    assert Path(place["figure"]).stat().st_size > 20_000
    assert (folder / "mosaic.gpkg").exists()
