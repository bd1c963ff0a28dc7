"""``geoseg demo``: synthesise an archive, train with Ray Train, predict with Ray actors, vectorize, estimate areas
from a sample, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import ray
from rich.console import Console
from rich.table import Table

from geoseg.areas.assess import assess
from geoseg.areas.sample import SampleDesign, sample
from geoseg.areas.sheet import fill_reference
from geoseg.bundle import load_spec
from geoseg.cluster import ray_session
from geoseg.evaluate import evaluate
from geoseg.inference.job import predict_archive
from geoseg.inference.manifest import write_json_atomic
from geoseg.inference.options import PredictOptions
from geoseg.metrics import summarize
from geoseg.quicklook import quicklook
from geoseg.synth import make_archive
from geoseg.training.config import load_config
from geoseg.training.data import split_scenes
from geoseg.training.loop import train
from geoseg.vector.job import VectorizeOptions, vectorize_raster

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def run_demo(
    workdir: str | Path,
    config: str | Path = DEMO_CONFIG,
    scenes: int = 4,
    size: int = 1024,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """The whole pipeline on a small synthetic archive; returns (and writes) ``report.json``."""
    console = console or Console(soft_wrap=True)
    workdir = Path(workdir).resolve()
    started = time.perf_counter()
    console.rule("[bold]1/6 synthesise")
    archive = make_archive(workdir / "synthetic", scenes=scenes, size=size, seed=0)
    console.print(
        f"{len(archive)} scenes of {size} x {size} px in EPSG:"
        f"{', '.join(sorted({str(s.epsg) for s in archive}))} -> {workdir / 'synthetic'}",
        markup=False,
    )
    cfg = load_config(config, [f"data.root={workdir}", *(overrides or [])])
    with ray_session():
        console.print(
            f"Ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs, {int(ray.cluster_resources().get('GPU', 0))} GPUs"
        )
        console.rule("[bold]2/6 train (Ray Train)")
        t0 = time.perf_counter()
        bundle = train(cfg, workdir / "train", console=console)
        train_seconds = time.perf_counter() - t0
        console.rule("[bold]3/6 predict (Ray actors)")
        options = PredictOptions()  # tiles, halo and blocks from the model's receptive field
        reports = predict_archive(
            bundle, [str(s.image) for s in archive], workdir / "predictions", options, console=console, in_process=False
        )
    console.rule("[bold]4/6 vectorize and export")
    spec = load_spec(bundle)
    held_out = {str(s.info.path) for s in split_scenes(cfg).val}
    vectors = workdir / "vectors"
    vectors.mkdir(exist_ok=True)
    scene_rows, total_cm = [], None
    for synth_scene, report in zip(archive, reports, strict=True):
        if report.status != "ok" or report.output is None:
            scene_rows.append(report.to_dict())
            continue
        outputs = [vectors / f"{report.scene}.{ext}" for ext in ("gpkg", "shp")]
        polygon_count = vectorize_raster(Path(report.output), outputs, VectorizeOptions(chunk=512), workers=1)
        metrics = evaluate(report.output, synth_scene.labels)
        cm = np.array(metrics["confusion_matrix"])
        total_cm = cm if total_cm is None else _add(total_cm, cm)
        picture = quicklook(synth_scene.image, report.output, spec.classes, workdir / f"{report.scene}_quicklook.png")
        scene_rows.append(
            report.to_dict()
            | {
                "split": "held out" if str(synth_scene.image) in held_out else "train",
                "polygons": polygon_count,
                "vector_outputs": [str(p) for p in outputs],
                "quicklook": str(picture),
                "miou": metrics["miou"],
                "iou": {k: v["iou"] for k, v in metrics["per_class"].items()},
            }
        )
    console.rule("[bold]5/6 areas with confidence intervals")
    names = {c.id: c.name for c in spec.classes}
    done = [(s, r) for s, r in zip(archive, reports, strict=True) if r.status == "ok" and r.output is not None]
    areas = _areas(workdir / "areas", *min(done, key=lambda d: str(d[0].image) not in held_out)) if done else None
    console.rule("[bold]6/6 report")
    overall = summarize(total_cm, names) if total_cm is not None else {"miou": None, "per_class": {}}
    report_json = {
        "workdir": str(workdir),
        "bundle": str(bundle),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "miou": overall["miou"],
        "pixel_accuracy": overall.get("pixel_accuracy"),
        "iou_per_class": {k: v["iou"] for k, v in overall["per_class"].items()},
        "validation": spec.metrics,
        "scenes": scene_rows,
        "areas": areas,
    }
    write_json_atomic(workdir / "report.json", report_json)
    _print_summary(console, report_json)
    return report_json


def _areas(folder: Path, scene: Any, report: Any) -> dict[str, Any]:
    """``sample`` the predicted map, label the sheet from the synthetic truth (standing in for an interpreter),
    ``assess`` it: error-adjusted areas with 95 % intervals, beside the map's areas and the true ones."""
    folder.mkdir(exist_ok=True)
    sheet = folder / f"{report.scene}_sheet.gpkg"
    assessment = folder / f"{report.scene}_assessment.json"
    for previous in (sheet, assessment):  # the demo's own products of an earlier run
        previous.unlink(missing_ok=True)
    sample(Path(report.output), sheet, SampleDesign(size=400, min_per_class=30, seed=0))
    fill_reference(sheet, scene.labels)
    result, _ = assess(sheet, assessment)
    with rasterio.open(report.output) as pred, rasterio.open(scene.labels) as truth:
        mapped = pred.read_masks(1) > 0
        true_pixels = np.bincount(truth.read(1)[mapped], minlength=256)
        pixel_m2 = abs(pred.transform.a * pred.transform.e)
    rows = {}
    for cid, row in result["classes"].items():
        rows[row["name"]] = {
            "mapped_ha": row["mapped_area_ha"],
            "estimated_ha": row["area_ha"],
            "ci95_ha": row["area_ci95_ha"],
            "true_ha": float(true_pixels[int(cid)] * pixel_m2 / 1e4),
        }
    return {
        "scene": report.scene,
        "sheet": str(sheet),
        "assessment": str(assessment),
        "classes": rows,
        "overall_accuracy": result["overall_accuracy"],
        "overall_ci95": result["overall_ci95"],
    }


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = max(len(a), len(b))
    out = np.zeros((size, size), dtype=np.int64)
    out[: len(a), : len(a)] += a
    out[: len(b), : len(b)] += b
    return out


