"""``geoseg assess``: a labelled sheet -> accuracies and error-adjusted areas with 95 % confidence intervals.

The labelled rows of the sheet's ``samples`` layer are cross-tabulated (map class x reference class) and fed
to the stratified estimator (:mod:`geoseg.areas.estimator`) with the strata the sheet carries. Rows not yet
labelled are skipped and counted. Every ``*_ci95`` value is the half-width of the interval (estimate +- it).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoseg import __version__
from geoseg.areas.estimator import ClassEstimate, Estimate, estimate
from geoseg.areas.sheet import SAMPLES, read_sheet
from geoseg.errors import GeoSegError
from geoseg.io.guard import refuse_overwrite
from geoseg.io.writer import write_text_atomic

METHOD = "stratified estimator, Olofsson et al. (2014) Remote Sensing of Environment 148: 42-57"


def matrices_path(out: Path) -> Path:
    """The CSV of both error matrices, beside the JSON."""
    return out.with_name(f"{out.stem}_matrices.csv")


def _owned(out: Path) -> list[Path]:
    """``out`` and its CSV when ``out`` is an assessment this command wrote (so a rerun may replace them)."""
    try:
        if json.loads(out.read_text()).get("method") == METHOD:
            return [out, matrices_path(out)]
    except (OSError, ValueError, AttributeError):
        pass
    return []


def assess(sheet_path: Path, out: Path | None) -> tuple[dict[str, Any], list[str]]:
    """The assessment of a labelled sheet (written to ``out`` and its CSV when given) and its warnings."""
    if out is not None:
        if out.is_dir():
            raise GeoSegError("is a folder; --out takes a file name", out)
        refuse_overwrite([out, matrices_path(out)], [sheet_path], _owned(out))
    sheet = read_sheet(sheet_path)
    samples = sheet.samples
    labels = samples["reference_class"]
    labelled = samples[labels.notna()]
    unlabelled = int(len(samples) - len(labelled))
    if not len(labelled):
        raise GeoSegError(f"no labelled sample: fill in reference_class in its '{SAMPLES}' layer", sheet_path)
    reference = _ids(labelled["reference_class"], sheet_path, "reference_class")
    mapped = _ids(labelled["map_class"], sheet_path, "map_class")
    unknown = sorted(set(reference.tolist()) - set(sheet.classes))
    if unknown:
        raise GeoSegError(
            f"reference_class {unknown[0]} is not one of the sheet's classes ({sorted(sheet.classes)})", sheet_path
        )
    strata_ids = {s.id for s in sheet.strata}
    strays = sorted(set(mapped.tolist()) - strata_ids)
    if strays:
        raise GeoSegError(f"map_class {strays[0]} is not one of the sheet's strata ({sorted(strata_ids)})", sheet_path)
    ids = list(sheet.classes)
    index = {c: k for k, c in enumerate(ids)}
    counts = np.zeros((len(ids), len(ids)), dtype=np.int64)
    np.add.at(counts, ([index[m] for m in mapped.tolist()], [index[r] for r in reference.tolist()]), 1)
    per_stratum = {s.id: int(counts[index[s.id]].sum()) for s in sheet.strata}
    empty = [s for s in sheet.strata if per_stratum[s.id] == 0]
    if empty:
        named = ", ".join(f"{s.id} ({s.name})" for s in empty)
        raise GeoSegError(f"no labelled sample in the strata {named}: each stratum needs samples", sheet_path)
    result = estimate(sheet.strata, sheet.classes, counts)
    warnings = [
        f"stratum {cid} ({sheet.classes[cid]}) has {per_stratum[cid]} labelled sample: it has no variance, so the "
        "standard errors it enters are null"
        for cid in result.no_variance
    ]
    report = _report(result, sheet_path, len(labelled), unlabelled, warnings)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(matrices_path(out), matrices_csv(result))
            write_text_atomic(out, json.dumps(report, indent=2))
        except OSError as exc:
            raise GeoSegError(f"cannot write the assessment ({exc.strerror or exc})", out) from exc
    return report, warnings


def _ids(values: pd.Series, path: Path, field: str) -> np.ndarray:
    """Whole-number class ids of a sheet field (a typed-in 2.5 or 'forest' is refused, not rounded)."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round()) | (numbers < 0)
    if bad.any():
        raise GeoSegError(f"{field} holds {values[bad].iloc[0]!r}, not a class id", path)
    return numbers.to_numpy(dtype=np.int64)


