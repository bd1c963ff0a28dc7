"""``geoseg sample``: a stratified random sample of a map's pixels, as a labelling sheet (:mod:`.sheet`).

The strata are the map's classes (or a change map's transitions). Two passes over the map's blocks, memory
bounded by one block and a table of per-block counts:

1. count each stratum's valid pixels per block (inside ``--aoi`` when given; never nodata) and their area;
2. draw each stratum's sample as ranks ``0 <= r < N_h`` without replacement (its own seeded generator, so one
   stratum's draw does not depend on another's size), find the block holding each rank from the cumulative
   counts, and read only those blocks to turn ranks into pixels.

Every valid pixel of a stratum is equally likely, which is the design the stratified estimator assumes. The
points are pixel centres. Sizes come from eq. 13 of Olofsson et al. (2014) for a target standard error of
overall accuracy, or are given; see :func:`geoseg.areas.estimator.allocate` for the allocations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from rich.console import Console

from geoseg import __version__
from geoseg.areas.estimator import Stratum, allocate, sample_size
from geoseg.areas.maps import ClassMap, class_names, opened
from geoseg.areas.sheet import write_sheet
from geoseg.errors import GeoSegError
from geoseg.io.styles import ClassStyle
from geoseg.io.vectors import read_polygons
from geoseg.progress import meter

Allocation = Literal["proportional", "equal", "explicit"]


@dataclass(frozen=True)
class SampleDesign:
    """How many samples, and how they are shared among the strata."""

    size: int | None = None  # the total, given
    target_se: float | None = None  # or from eq. 13: target standard error of overall accuracy
    expected_ua: dict[int, float] = field(default_factory=dict)  # expected user's accuracy per stratum (eq. 13)
    allocation: Allocation = "proportional"
    min_per_class: int = 50  # floor per stratum (proportional and equal allocation)
    per_class: dict[int, int] = field(default_factory=dict)  # explicit allocation
    seed: int = 0


class _Area:
    """Which pixels of a window count: valid map pixels, inside the AOI polygons when there are some."""

    def __init__(self, cmap: ClassMap, aoi: Path | None) -> None:
        self.cmap = cmap
        self.shapes: list[object] | None = None
        self.box: tuple[float, float, float, float] | None = None
        if aoi is not None:
            frame = read_polygons(aoi, cmap.src.crs)
            geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
            if not geoms:
                raise GeoSegError("holds no polygon", aoi)
            self.shapes = geoms
            x0, y0, x1, y1 = shapely.total_bounds(np.asarray(geoms)).tolist()
            self.box = (x0, y0, x1, y1)

    def outside(self, window: Window) -> bool:
        if self.box is None:
            return False
        left, bottom, right, top = window_bounds(window, self.cmap.src.transform)
        x0, y0, x1, y1 = self.box
        return min(left, right) > x1 or max(left, right) < x0 or min(bottom, top) > y1 or max(bottom, top) < y0

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        values, valid = self.cmap.read(window)
        if self.shapes is not None:
            shape = (int(window.height), int(window.width))
            transform = window_transform(window, self.cmap.src.transform)
            valid &= features.geometry_mask(self.shapes, shape, transform, invert=True)  # pixel centres inside
        return values, valid


def sample(
    map_path: Path,
    out: Path,
    design: SampleDesign,
    aoi: Path | None = None,
    console: Console | None = None,
) -> tuple[Path, list[Stratum], dict[int, int]]:
    """Draw the sample and write the sheet to ``out``; returns it, the strata and each stratum's sample size."""
    if out.suffix.lower() != ".gpkg":
        raise GeoSegError("the sheet is a GeoPackage: name it .gpkg", out)
    if out.exists() or out.is_symlink():
        raise GeoSegError("exists; sample never replaces a file (a sheet may hold labels): name a new one", out)
    if not out.parent.is_dir():
        raise GeoSegError("no such folder", out.parent)
    console = console or Console(quiet=True)
    with opened(map_path) as cmap:
        drawn = draw(cmap, design, aoi, console)
        xs, ys = cmap.src.transform * (drawn.cols + 0.5, drawn.rows + 0.5)
        crs = cmap.src.crs.to_wkt()
        names = {s.id: s.name for s in drawn.strata}
        table = cmap.classes or [ClassStyle(i, names[i], (128, 128, 128)) for i in names]
    rows, cols, classes, sizes, strata = drawn.rows, drawn.cols, drawn.classes, drawn.sizes, drawn.strata
    order = np.random.default_rng([design.seed, 2**31 - 1]).permutation(len(rows))
    points = gpd.GeoDataFrame(
        {
            "id": np.arange(1, len(rows) + 1, dtype=np.int32),
            "map_class": classes[order].astype(np.int32),
            "map_class_name": [names[int(c)] for c in classes[order]],
            "reference_class": pd.array([None] * len(rows), dtype="Int32"),
            "confidence": pd.array([None] * len(rows), dtype="string"),
            "notes": pd.array([None] * len(rows), dtype="string"),
            "row": rows[order].astype(np.int64),
            "col": cols[order].astype(np.int64),
        },
        geometry=gpd.points_from_xy(np.asarray(xs)[order], np.asarray(ys)[order]),
        crs=crs,
    )
    record = {
        "map": str(map_path),
        "aoi": str(aoi) if aoi else "",
        "seed": str(design.seed),
        "allocation": design.allocation,
        "size": str(sum(sizes.values())),
        "target_se": "" if design.target_se is None else str(design.target_se),
        "expected_ua": ",".join(f"{k}={v}" for k, v in sorted(design.expected_ua.items())),
        "min_per_class": str(design.min_per_class),
        "geoseg_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_sheet(out, points, strata, sizes, table, record)
    return out, strata, sizes


@dataclass(frozen=True)
class Draw:
    """A drawn sample: the strata, each one's sample size, and the sampled pixels with their stratum."""

    strata: list[Stratum]
    sizes: dict[int, int]
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray


def draw(cmap: ClassMap, design: SampleDesign, aoi: Path | None = None, console: Console | None = None) -> Draw:
    """Count the strata and draw the sample (the two passes of the module docstring); writes nothing."""
    console = console or Console(quiet=True)
    area = _Area(cmap, aoi)
    windows = list(cmap.windows())
    ids, counts, areas = _count(area, windows, console)
    if not ids:
        where = " inside the AOI" if aoi is not None else ""
        raise GeoSegError(f"has no valid pixel{where} to sample", cmap.path)
    names = class_names(cmap, ids)
    strata = [Stratum(i, names[i], int(counts[:, k].sum()), float(areas[k])) for k, i in enumerate(ids)]
    sizes = _sizes(design, strata, cmap.path)
    rows, cols, classes = _draw(area, windows, ids, counts, sizes, design.seed, console)
    return Draw(strata, sizes, rows, cols, classes)


def _count(area: _Area, windows: list[Window], console: Console) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per block, each stratum's pixel count; per stratum its area. Returns (ids, counts[block, k], areas[k])."""
    per_block: list[dict[int, int]] = []
    areas: dict[int, float] = {}
    with meter(console, "counting", len(windows), "blocks") as bar:
        for window in windows:
            found: dict[int, int] = {}
            if not area.outside(window):
                values, valid = area.read(window)
                chosen = values[valid]
                unit = area.cmap.pixel_areas(window)
                if values.dtype == np.uint8:
                    tally = np.bincount(chosen, minlength=256)
                    present = np.flatnonzero(tally)
                    found = dict(zip(present.tolist(), tally[present].tolist(), strict=True))
                else:
                    present, tally = np.unique(chosen, return_counts=True)
                    found = dict(zip(present.tolist(), tally.tolist(), strict=True))
                if unit.size == 1:
                    for cid, n in found.items():
                        areas[cid] = areas.get(cid, 0.0) + n * float(unit[0, 0])
                else:
                    weights = np.broadcast_to(unit, valid.shape)[valid]
                    for cid in found:
                        areas[cid] = areas.get(cid, 0.0) + float(weights[chosen == cid].sum())
            per_block.append(found)
            bar.advance(1)
    ids = sorted(areas)
    counts = np.zeros((len(windows), len(ids)), dtype=np.int64)
    position = {cid: k for k, cid in enumerate(ids)}
    for b, found in enumerate(per_block):
        for cid, n in found.items():
            counts[b, position[cid]] = n
    return ids, counts, np.array([areas[i] for i in ids])


def _sizes(design: SampleDesign, strata: list[Stratum], map_path: Path) -> dict[int, int]:
    """Each stratum's sample size; explicit sizes and expected accuracies must name exactly the map's strata."""
    ids = [s.id for s in strata]
    pixels = [s.pixels for s in strata]
    if design.allocation == "explicit":
        _names_every_stratum(design.per_class, strata, "--per-class", map_path)
        for s in strata:
            if design.per_class[s.id] > s.pixels:
                raise GeoSegError(
                    f"--per-class asks {design.per_class[s.id]} samples of stratum {s.id} ({s.name}), "
                    f"which has {s.pixels} pixels",
                    map_path,
                )
        return {i: int(design.per_class[i]) for i in ids}
    if design.size is not None:
        total = design.size
    elif design.target_se is not None:
        _names_every_stratum(design.expected_ua, strata, "--expected-ua", map_path)
        weights = np.array([s.area_m2 for s in strata]) / sum(s.area_m2 for s in strata)
        total = sample_size(weights, [design.expected_ua[i] for i in ids], design.target_se, sum(pixels))
    else:
        raise GeoSegError("give the sample size: --size N, --target-se with --expected-ua, or --per-class")
    counts = allocate(total, pixels, design.min_per_class, equal=design.allocation == "equal")
    return dict(zip(ids, counts, strict=True))


def _names_every_stratum(
    values: dict[int, float] | dict[int, int], strata: list[Stratum], option: str, path: Path
) -> None:
    ids = {s.id for s in strata}
    missing = sorted(ids - set(values))
    extra = sorted(set(values) - ids)
    if missing:
        named = ", ".join(f"{s.id} ({s.name})" for s in strata if s.id in missing)
        raise GeoSegError(f"{option} gives no value for the strata {named}: every stratum needs one", path)
    if extra:
        raise GeoSegError(f"{option} names {extra}, which are not strata of the map (it has {sorted(ids)})", path)


def _draw(
    area: _Area,
    windows: list[Window],
    ids: list[int],
    counts: np.ndarray,
    sizes: dict[int, int],
    seed: int,
    console: Console,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and strata of the sampled pixels (see the module docstring)."""
    wanted: dict[int, list[tuple[int, np.ndarray]]] = {}  # block -> [(stratum position, local ranks)]
    for k, cid in enumerate(ids):
        n = sizes.get(cid, 0)
        if n <= 0:
            continue
        per_block = counts[:, k]
        ranks = np.sort(np.random.default_rng([seed, cid]).choice(int(per_block.sum()), size=n, replace=False))
        ends = np.cumsum(per_block)
        blocks = np.searchsorted(ends, ranks, side="right")
        local = ranks - (ends[blocks] - per_block[blocks])
        for block in np.unique(blocks):
            wanted.setdefault(int(block), []).append((k, local[blocks == block]))
    rows, cols, classes = [], [], []
    with meter(console, "sampling", len(wanted), "blocks") as bar:
        for block in sorted(wanted):
            window = windows[block]
            values, valid = area.read(window)
            for k, local in wanted[block]:
                hits = np.flatnonzero(valid & (values == ids[k]))[local]
                r, c = np.divmod(hits, int(window.width))
                rows.append(r + int(window.row_off))
                cols.append(c + int(window.col_off))
                classes.append(np.full(len(hits), ids[k], dtype=np.int64))
            bar.advance(1)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(classes)
