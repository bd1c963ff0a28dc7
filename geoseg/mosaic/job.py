"""``geoseg mosaic``: finished predict jobs -> one map of a place and a period, tile by tile, resumable.

Why per output tile: a tile is the unit that bounds memory (a tile's arrays, whatever the archive's size), that
parallelises (tiles share nothing; each reads only the windows of the scenes whose footprints touch it) and
that resumes. The mosaic's record ``mosaic.json`` keeps, per tile, a key of everything its pixels depend on:
the grid, the method, the period, the AOI, and each contributing scene's class raster (its SHA-256, recorded by
predict), date and probabilities. A rerun skips tiles whose key and files are unchanged; a predict job that
gained or redid scenes changes the keys of the tiles those scenes touch, and only those are redone.

Products in the output folder: ``tiles/<tile>.tif`` (classes, a COG with the bundle's colours and class names)
and ``tiles/<tile>_stats.tif`` (count, confidence, agreement, date: see :mod:`geoseg.mosaic.compose`), a VRT
over each (``mosaic.vrt`` with category names and a QGIS style, ``mosaic_stats.vrt``), with ``cog`` one COG
``mosaic.tif`` too, with ``vectors`` polygons ``mosaic.<format>``. Every file is written under a temporary
name and renamed; none replaces a job's input or a file the mosaic did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from rich.console import Console

from geoseg import __version__
from geoseg.errors import GeoSegError
from geoseg.inference.manifest import file_size, write_json_atomic
from geoseg.inference.outputs import remove_stale_partials
from geoseg.io.guard import refuse_file_as_folder, refuse_overwrite
from geoseg.io.joblock import job_lock
from geoseg.io.objectstore import is_s3
from geoseg.io.styles import ClassStyle
from geoseg.mosaic.compose import METHODS, NEEDS_PROBABILITIES, Method
from geoseg.mosaic.grid import Bounds, Tile, default_crs, footprint, intersects, make_grid, parse_crs
from geoseg.mosaic.inputs import Archive, JobRef, Observation, read_jobs
from geoseg.mosaic.products import (
    CLASSES_VRT,
    COG,
    STATS_VRT,
    TILES,
    TileRecord,
    TileWork,
    publish_single_cog,
    run_tile,
    tile_files,
    write_vrts,
)
from geoseg.progress import meter
from geoseg.vector.polygonize import VectorizeOptions

RECORD = "mosaic.json"
STAC = "stac"  # the mosaic's STAC Collection (--stac-items)
#: Below this many output megapixels (and with no cluster or workers named) tiles run in this process.
SMALL_MOSAIC_MPX = 64.0


@dataclass(frozen=True)
class MosaicOptions:
    """What ``geoseg mosaic`` makes; ``None`` means "from the archive" (see :mod:`geoseg.mosaic.grid`)."""

    method: Method | None = None  # default: mean when every job wrote probabilities, else mode
    crs: str | None = None
    resolution: float | None = None
    bounds: Bounds | None = None  # in the output CRS
    lonlat_bounds: Bounds | None = None
    aoi: Path | None = None
    period: tuple[date, date] | None = None
    undated: bool = False  # take scenes without a date in the period too
    tile: int = 2048
    cog: bool = False
    vectors: VectorizeOptions | None = None
    workers: int | None = None
    ray_address: str | None = None
    in_process: bool | None = None
    stac_items: bool = False  # also stac/collection.json with one Item per tile


def parse_period(text: str) -> tuple[date, date]:
    """``START/END`` as ISO dates (``2024-01-01/2024-12-31``, both included); a year ``2024`` is that year."""
    try:
        if "/" not in text and text.strip().isdigit():
            year = int(text)
            return date(year, 1, 1), date(year, 12, 31)
        start, end = (date.fromisoformat(part.strip()[:10]) for part in text.split("/"))
    except ValueError as exc:
        raise GeoSegError(f"--period {text!r}: give START/END as ISO dates (2024-01-01/2024-12-31) or a year") from exc
    if end < start:
        raise GeoSegError(f"--period {text!r} ends before it starts")
    return start, end


def parse_bounds(text: str, option: str = "--bounds") -> Bounds:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not (values[2] > values[0] and values[3] > values[1]):
        raise GeoSegError(f"{option} {text!r}: give W,S,E,N with W < E and S < N")
    return values  # type: ignore[return-value,unused-ignore]


@dataclass
class MosaicSummary:
    tiles_run: int = 0
    tiles_skipped: int = 0
    tiles_empty: int = 0
    observations: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    method: str = ""
    seconds: float = 0.0


def _select(archive: Archive, options: MosaicOptions) -> list[Observation]:
    """The observations inside the period (undated ones only when asked)."""
    if options.period is None:
        return list(archive.observations)
    start, end = options.period
    kept = [
        o
        for o in archive.observations
        if (o.acquired is None and options.undated) or (o.acquired and start <= o.acquired <= end)
    ]
    if not kept:
        dated = sorted(o.acquired for o in archive.observations if o.acquired)
        span = f"dated {dated[0]} to {dated[-1]}" if dated else "none of them dated (--undated takes those)"
        raise GeoSegError(
            f"--period {start}/{end} selects none of the {len(archive.observations)} finished scenes ({span})"
        )
    return kept


def _method(observations: list[Observation], method: Method | None) -> Method:
    with_probabilities = all(o.probabilities for o in observations)
    chosen: Method = method or ("mean" if with_probabilities else "mode")
    if chosen not in METHODS:
        raise GeoSegError(f"--method {chosen!r}: one of {', '.join(METHODS)}")
    if chosen in NEEDS_PROBABILITIES and not with_probabilities:
        bare = next(o for o in observations if not o.probabilities)
        raise GeoSegError(
            f"--method {chosen} needs probabilities, and this job wrote none (predict it with --probabilities, "
            "or use --method mode or latest)",
            bare.job,
        )
    return chosen


def _aoi(path: Path, crs: Any) -> Any:
    """The AOI's polygons in the output CRS as one geometry."""
    from geoseg.io.vectors import read_polygons

    frame = read_polygons(path, crs)
    polygons = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polygons.empty:
        raise GeoSegError("holds no polygon: an AOI is polygons", path)
    return polygons.geometry.union_all()