def _report(result: Estimate, sheet: Path, labelled: int, unlabelled: int, warnings: list[str]) -> dict[str, Any]:
    classes = {}
    for c in result.classes:
        classes[str(c.id)] = {
            "name": c.name,
            "n": c.n,
            "reference_n": c.reference_n,
            "users_accuracy": c.users_accuracy,
            "users_se": c.users_se,
            "users_ci95": ClassEstimate.ci95(c.users_se),
            "producers_accuracy": c.producers_accuracy,
            "producers_se": c.producers_se,
            "producers_ci95": ClassEstimate.ci95(c.producers_se),
            "mapped_area_m2": c.mapped_area_m2,
            "area_m2": c.area_m2,
            "area_se_m2": c.area_se_m2,
            "area_ci95_m2": ClassEstimate.ci95(c.area_se_m2),
            "area_minus_mapped_m2": c.area_m2 - c.mapped_area_m2,
            "area_ha": c.area_m2 / 1e4,
            "area_ci95_ha": None if c.area_se_m2 is None else ClassEstimate.ci95(c.area_se_m2 / 1e4),
            "mapped_area_ha": c.mapped_area_m2 / 1e4,
        }
    return {
        "geoseg_version": __version__,
        "method": METHOD,
        "sheet": str(sheet),
        "samples_labelled": labelled,
        "samples_unlabelled": unlabelled,
        "total_area_m2": result.total_area_m2,
        "overall_accuracy": result.overall_accuracy,
        "overall_se": result.overall_se,
        "overall_ci95": ClassEstimate.ci95(result.overall_se),
        "classes": classes,
        "error_matrix": {
            "rows": "map class",
            "columns": "reference class",
            "class_ids": result.class_ids,
            "counts": result.counts.tolist(),
            "area_proportions": result.proportions.tolist(),
        },
        "warnings": warnings,
    }


def matrices_csv(result: Estimate) -> str:
    """Both error matrices (rows: map class, columns: reference class) with their totals."""
    names = [c.name for c in result.classes]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for title, matrix, fmt in (
        ("sample counts", result.counts, "{:d}"),
        ("estimated area proportions", result.proportions, "{:.6f}"),
    ):
        writer.writerow([f"{title}: map \\ reference", *names, "total"])
        for name, row in zip(names, matrix, strict=True):
            writer.writerow([name, *(fmt.format(v) for v in row.tolist()), fmt.format(row.sum().item())])
        writer.writerow(
            ["total", *(fmt.format(v) for v in matrix.sum(axis=0).tolist()), fmt.format(matrix.sum().item())]
        )
        writer.writerow([])
    return buffer.getvalue()


def table(report: dict[str, Any]) -> str:
    """The assessment as a console table: accuracies, then mapped and estimated areas (ha) with their +- 95 %."""

    def number(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    lines = [
        f"{'class':<22}{'n':>6}{'user':>8}{'+-':>7}{'producer':>10}{'+-':>7}"
        f"{'mapped ha':>14}{'area ha':>14}{'+- ha':>12}"
    ]
    for row in report["classes"].values():
        lines.append(
            f"{row['name'][:21]:<22}{row['n']:>6}{number(row['users_accuracy'], 8, 3)}{number(row['users_ci95'], 7, 3)}"
            f"{number(row['producers_accuracy'], 10, 3)}{number(row['producers_ci95'], 7, 3)}"
            f"{number(row['mapped_area_ha'], 14, 1)}{number(row['area_ha'], 14, 1)}{number(row['area_ci95_ha'], 12, 1)}"
        )
    lines.append(
        f"overall accuracy {number(report['overall_accuracy'], 0, 3)} +- {number(report['overall_ci95'], 0, 3)}"
        f"  ({report['samples_labelled']} labelled samples, {report['samples_unlabelled']} unlabelled skipped)"
    )
    return "\n".join(lines)
