"""An archive prediction job: many scenes, one Ray actor pool, a report, and no lost work on bad scenes."""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from geoseg import __version__
from geoseg.bundle import load_bundle
from geoseg.cluster import ray_session
from geoseg.errors import GeoSegError
from geoseg.inference.distributed import RayExecutor
from geoseg.inference.scene import PredictOptions, SceneReport, predict_scene
from geoseg.io.raster import open_scene
from geoseg.io.writer import temp_sibling

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, globs, directories (their rasters) and ``.txt``/``.csv`` lists (one path per line, first column)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES))
        elif path.suffix.lower() in {".txt", ".csv"} and path.is_file():
            lines = [ln.split(",")[0].strip() for ln in path.read_text().splitlines()]
            paths.extend(Path(ln) for ln in lines if ln and not ln.startswith("#") and ln.lower() != "path")
        elif glob.has_magic(item):
            paths.extend(sorted(Path(p) for p in glob.glob(item, recursive=True)))
        else:
            paths.append(path)
    return list(dict.fromkeys(paths))


def output_name(path: Path, taken: set[str]) -> str:
    """A file name for the scene's output that stays inside the job folder and is unique in it."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".") or "scene"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return name


def write_json_atomic(path: Path, payload: object) -> None:
    staging = temp_sibling(path)
    staging.write_text(json.dumps(payload, indent=2))
    os.replace(staging, path)


def predict_archive(
    bundle_dir: Path,
    inputs: Iterable[str],
    out_dir: Path,
    options: PredictOptions,
    workers: int | None = None,
    ray_address: str | None = None,
    console: Console | None = None,
) -> list[SceneReport]:
    """Predict every input scene into ``out_dir/<scene>.tif`` and write ``out_dir/report.json``.

    A scene that fails (unreadable, no CRS, wrong band count, ...) is reported with a one-line reason and
    the job moves on to the next one.
    """
    console = console or Console(stderr=True)
    spec, model = load_bundle(bundle_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(inputs)
    if not paths:
        raise GeoSegError("no input scenes found", ", ".join(inputs))
    reports: list[SceneReport] = []
    taken: set[str] = set()
    started = time.perf_counter()
    with ray_session(ray_address):
        executor = RayExecutor(spec, model.state_dict(), options, workers)
        try:
            for path in paths:
                name = output_name(path, taken)
                report = SceneReport(scene=name, source=str(path))
                try:
                    scene = open_scene(path)
                    report = predict_scene(scene, spec, executor, out_dir / f"{name}.tif", options)
                    report.scene = name
                    console.print(
                        f"[green]ok[/] {path} -> {report.output} ({report.tiles} tiles, {report.seconds:.1f} s)"
                    )
                except GeoSegError as exc:
                    report.status, report.error = "failed", str(exc)
                    console.print(f"[red]failed[/] {exc}")
                except Exception as exc:  # one bad scene must not lose the others' work
                    cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    report.status, report.error = "failed", f"{path}: {cause}"
                    console.print(f"[red]failed[/] {report.error}")
                reports.append(report)
        finally:
            executor.shutdown()
    write_json_atomic(
        out_dir / "report.json", job_report(reports, bundle_dir, options, workers, time.perf_counter() - started)
    )
    return reports


def job_report(
    reports: list[SceneReport], bundle_dir: Path, options: PredictOptions, workers: int | None, seconds: float
) -> dict[str, object]:
    ok = [r for r in reports if r.status == "ok"]
    megapixels = sum(r.pixels for r in ok) / 1e6
    return {
        "geoseg_version": __version__,
        "bundle": str(bundle_dir),
        "options": vars(options) | {"workers": workers},
        "summary": {
            "scenes_ok": len(ok),
            "scenes_failed": len(reports) - len(ok),
            "tiles_run": sum(r.tiles_run for r in ok),
            "tiles_skipped_nodata": sum(r.tiles_skipped_nodata for r in ok),
            "megapixels": round(megapixels, 3),
            "area_km2": round(sum(r.area_km2 for r in ok), 3),
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(megapixels / seconds, 4) if seconds else None,
        },
        "scenes": [r.to_dict() for r in reports],
    }