def _guard(out_dir: Path, jobs: Sequence[JobRef]) -> None:
    """The output folder is none of the jobs, inside none, and holds none: a mosaic never writes in a job."""
    real = os.path.realpath(out_dir) + os.sep
    for job in jobs:
        if is_s3(str(job)):
            continue  # a bucket prefix: the mosaic's folder is local
        job_real = os.path.realpath(job) + os.sep
        if real.startswith(job_real) or job_real.startswith(real):
            raise GeoSegError(
                f"the output folder and the predict job {job} hold one another; choose another --output", out_dir
            )


def tile_key(tile: Tile, observations: Sequence[Observation], settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(tile.name.encode())
    for o in observations:
        digest.update(f"{o.sha256}:{o.order[0]}:{bool(o.probabilities)}:{o.classes}".encode())
    return digest.hexdigest()[:20]


def read_record(out_dir: Path) -> dict[str, Any]:
    """The mosaic's record of an earlier run (empty when there is none or it is damaged: tiles are redone)."""
    path = out_dir / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("tiles"), dict) else {}


def owned_files(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """Files an earlier run of this mosaic wrote (its record names them): the only ones it may replace."""
    files = [out_dir / RECORD]
    for name in record.get("outputs", {}).values():
        files.append(out_dir / name)
    for name, entry in record.get("tiles", {}).items():
        if isinstance(entry, dict) and entry.get("status") == "ok":
            files += tile_files(out_dir, name)
    return files


def _tile_done(entry: Any, key: str, out_dir: Path, name: str) -> bool:
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    if entry.get("status") == "empty":
        return True
    classes, stats = tile_files(out_dir, name)
    return (
        entry.get("status") == "ok"
        and file_size(classes) == entry.get("classes_bytes")
        and file_size(stats) == entry.get("stats_bytes")
    )


def _tile_threads(works: list[TileWork], workers: int | None) -> int:
    """Tiles composed at once in this process: one per CPU (or ``--workers``), as many as a quarter of the
    memory holds (a tile's arrays: about 16 bytes per pixel and class, measured by the arrays compose keeps)."""
    if len(works) <= 1:
        return 1
    pixels = max(w.tile.shape[0] * w.tile.shape[1] for w in works)
    per_tile = pixels * (16 * len(works[0].classes) + 64)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(workers or os.cpu_count() or 1, len(works), memory // 4 // per_tile))


def _map_tiles(works: list[TileWork], options: MosaicOptions, megapixels: float) -> Iterator[TileRecord]:
    """Run the tiles: in this process for a small mosaic on no cluster, else as Ray tasks (as predict decides).
    The costliest tiles (most scene pixels to read) go first, so no worker is left with a large tile at the
    end while the others idle."""
    works = sorted(works, key=lambda w: -len(w.observations) * w.tile.shape[0] * w.tile.shape[1])
    forced = options.in_process
    on_ray = (
        (not forced)
        if forced is not None
        else bool(
            options.ray_address
            or os.environ.get("RAY_ADDRESS")
            or (options.workers or 1) > 1
            or megapixels > SMALL_MOSAIC_MPX
        )
    )
    if not on_ray or len(works) <= 1:
        threads = _tile_threads(works, options.workers)
        if threads <= 1:
            yield from map(run_tile, works)
            return
        # numpy's gathers and arithmetic and GDAL's reads and COG writes release the GIL: tiles run side by side
        with ThreadPoolExecutor(threads, thread_name_prefix="geoseg-mosaic") as pool:
            yield from pool.map(run_tile, works)
        return
    import ray

    from geoseg.cluster import ray_session

    with ray_session(options.ray_address, num_cpus=options.workers):
        remote = ray.remote(num_cpus=1, max_retries=2)(run_tile)
        pending = [remote.remote(w) for w in works]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


def mosaic(
    jobs: Sequence[JobRef], out_dir: Path, options: MosaicOptions, console: Console | None = None
) -> MosaicSummary:
    """Make (or bring up to date) the mosaic of ``jobs`` in ``out_dir``; see the module docstring."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    refuse_file_as_folder(out_dir)
    archive = read_jobs(jobs)
    _guard(out_dir, jobs)
    observations = _select(archive, options)
    method = _method(observations, options.method)
    crs = parse_crs(options.crs) if options.crs else None
    aoi = None
    bounds = options.bounds
    if crs is None and (options.aoi or options.lonlat_bounds or bounds):
        crs = default_crs(observations)
    if options.lonlat_bounds is not None:
        from rasterio.warp import transform_bounds

        bounds = transform_bounds("EPSG:4326", crs, *options.lonlat_bounds, densify_pts=21)
    if options.aoi is not None:
        aoi = _aoi(options.aoi, crs)
        if bounds is None:
            bounds = tuple(aoi.bounds)
    grid = make_grid(observations, crs, options.resolution, bounds, options.tile)
    feet = [(o, footprint(o, grid.crs)) for o in observations]
    if not any(intersects(f, grid.bounds) for _, f in feet) or (
        aoi is not None and not any(intersects(f, aoi.bounds) for _, f in feet)
    ):
        where = f"the AOI {options.aoi}" if aoi is not None else "the bounds"
        raise GeoSegError(f"{where} cover(s) none of the {len(observations)} scenes")
    settings = {
        "grid": grid.describe(),
        "method": method,
        "period": [str(d) for d in options.period] if options.period else None,
        "undated": options.undated,
        "aoi": hashlib.sha256(aoi.wkb).hexdigest() if aoi is not None else None,
    }
    record = read_record(out_dir)
    out_dir = out_dir.absolute()
    finals = [out_dir / CLASSES_VRT, out_dir / STATS_VRT] + ([out_dir / COG] if options.cog else [])
    inputs = [Path(o.classes) for o in observations] + [Path(o.probabilities) for o in observations if o.probabilities]
    tiles = list(grid.tiles())
    tile_paths = [path for t in tiles for path in tile_files(out_dir, t.name)]
    refuse_overwrite([*finals, out_dir / RECORD, *tile_paths], inputs, owned_files(record, out_dir))
    if options.stac_items:
        _check_stac_folder(out_dir, record)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TILES).mkdir(exist_ok=True)
    summary = MosaicSummary(observations=len(observations), method=method)
    summary.left_out = {
        "not finished": archive.skipped,
        "outside the period": len(archive.observations) - len(observations),
    }
    with job_lock(out_dir):
        # left by a killed run: a tile's staging file, the COG's build folder
        remove_stale_partials(out_dir, {os.path.realpath(p) for p in inputs}, subfolders=(TILES,))
        aoi_wkb = aoi.wkb if aoi is not None else None
        works, records = [], {}
        for tile in tiles:
            if aoi is not None and not intersects(tile.bounds, aoi.bounds):
                touching = []
            else:
                touching = [o for o, f in feet if intersects(f, tile.bounds)]
            key = tile_key(tile, touching, settings)
            previous = record.get("tiles", {}).get(tile.name)
            if not touching:
                records[tile.name] = TileRecord(tile.name, key, "empty")
            elif _tile_done(previous, key, out_dir, tile.name):
                records[tile.name] = TileRecord(
                    tile.name,
                    key,
                    previous["status"],
                    previous.get("classes_bytes"),
                    previous.get("stats_bytes"),
                    previous.get("valid_pixels", 0),
                )
                summary.tiles_skipped += 1
            else:
                works.append(
                    TileWork(tile, grid, tuple(touching), tuple(archive.classes), method, key, out_dir, aoi_wkb)
                )
        megapixels = sum(w.tile.shape[0] * w.tile.shape[1] for w in works) / 1e6
        try:
            with meter(console, "mosaic", len(works), "tiles") as bar:
                for done in _map_tiles(works, options, megapixels):
                    records[done.name] = done
                    summary.tiles_run += 1
                    bar.advance(1)
        finally:  # what finished is recorded, also on Ctrl-C
            _write_record(out_dir, settings, records, {}, record)
        summary.tiles_empty = sum(r.status == "empty" for r in records.values())
        _remove_stale_tiles(out_dir, record, records)
        written = [r for r in records.values() if r.status == "ok"]
        if not written:
            raise GeoSegError("no pixel of the grid has a valid observation: nothing to mosaic")
        outputs = {"classes": CLASSES_VRT, "stats": STATS_VRT}
        write_vrts(out_dir, grid, tiles, records, archive.classes)
        if options.cog:
            publish_single_cog(out_dir / CLASSES_VRT, out_dir / COG)
            outputs["cog"] = COG
        if options.stac_items:
            outputs["stac"] = _write_stac(out_dir, record, written, archive.classes, observations, options)
        if options.vectors is not None:
            from geoseg.vector.formats import polygons_beside
            from geoseg.vector.job import vectorize_raster

            source = out_dir / (COG if options.cog else CLASSES_VRT)
            vectors = polygons_beside(out_dir / "mosaic.tif", options.vectors.fmt or "gpkg")
            vectorize_raster(
                source, [vectors], options.vectors, workers=options.workers, ray_address=options.ray_address
            )
            outputs["vectors"] = vectors.name
        _write_record(out_dir, settings, records, outputs, record)
    summary.outputs = {k: str(out_dir / v) for k, v in outputs.items()}
    summary.seconds = time.perf_counter() - started
    return summary


def _check_stac_folder(out_dir: Path, before: dict[str, Any]) -> None:
    """The STAC folder is absent, or this mosaic's own (its record names it)."""
    folder = out_dir / STAC
    if os.path.lexists(folder) and before.get("outputs", {}).get("stac") != f"{STAC}/collection.json":
        raise GeoSegError("exists and was not written by this mosaic: move it away or choose another --output", folder)


def _write_stac(
    out_dir: Path,
    before: dict[str, Any],
    written: list[TileRecord],
    classes: Sequence[ClassStyle],
    observations: Sequence[Observation],
    options: MosaicOptions,
) -> str:
    """``stac/collection.json``: one Item per written tile, the period (or the scenes' dates) as its time span.
    The folder is this mosaic's own: an earlier run's (recorded) is replaced whole, so no Item of a tile that is
    gone stays behind; anything else already there is refused."""
    from geoseg.io.stac import write_mosaic_collection

    folder = out_dir / STAC
    _check_stac_folder(out_dir, before)
    if folder.exists():
        shutil.rmtree(folder)
    dates = sorted(o.acquired for o in observations if o.acquired is not None)
    if options.period is not None:
        first, last = options.period
    else:
        first, last = (dates[0], dates[-1]) if dates else (datetime.now(UTC).date(),) * 2
    span = (datetime.combine(first, dt_time.min, UTC), datetime.combine(last, dt_time.max, UTC))
    tiles = [(r.name, *tile_files(out_dir, r.name)) for r in sorted(written, key=lambda r: r.name)]
    table = [(c.id, c.name, c.rgb) for c in classes]
    described = f"geoseg mosaic of {len(observations)} scene(s), {first} to {last}"
    write_mosaic_collection(folder, tiles, table, span, described)
    return f"{STAC}/collection.json"


def _write_record(
    out_dir: Path,
    settings: dict[str, Any],
    records: dict[str, TileRecord],
    outputs: dict[str, str],
    before: dict[str, Any],
) -> None:
    tiles = dict(before.get("tiles", {})) if not outputs else {}
    tiles |= {name: {k: v for k, v in asdict(r).items() if k != "name"} for name, r in records.items()}
    payload = {
        "geoseg_version": __version__,
        "settings": settings,
        "outputs": outputs or before.get("outputs", {}),
        "tiles": tiles,
    }
    write_json_atomic(out_dir / RECORD, payload)


def _remove_stale_tiles(out_dir: Path, before: dict[str, Any], now: dict[str, TileRecord]) -> None:
    """Tiles an earlier run wrote that this grid no longer has (or that are empty now): this mosaic's own files."""
    for name, entry in before.get("tiles", {}).items():
        current = now.get(name)
        if current is not None and current.status == "ok":
            continue
        if isinstance(entry, dict) and entry.get("status") == "ok":
            for path in tile_files(out_dir, name):
                path.unlink(missing_ok=True)
