"""What a job reports: one :class:`SceneReport` per scene (report.json, the manifest) and the job summary."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from geoseg import __version__

STAGES = ("read", "model", "write", "vectorize")


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # finished by an earlier run of the same job
    EMPTY = "empty"  # finished, but its mask hid every pixel: its rasters hold only nodata
    PENDING = "pending"


#: Statuses of a scene whose outputs were published by the run that recorded it.
FINISHED = frozenset({Status.OK, Status.EMPTY})


@dataclass
class SceneReport:
    """What happened to one scene; serialised into report.json and the job manifest."""

    scene: str
    source: str
    status: Status = Status.PENDING
    output: str | None = None
    probabilities: str | None = None
    vectors: str | None = None
    sha256: str | None = None
    tiles: int = 0
    tiles_run: int = 0
    tiles_skipped_nodata: int = 0
    blocks: int = 0
    pixels: int = 0
    area_km2: float = 0.0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seam_pixels: int = 0
    seam_disagreement: float | None = None
    classes_found: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # Where and when, for ``geoseg mosaic``: the output grid (CRS, GDAL geotransform, size) and the source's
    # acquisition time (a STAC item's datetime; None for plain files). Older records have neither.
    grid: dict[str, Any] | None = None
    acquired: str | None = None
    # With a mask (clouds, shadows: geoseg.io.masks): the pixels it hid, and their share of the scene.
    masked_pixels: int | None = None
    masked_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: its deep copy was most of a 1000-scene manifest's cost.
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        return record | {k: dict(v) for k, v in record.items() if isinstance(v, dict)} | {"status": str(self.status)}

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> SceneReport:
        """A report read back from a manifest or report.json (unknown keys of other versions are ignored)."""
        known = {k: v for k, v in entry.items() if k in cls.__dataclass_fields__}
        return cls(**known | {"status": Status(entry.get("status", Status.PENDING))})


def job_report(
    reports: list[SceneReport],
    bundle_dir: Path,
    options: dict[str, Any],
    notes: list[str],
    seconds: float,
) -> dict[str, Any]:
    """report.json: the job summary (scenes run in this invocation) and every scene's entry."""
    ran = [r for r in reports if r.status in FINISHED]
    masked = [r for r in ran if r.masked_pixels is not None]
    megapixels = sum(r.pixels for r in ran) / 1e6
    area = sum(r.area_km2 for r in ran)
    stages = {k: round(sum(r.stage_seconds.get(k, 0.0) for r in ran), 3) for k in STAGES}
    seam_pixels = sum(r.seam_pixels for r in ran)
    seam_bad = sum(round((r.seam_disagreement or 0) * r.seam_pixels) for r in ran)
    return {
        "geoseg_version": __version__,
        "bundle": str(bundle_dir),
        "options": options,
        "notes": notes,
        "summary": {
            "scenes_ok": len(ran),
            "scenes_empty": sum(r.status == Status.EMPTY for r in reports),
            "scenes_failed": sum(r.status == Status.FAILED for r in reports),
            "scenes_skipped": sum(r.status == Status.SKIPPED for r in reports),
            "tiles_run": sum(r.tiles_run for r in ran),
            "tiles_skipped_nodata": sum(r.tiles_skipped_nodata for r in ran),
            "megapixels": round(megapixels, 3),
            "area_km2": round(area, 3),
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(megapixels / seconds, 4) if seconds and ran else None,
            "km2_per_hour": round(area / seconds * 3600, 1) if seconds and ran else None,
            "stage_seconds": stages,
            "seam_disagreement": round(seam_bad / seam_pixels, 6) if seam_pixels else None,
            "masked_share": (
                round(sum(r.masked_pixels or 0 for r in masked) / sum(r.pixels for r in masked), 6) if masked else None
            ),
        },
        "scenes": [r.to_dict() for r in reports],
    }


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The job summary: a table on a terminal, ``key: value`` lines in a log (no box drawing to wrap at 80
    columns). A run that found everything done says so instead of printing zero throughput."""
    s = report["summary"]
    rows = [
        (
            "scenes",
            f"{s['scenes_ok']} ok{f' (of which {e} empty: masked whole)' if (e := s.get('scenes_empty')) else ''}, "
            f"{s['scenes_failed']} failed, {s['scenes_skipped']} skipped (done before)",
        )
    ]
    if s["scenes_ok"]:
        rows += [
            ("tiles", f"{s['tiles_run']} run, {s['tiles_skipped_nodata']} skipped (all nodata)"),
            ("area", f"{s['megapixels']:.2f} Mpx, {s['area_km2']:.2f} km2 in {s['seconds']:.1f} s"),
            ("throughput", f"{s['megapixels_per_second'] or 0:.3f} Mpx/s, {s['km2_per_hour'] or 0:.1f} km2/h"),
            ("stage seconds", ", ".join(f"{k} {v:.1f}" for k, v in s["stage_seconds"].items())),
            ("seam disagreement", "-" if s["seam_disagreement"] is None else f"{s['seam_disagreement']:.4%}"),
        ]
        if s.get("masked_share") is not None:
            rows.append(("masked", f"{s['masked_share']:.2%} of the pixels (clouds, shadows: nodata in the outputs)"))
    elif s["scenes_skipped"]:
        done = [r for r in report["scenes"] if r["status"] == Status.SKIPPED]
        megapixels, area = sum(r["pixels"] for r in done) / 1e6, sum(r["area_km2"] for r in done)
        rows.append(("nothing to run", f"every scene was done before ({megapixels:.2f} Mpx, {area:.2f} km2)"))
    if console.is_terminal:
        table = Table(title="geoseg predict", show_header=False)
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)
    else:
        for key, value in rows:
            console.print(f"{key}: {value}", markup=False, highlight=False, soft_wrap=True)
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
