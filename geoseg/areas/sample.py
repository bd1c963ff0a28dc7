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
from geoseg.areas.maps import ClassMap, class_names, opened, read_ahead
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
    windows, ids, counts, areas = _count(area, console)
    if not ids:
        where = " inside the AOI" if aoi is not None else ""
        raise GeoSegError(f"has no valid pixel{where} to sample", cmap.path)
    names = class_names(cmap, ids)
    strata = [Stratum(i, names[i], int(counts[:, k].sum()), float(areas[k])) for k, i in enumerate(ids)]
    sizes = _sizes(design, strata, cmap.path)
    rows, cols, classes = _draw(area, windows, ids, counts, sizes, design.seed, console)
    return Draw(strata, sizes, rows, cols, classes)


def _count(area: _Area, console: Console) -> tuple[list[Window], list[int], np.ndarray, np.ndarray]:
    """Per block, each stratum's pixel count; per stratum its area. Returns (blocks, ids, counts[block, k],
    areas[k]). The map is read in chunks of blocks (decoded on all cores) and counted block by block."""
    cmap = area.cmap
    fast = cmap.plain_nodata if area.shapes is None and cmap.equal_pixels else None  # counts only, no mask
    chunks = list(cmap.chunks())
    blocks: list[Window] = [block for _, inside in chunks for block in inside]
    per_block = np.zeros((len(blocks), 256), dtype=np.int32)  # uint8 maps: 256 counts per block (int32: 6 MB at
    wide: list[dict[int, int]] = []  # 40000^2 in 512 px blocks); other types: {id: count} per block
    areas: dict[int, float] = {}
    seen: list[int] = []  # uint8 classes met so far, in the order met

    def read(item: tuple[Window, list[Window]]) -> tuple[np.ndarray, np.ndarray] | None:
        chunk = item[0]
        if area.outside(chunk):
            return None
        if fast is not None:  # validity is the nodata value, which _tally leaves out: no mask to compute
            return cmap.src.read(1, window=chunk), np.ones((1, 1), bool)
        return area.read(chunk)

    with meter(console, "counting", len(chunks), "windows") as bar:
        for (chunk, inside), pixels in read_ahead(chunks, read):
            if pixels is None:
                wide.extend({} for _ in inside)
                bar.advance(1)
                continue
            values, valid = pixels
            unit = None if cmap.equal_pixels else cmap.pixel_areas(chunk)
            for block in inside:
                rows = slice(int(block.row_off - chunk.row_off), int(block.row_off - chunk.row_off + block.height))
                cols = slice(int(block.col_off - chunk.col_off), int(block.col_off - chunk.col_off + block.width))
                part = values[rows, cols]
                if fast is not None:
                    per_block[len(wide)] = _tally(part, fast, seen)
                    wide.append({})
                    continue
                ok = valid[rows, cols]
                chosen = part[ok]
                present, tally = np.unique(chosen, return_counts=True)
                found = dict(zip(present.tolist(), tally.tolist(), strict=True))
                wide.append(found)
                if unit is not None:  # a geographic grid: each pixel its own area
                    weights = np.broadcast_to(unit[rows], part.shape)[ok]
                    for cid in found:
                        areas[cid] = areas.get(cid, 0.0) + float(weights[chosen == cid].sum())
            bar.advance(1)
    byte_counts = per_block.sum(axis=0, dtype=np.int64)
    totals: dict[int, int] = {int(i): int(byte_counts[i]) for i in np.flatnonzero(byte_counts)}
    for found in wide:
        for cid, n in found.items():
            totals[cid] = totals.get(cid, 0) + n
    ids = sorted(totals)
    position = {cid: k for k, cid in enumerate(ids)}
    counts = np.zeros((len(blocks), len(ids)), dtype=np.int64)
    for cid in np.flatnonzero(byte_counts).tolist():
        counts[:, position[cid]] += per_block[:, cid]
    for b, found in enumerate(wide):
        for cid, n in found.items():
            counts[b, position[cid]] += n
    if cmap.equal_pixels:
        pixel = float(cmap.pixel_areas(Window(0, 0, 1, 1))[0, 0])
        areas = {cid: totals[cid] * pixel for cid in ids}
    return blocks, ids, counts, np.array([areas[i] for i in ids])


def _tally(part: np.ndarray, nodata: int, seen: list[int]) -> np.ndarray:
    """256 counts of a uint8 block whose nodata value is ``nodata`` (-1: none) (nodata itself counted 0).

    One equality count per class already ``seen`` costs ~0.13 ns a pixel, where ``np.bincount`` casts every
    pixel to int64 first (1.6-2.5 ns, measured): with a land-cover map's handful of classes, counting them one by
    one is several times cheaper. When the counts fall short of the block, a class not met before is in it, and
    that block alone goes through ``bincount``.
    """
    tally = np.zeros(256, np.int64)
    for cid in seen:
        tally[cid] = np.count_nonzero(part == cid)
    missing = part.size - int(tally.sum()) - (np.count_nonzero(part == nodata) if nodata >= 0 else 0)
    if missing:
        tally = np.bincount(part.ravel(), minlength=256)
        seen.extend(int(c) for c in np.flatnonzero(tally) if c != nodata and c not in seen)
    if nodata >= 0:
        tally[nodata] = 0
    return tally


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
