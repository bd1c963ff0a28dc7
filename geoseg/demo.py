"""``geoseg demo``: synthesise an archive, train with Ray Train, predict with Ray actors, vectorize, estimate areas
from a sample, then map a place from a cloudy archive across two UTM zones (masks, mosaic), report."""

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
from geoseg.io.maskrules import MaskOptions, MaskRule
from geoseg.metrics import summarize
from geoseg.mosaic.job import MosaicOptions, mosaic, parse_period
from geoseg.quicklook import mosaic_figure, quicklook
from geoseg.synth import make_archive
from geoseg.synth_series import SynthSeries, make_series, truth_on_grid
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
    console.rule("[bold]1/7 synthesise")
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
        console.rule("[bold]2/7 train (Ray Train)")
        t0 = time.perf_counter()
        bundle = train(cfg, workdir / "train", console=console)
        train_seconds = time.perf_counter() - t0
        console.rule("[bold]3/7 predict (Ray actors)")
        options = PredictOptions()  # tiles, halo and blocks from the model's receptive field
        reports = predict_archive(
            bundle, [str(s.image) for s in archive], workdir / "predictions", options, console=console, in_process=False
        )
    console.rule("[bold]4/7 vectorize and export")
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
    console.rule("[bold]5/7 areas with confidence intervals")
    names = {c.id: c.name for c in spec.classes}
    done = [(s, r) for s, r in zip(archive, reports, strict=True) if r.status == "ok" and r.output is not None]
    areas = _areas(workdir / "areas", *min(done, key=lambda d: str(d[0].image) not in held_out)) if done else None
    console.rule("[bold]6/7 a map of a place: cloudy scenes across two UTM zones, masked, one mosaic")
    place = _map_of_a_place(workdir, bundle, max(192, size // 2), console)
    console.rule("[bold]7/7 report")
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
        "place": place,
    }
    write_json_atomic(workdir / "report.json", report_json)
    _print_summary(console, report_json)
    return report_json


def _map_of_a_place(workdir: Path, bundle: Path, size: int, console: Console) -> dict[str, Any]:
    """An archive of 6 cloudy acquisitions of one place in UTM zones 32N and 33N (``geoseg synth --series``),
    predicted twice (with the SCL mask, and without: what a user without masks gets), each job mosaicked for
    2024 onto one grid, and every product scored against the truth."""
    series = make_series(workdir / "archive", scenes=6, size=size, seed=0)
    mask = MaskOptions(MaskRule.parse("scl"), asset="SCL", buffer_m=4.0)
    results: dict[str, Any] = {"catalog": str(series.catalog), "truth": str(series.truth)}
    for label, masks in (("masked", mask), ("unmasked", None)):
        job = workdir / f"archive_{label}"
        reports = predict_archive(
            bundle, [str(series.catalog)], job, PredictOptions(probabilities=True, mask=masks), console=console
        )
        options = MosaicOptions(
            period=parse_period("2024"), vectors=VectorizeOptions(fmt="gpkg") if masks is not None else None
        )
        summary = mosaic([job], workdir / f"mosaic_{label}", options, console)
        results[label] = {
            "job": str(job),
            "mosaic": str(workdir / f"mosaic_{label}" / summary.outputs["classes"]),
            "scenes": _scene_scores(series, reports),
        } | _mosaic_score(series, workdir / f"mosaic_{label}")
    masked = results["masked"]
    results["figure"] = str(
        mosaic_figure(
            masked["mosaic"],
            Path(masked["mosaic"]).with_name("mosaic_stats.vrt"),
            results["unmasked"]["mosaic"],
            series.truth,
            load_spec(bundle).classes,
            workdir / "mosaic.png",
        )
    )
    return results


def _scene_scores(series: SynthSeries, reports: list[Any]) -> list[dict[str, Any]]:
    """Each scene's accuracy over the ground it maps, and the share of its ground it maps."""
    rows = []
    truth_files = {s.id: s for s in series.scenes}
    for report in reports:
        if report.output is None:
            continue
        scene = truth_files[report.scene]
        with rasterio.open(report.output) as pred_src, rasterio.open(scene.labels) as truth_src:
            pred, truth = pred_src.read(1), truth_src.read(1)
            mapped, ground = pred_src.read_masks(1) > 0, truth_src.read_masks(1) > 0
        scored = mapped & ground
        rows.append(
            {
                "scene": report.scene,
                "acquired": scene.acquired.date().isoformat(),
                "epsg": scene.epsg,
                "clouds": round(scene.cloud_share, 4),
                "mapped_share": round(float(scored.sum() / ground.sum()), 4),
                "accuracy": round(float((pred[scored] == truth[scored]).mean()), 4) if scored.any() else None,
            }
        )
    return rows


def _mosaic_score(series: SynthSeries, folder: Path) -> dict[str, Any]:
    """The mosaic against the truth painted on its grid: accuracy and mIoU over the pixels it maps, and the
    share of its grid it maps."""
    with rasterio.open(folder / "mosaic.vrt") as src:
        pred, mapped = src.read(1), src.read_masks(1) > 0
        truth = truth_on_grid(series.truth, src.crs, src.transform, src.width, src.height)
        crs = src.crs.to_string()
    with rasterio.open(folder / "mosaic_stats.vrt") as stats:
        count = stats.read(1)
    cm = np.zeros((256, 256), dtype=np.int64)
    np.add.at(cm, (truth[mapped].astype(int), pred[mapped].astype(int)), 1)
    scores = summarize(cm)
    return {
        "crs": crs,
        "mapped_share": round(float(mapped.mean()), 4),
        "accuracy": round(float(scores["pixel_accuracy"]), 4),
        "miou": round(float(scores["miou"]), 4),
        "mean_observations": round(float(count[mapped].mean()), 2),
    }


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
    if report.get("place"):
        _print_place(console, report["place"])
    console.print(f"report:         {workdir / 'report.json'}", markup=False)


def _print_place(console: Console, place: dict[str, Any]) -> None:
    masked, unmasked = place["masked"], place["unmasked"]
    table = Table(title="a map of a place: 6 cloudy acquisitions, zones 32N/33N, vs the truth (accuracy where mapped)")
    for column in ("product", "date", "EPSG", "clouds", "mapped", "accuracy masked", "accuracy unmasked"):
        table.add_column(column, justify="left" if column in ("product", "date") else "right", no_wrap=True)
    plain = {row["scene"]: row for row in unmasked["scenes"]}
    for row in masked["scenes"]:
        other = plain.get(row["scene"], {})
        table.add_row(
            row["scene"],
            row["acquired"],
            str(row["epsg"]),
            f"{row['clouds']:.0%}",
            f"{row['mapped_share']:.0%}",
            "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}",
            "-" if other.get("accuracy") is None else f"{other['accuracy']:.3f}",
        )
    table.add_row(
        "mosaic (mean)",
        "2024",
        masked["crs"].removeprefix("EPSG:"),
        "-",
        f"{masked['mapped_share']:.0%}",
        f"{masked['accuracy']:.3f}",
        f"{unmasked['accuracy']:.3f}",
    )
    console.print(table)
    console.print(
        f"mosaic mIoU {masked['miou']:.3f} with masks, {unmasked['miou']:.3f} without; "
        f"{masked['mean_observations']:.1f} clear observations per pixel on average",
        markup=False,
    )
    console.print(f"mosaic:         {masked['mosaic']} (+ mosaic_stats.vrt, polygons)", markup=False)
    console.print(f"figure:         {place['figure']}", markup=False)