def _print_summary(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="geoseg demo: prediction vs synthetic truth")
    for column in ("scene", "split", "tiles", "Mpx", "seconds", "mIoU", "polygons"):
        table.add_column(column, justify="left" if column in ("scene", "split") else "right")
    for row in report["scenes"]:
        table.add_row(
            row["scene"],
            row.get("split", "-"),
            str(row["tiles"]),
            f"{row['pixels'] / 1e6:.2f}",
            f"{row['seconds']:.1f}",
            f"{row.get('miou') or 0:.3f}",
            str(row.get("polygons", "-")),
        )
    console.print(table)
    console.print("IoU per class: " + ", ".join(f"{k} {v:.3f}" for k, v in report["iou_per_class"].items()))
    console.print(
        f"[bold]mIoU over all scenes: {report['miou']:.3f}[/]  (pixel accuracy "
        f"{report['pixel_accuracy']:.3f}); demo took {report['total_seconds']:.0f} s"
    )
    workdir = Path(report["workdir"])
    console.print(f"model bundle:   {report['bundle']}", markup=False)
    console.print(f"class rasters:  {workdir / 'predictions'}/*.tif (COG)", markup=False)
    console.print(f"polygons:       {workdir / 'vectors'}/*.gpkg, *.shp", markup=False)
    console.print(f"quicklooks:     {workdir}/*_quicklook.png", markup=False)
    if report.get("areas"):
        areas = report["areas"]
        table = Table(title=f"areas of {areas['scene']}: map vs sample-based estimate (400 labelled points) vs truth")
        for column in ("class", "mapped ha", "estimated ha", "+- 95 %", "true ha"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, row in areas["classes"].items():
            ci = "-" if row["ci95_ha"] is None else f"{row['ci95_ha']:.2f}"
            table.add_row(name, f"{row['mapped_ha']:.2f}", f"{row['estimated_ha']:.2f}", ci, f"{row['true_ha']:.2f}")
        console.print(table)
        console.print(f"sampling sheet: {areas['sheet']}  (geoseg sample; geoseg assess)", markup=False)
    console.print(f"report:         {workdir / 'report.json'}", markup=False)
