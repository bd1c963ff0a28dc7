"""What a mosaic is made of: the finished scenes of one or more ``geoseg predict`` jobs, read from their records.

A job folder is read, never written: ``manifest.json`` and, for a job that was killed or is still running, the
journal ``manifest.jsonl`` replayed over it (last entry wins, a torn line ignored), as the job itself would. Each
scene that finished (status ``ok``) becomes a :class:`Observation`: its class raster, its probability raster
if the job wrote one, its grid (recorded by predict; read from the raster's header for older records) and its
acquisition date (a STAC item's datetime; None for plain files).

Observations are ordered by acquisition date, then by the class raster's SHA-256 (recorded by predict): an order
that does not depend on the order of the jobs on the command line, on the scenes' names or on their folders,
so no mosaic byte does either (``latest`` and ``best`` take the last observation of that order on ties).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.transform import Affine, array_bounds

from geoseg.errors import GeoSegError
from geoseg.inference.manifest import JOURNAL, MANIFEST, ManifestEntry, journal_entries
from geoseg.inference.report import FINISHED, Status
from geoseg.io.styles import ClassStyle, class_table

EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class Observation:
    """One finished scene of a predict job, as a mosaic reads it."""

    job: Path
    scene: str
    classes: str  # the class raster (COG)
    probabilities: str | None
    crs: CRS
    transform: Affine
    width: int
    height: int
    acquired: date | None
    sha256: str

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene's own CRS."""
        return array_bounds(self.height, self.width, self.transform)

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def day(self) -> int:
        """Days since 1970-01-01 (the date band's value); 0 when the date is unknown."""
        return (self.acquired - EPOCH).days if self.acquired else 0

    @property
    def order(self) -> tuple[str, str]:
        return (self.acquired.isoformat() if self.acquired else "", self.sha256)


def parse_acquired(text: str | None) -> date | None:
    """A recorded acquisition time (ISO 8601, any offset) as its UTC calendar date."""
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (when.astimezone(UTC) if when.tzinfo else when).date()


def read_entries(folder: Path) -> dict[str, ManifestEntry]:
    """A predict job's scene records, read only: the manifest, then its journal replayed over it."""
    manifest, journal = folder / MANIFEST, folder / JOURNAL
    if not folder.is_dir():
        raise GeoSegError("is not a folder: a mosaic reads predict job folders", folder)
    if not manifest.is_file() and not journal.is_file():
        raise GeoSegError("is not a predict job folder (no manifest.json)", folder)
    entries: dict[str, ManifestEntry] = {}
    if manifest.is_file():
        try:
            stored = json.loads(manifest.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GeoSegError(f"is damaged ({exc}); rerun its predict job to repair it", manifest) from exc
        scenes = stored.get("scenes") if isinstance(stored, dict) else None
        if not isinstance(scenes, dict):
            raise GeoSegError("holds no scene records: not a predict job's manifest", manifest)
        for value in scenes.values():
            entry = ManifestEntry.from_json(value)
            if entry is not None:
                entries[entry.report.scene] = entry
    if journal.is_file():
        entries |= {entry.report.scene: entry for entry in journal_entries(journal)}
    return entries


def _observation(folder: Path, entry: ManifestEntry) -> Observation:
    report = entry.report
    output = report.output or ""
    if not os.path.isfile(output):
        raise GeoSegError(
            f"scene {report.scene}: its class raster {output} is missing (the manifest says it finished); "
            "rerun the predict job to remake it",
            folder / MANIFEST,
        )
    probabilities = report.probabilities
    if probabilities and not os.path.isfile(probabilities):
        raise GeoSegError(
            f"scene {report.scene}: its probability raster {probabilities} is missing; rerun the predict job",
            folder / MANIFEST,
        )
    try:
        acquired = parse_acquired(report.acquired)
    except ValueError as exc:
        raise GeoSegError(
            f"scene {report.scene}: acquisition time {report.acquired!r} is not ISO 8601", folder
        ) from exc
    grid = report.grid
    try:
        if grid:
            crs = CRS.from_user_input(grid["crs"])
            transform = Affine.from_gdal(*grid["transform"])
            width, height = int(grid["width"]), int(grid["height"])
        else:  # a record from before grids were recorded: the header says it
            with rasterio.open(output) as src:
                crs, transform, width, height = src.crs, src.transform, src.width, src.height
    except (KeyError, TypeError, ValueError, CRSError, RasterioIOError) as exc:
        raise GeoSegError(f"scene {report.scene}: its grid cannot be read ({exc})", output) from exc
    return Observation(
        job=folder,
        scene=report.scene,
        classes=output,
        probabilities=probabilities,
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        acquired=acquired,
        sha256=report.sha256 or "",
    )


def job_classes(folder: Path, observations: Sequence[Observation]) -> list[ClassStyle]:
    """The class table of a job's class rasters (the first one's: a job has one bundle)."""
    try:
        with rasterio.open(observations[0].classes) as src:
            classes = class_table(src)
    except RasterioIOError as exc:
        raise GeoSegError(f"cannot be read ({exc})", observations[0].classes) from exc
    if not classes:
        raise GeoSegError("has no class table (class_<id> tags): not a geoseg class raster", observations[0].classes)
    return classes


@dataclass(frozen=True)
class Archive:
    """Every finished scene of the jobs, in mosaic order, and their one class table."""

    observations: list[Observation]
    classes: list[ClassStyle]
    skipped: int  # scenes that did not finish (failed, or masked entirely), left out


def read_jobs(folders: Sequence[Path]) -> Archive:
    """The finished scenes of predict jobs; one-line errors for a folder that is no job, missing outputs, or
    jobs whose classes differ (a mosaic of two legends would be meaningless)."""
    observations: list[Observation] = []
    classes: list[ClassStyle] | None = None
    first: Path | None = None
    skipped = 0
    seen: set[str] = set()
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            continue  # one job named twice is one job
        seen.add(real)
        entries = read_entries(folder)
        finished = [e for e in entries.values() if e.report.status in FINISHED | {Status.SKIPPED} and e.report.output]
        skipped += len(entries) - len(finished)
        if not finished:
            raise GeoSegError("has no finished scene to mosaic", folder / MANIFEST)
        found = [_observation(folder, e) for e in finished]
        table = job_classes(folder, found)
        if classes is None:
            classes, first = table, folder
        elif table != classes:
            raise GeoSegError(
                f"its classes ({_legend(table)}) differ from those of {first} ({_legend(classes)}): "
                "a mosaic takes jobs of one class table",
                folder,
            )
        observations.extend(found)
    assert classes is not None
    observations.sort(key=lambda o: o.order)
    return Archive(observations, classes, skipped)


def _legend(classes: list[ClassStyle]) -> str:
    return ", ".join(f"{c.id}={c.name}" for c in classes)
