"""NC Landsat land cover: the U-Net of configs/nc_landsat.yaml against a per-pixel RandomForest, on one test set.

    .venv/bin/pip install -e '.[bench]'          # scikit-learn, for the baseline only
    .venv/bin/python benchmarks/nc_landsat.py [--runs runs/nc_s0 runs/nc_s1 ...] [--seeds 0 1 2] [--trees 200]

Each run is a ``geoseg train`` output folder of that config (trained here, one per seed, when ``--runs`` is not
given). The RandomForest learns the six band values of every training pixel of the run's own split map
(``split/<scene>.tif``: the same training set, buffer and test region the U-Net had); both are scored on the
same pixels: test role, every band valid, a label among the classes, and a U-Net prediction there. The U-Net's
numbers are read from its whole-scene test prediction (``test/<scene>.tif``), not from metrics.json, so the
table recomputes them. Per-class IoU of each model and mean +- spread over seeds are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoseg.io.raster import onto_grid  # noqa: E402
from geoseg.metrics import summarize  # noqa: E402
from geoseg.training.config import TrainConfig, load_config  # noqa: E402
from geoseg.training.loop import train  # noqa: E402
from geoseg.training.split import TEST, TRAIN  # noqa: E402

CONFIG = ROOT / "configs" / "nc_landsat.yaml"


def _config(overrides: list[str]) -> TrainConfig:
    """The shipped config, its data root taken relative to the repository (where its comment says to run it)."""
    cfg = load_config(CONFIG, overrides)
    root = Path(cfg.data.root)
    if not root.is_absolute():
        cfg = load_config(CONFIG, [*overrides, f"data.root={ROOT / root}"])
    return cfg


def _read_scene(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """Bands [6, h, w], valid, truth ids, roles (at pixel resolution) and the U-Net's test prediction."""
    cfg = _config([f"data.stacks_dir={run / 'stacks'}"])
    ((image, labels, _),) = cfg.scene_pairs()
    with rasterio.open(image) as src:
        bands = src.read().astype(np.float64)
        valid = np.all(src.read_masks() > 0, axis=0)
        grid = (src.crs, src.transform, src.width, src.height)
    with rasterio.open(labels) as lab:
        truth_src = onto_grid(lab, *grid)
        truth = truth_src.read(1)
        valid &= truth_src.read_masks(1) > 0
    (role_file,) = sorted((run / "split").glob("*.tif"))
    with rasterio.open(role_file) as rm:
        cell = round(rm.transform.a / grid[1].a)
        roles = np.repeat(np.repeat(rm.read(1), cell, axis=0), cell, axis=1)[: grid[3], : grid[2]]
    (pred_file,) = sorted((run / "test").glob("*.tif"))
    with rasterio.open(pred_file) as pred_src:
        pred = pred_src.read(1)
        pred_valid = pred_src.read_masks(1) > 0
    return bands, valid, truth, roles, np.where(pred_valid, pred, -1), cfg.classes


def _scores(truth: np.ndarray, pred: np.ndarray, classes: list) -> dict:
    ids = [c.id for c in classes]
    index = {c: k for k, c in enumerate(ids)}
    rows = np.array([index[t] for t in truth.tolist()])
    cols = np.array([index[p] for p in pred.tolist()])
    cm = np.bincount(rows * len(ids) + cols, minlength=len(ids) ** 2).reshape(len(ids), len(ids))
    return summarize(cm, {c.id: c.name for c in classes}, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="existing training output folders of the config")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds to train without --runs")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    from sklearn.ensemble import RandomForestClassifier

    runs = args.runs
    if not runs:
        work = Path(tempfile.mkdtemp(prefix="nc-"))
        runs = []
        for seed in args.seeds:
            cfg = _config([f"optim.seed={seed}", f"name=nc_seed{seed}"])
            train(cfg, work / f"seed{seed}")
            runs.append(work / f"seed{seed}")
    results: dict[str, list[dict]] = {"unet": [], "random_forest": []}
    pixels = None
    for k, run in enumerate(runs):
        bands, valid, truth, roles, pred, classes = _read_scene(run)
        ids = np.array([c.id for c in classes])
        labelled = valid & np.isin(truth, ids)
        test = labelled & (roles == TEST) & (pred >= 0)
        train_px = labelled & (roles == TRAIN)
        results["unet"].append(_scores(truth[test].astype(int), pred[test].astype(int), classes))
        forest = RandomForestClassifier(n_estimators=args.trees, n_jobs=-1, random_state=k)
        forest.fit(bands[:, train_px].T, truth[train_px].astype(int))
        rf_pred = forest.predict(bands[:, test].T)
        results["random_forest"].append(_scores(truth[test].astype(int), rf_pred.astype(int), classes))
        pixels = (int(train_px.sum()), int(test.sum()))
    names = [c.name for c in classes]
    print(
        f"NC Landsat test set: {pixels[1]} px ({pixels[0]} training px), {len(runs)} run(s): "
        + ", ".join(map(str, runs))
    )
    print(f"{'class':<16}{'support':>9}{'RF IoU':>20}{'U-Net IoU':>20}")
    table: dict[str, dict] = {}
    for name in [*names, "mIoU", "pixel accuracy"]:
        row = {}
        for model, runs_scores in results.items():
            if name == "mIoU":
                values = [s["miou"] for s in runs_scores]
            elif name == "pixel accuracy":
                values = [s["pixel_accuracy"] for s in runs_scores]
            else:
                values = [s["per_class"].get(name, {}).get("iou") for s in runs_scores]  # absent: not scored
            values = [v for v in values if v is not None]
            row[model] = (float(np.mean(values)), float(np.min(values)), float(np.max(values))) if values else None
        support = results["unet"][0]["per_class"].get(name, {}).get("support", 0) if name in names else ""
        cells = [f"{r[0]:.3f} ({r[1]:.2f}-{r[2]:.2f})" if r else "-" for r in (row["random_forest"], row["unet"])]
        print(f"{name:<16}{support!s:>9}{cells[0]:>20}{cells[1]:>20}")
        table[name] = row
    if args.json:
        args.json.write_text(json.dumps({"runs": [str(r) for r in runs], "pixels": pixels, "table": table}, indent=2))


if __name__ == "__main__":
    main()
