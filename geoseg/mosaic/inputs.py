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
from geoseg.inference.manifest import JOURNAL, MANIFEST, ManifestEntry, parse_journal
from geoseg.inference.report import FINISHED, Status
from geoseg.io import objectstore
from geoseg.io.objectstore import S3Url, is_s3
from geoseg.io.styles import ClassStyle, class_table

EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class Observation:
    """One finished scene of a predict job, as a mosaic reads it."""

    job: str  # the job folder, or its s3:// prefix
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


JobRef = Path | str  # a local job folder, or a job's bucket prefix s3://bucket/prefix/


def _job_file(folder: JobRef, name: str) -> bytes | None:
    """A file of a job (local or in its bucket), None when it has none."""
    if isinstance(folder, str) and is_s3(folder):
        url = S3Url.parse(folder.rstrip("/") + "/").child(name)
        return objectstore.read_bytes(url) if objectstore.size(url) is not None else None
    path = Path(folder) / name
    return path.read_bytes() if path.is_file() else None


def read_entries(folder: JobRef) -> dict[str, ManifestEntry]:
    """A predict job's scene records, read only: the manifest, then its journal replayed over it. ``folder`` is
    a job folder or the ``s3://`` prefix a job published to."""
    remote = isinstance(folder, str) and is_s3(folder)
    if not remote and not Path(folder).is_dir():
        raise GeoSegError("is not a folder: a mosaic reads predict job folders", folder)
    manifest, journal = _job_file(folder, MANIFEST), _job_file(folder, JOURNAL)
    if manifest is None and journal is None:
        raise GeoSegError(f"is not a predict job {'prefix' if remote else 'folder'} (no {MANIFEST})", folder)
    entries: dict[str, ManifestEntry] = {}
    where = f"{str(folder).rstrip('/')}/{MANIFEST}"
    if manifest is not None:
        try:
            stored = json.loads(manifest.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GeoSegError(f"is damaged ({exc}); rerun its predict job to repair it", where) from exc
        scenes = stored.get("scenes") if isinstance(stored, dict) else None
        if not isinstance(scenes, dict):
            raise GeoSegError("holds no scene records: not a predict job's manifest", where)
        for value in scenes.values():
            entry = ManifestEntry.from_json(value)
            if entry is not None:
                entries[entry.report.scene] = entry
    if journal is not None:
        entries |= {entry.report.scene: entry for entry in parse_journal(journal)}
    return entries


def _readable(output: str) -> str | None:
    """A recorded product as GDAL reads it (``s3://`` as ``/vsis3/``), None when it is gone."""
    if is_s3(output):
        url = S3Url.parse(output)
        return url.gdal if objectstore.size(url) is not None else None
    return output if os.path.isfile(output) else None


def _observation(folder: JobRef, entry: ManifestEntry) -> Observation:
    report = entry.report
    where = f"{str(folder).rstrip('/')}/{MANIFEST}"
    output = _readable(report.output or "")
    if output is None:
        raise GeoSegError(
            f"scene {report.scene}: its class raster {report.output} is missing (the manifest says it finished); "
            "rerun the predict job to remake it",
            where,
        )
    probabilities = _readable(report.probabilities) if report.probabilities else None
    if report.probabilities and probabilities is None:
        raise GeoSegError(
            f"scene {report.scene}: its probability raster {report.probabilities} is missing; rerun the predict job",
            where,
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
        job=str(folder),
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


def job_classes(folder: JobRef, observations: Sequence[Observation]) -> list[ClassStyle]:
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


def read_jobs(folders: Sequence[JobRef]) -> Archive:
    """The finished scenes of predict jobs; one-line errors for a folder that is no job, missing outputs, or
    jobs whose classes differ (a mosaic of two legends would be meaningless)."""
    observations: list[Observation] = []
    classes: list[ClassStyle] | None = None
    first: JobRef | None = None
    skipped = 0
    seen: set[str] = set()
    for folder in folders:
        real = str(folder).rstrip("/") if is_s3(str(folder)) else os.path.realpath(folder)
        if real in seen:
            continue  # one job named twice is one job
        seen.add(real)
        entries = read_entries(folder)
        finished = [e for e in entries.values() if e.report.status in FINISHED | {Status.SKIPPED} and e.report.output]
        skipped += len(entries) - len(finished)
        if not finished:
            raise GeoSegError("has no finished scene to mosaic", f"{str(folder).rstrip('/')}/{MANIFEST}")
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
