"""``geoseg change``: two maps of one place -> a from/to raster and the transition matrix with areas.

Map B is read on map A's grid (nearest, through GDAL's warper, unless it is already on it). Both are read block
by block in A's blocks: memory holds a block of each, never a map. Each pixel's transition gets an id from a
table fixed *before* the pass, so every block is final when written and one pass suffices:

* unchanged pixels keep their own class id (or, with ``no_change``, all get id 0, "no change");
* a change ``a -> b`` (``a != b``) gets ``base + i(a) * (C - 1) + j(b)``, with ``C`` classes in id order, ``i`` the
  position of ``a``, ``j`` that of ``b`` among the classes other than ``a``, and ``base`` the first id after the
  classes' (1 with ``no_change``).

Only the transitions that occur get a name (``forest -> developed``), a colour and a row of the matrix; the
raster is uint8 when the table fits a byte (nodata 255), else uint16 (nodata 65535). Pixels that are nodata in
either map are nodata. Areas are square metres of each pixel (:mod:`geoseg.areas.maps`), so they are right on
geographic grids too, and the transitions' areas sum to the area both maps cover.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.warp import transform_bounds
from rich.console import Console

from geoseg import __version__
from geoseg.areas.maps import ClassMap, opened, read_ahead
from geoseg.errors import GeoSegError
from geoseg.inference.outputs import remove_stale_partials
from geoseg.io.guard import refuse_file_as_folder, refuse_overwrite
from geoseg.io.joblock import job_lock
from geoseg.io.raster import SceneInfo, onto_grid
from geoseg.io.styles import ClassStyle, style_class_raster
from geoseg.io.writer import StagingRaster, class_tags, publish_cog, write_text_atomic
from geoseg.progress import meter
from geoseg.vector.formats import polygons_beside, vector_files
from geoseg.vector.polygonize import VectorizeOptions

RECORD = "transitions.json"
RASTER = "change.tif"
MATRIX_CSV = "transitions.csv"
NO_CHANGE = "no change"


@dataclass(frozen=True)
class Transition:
    """One transition that occurs: its id in the change raster, its classes and its extent."""

    id: int
    from_id: int | None  # None for the merged "no change" id
    to_id: int | None
    name: str
    color: tuple[int, int, int]
    pixels: int
    area_m2: float


class TransitionTable:
    """The id of every possible transition between ``classes`` (see the module docstring)."""

    def __init__(self, classes: list[ClassStyle], no_change: bool) -> None:
        self.classes = classes
        self.no_change = no_change
        ids = [c.id for c in classes]
        c = len(ids)
        base = 1 if no_change else max(ids) + 1
        table = np.empty((c, c), dtype=np.int64)
        for i in range(c):
            for j in range(c):
                if i == j:
                    table[i, j] = 0 if no_change else ids[i]
                else:
                    table[i, j] = base + i * (c - 1) + (j if j < i else j - 1)
        self.table = table
        self.dtype = "uint8" if table.max() < 255 else "uint16"
        self.nodata = int(np.iinfo(self.dtype).max)
        if table.max() >= self.nodata:
            raise GeoSegError(f"{c} classes give more transitions than a uint16 change raster holds")
        self.position = {cid: k for k, cid in enumerate(ids)}

    def describe(self, i: int, j: int) -> tuple[int, str, tuple[int, int, int]]:
        """Id, name and colour of the transition from class position ``i`` to ``j``."""
        a, b = self.classes[i], self.classes[j]
        if i == j:
            return (
                int(self.table[i, j]),
                (NO_CHANGE if self.no_change else a.name),
                ((200, 200, 200) if self.no_change else a.rgb),
            )
        mixed = tuple(round(0.35 * x + 0.65 * y) for x, y in zip(a.rgb, b.rgb, strict=True))
        return int(self.table[i, j]), f"{a.name} -> {b.name}", (mixed[0], mixed[1], mixed[2])


def _classes(a: ClassMap, b: ClassMap) -> list[ClassStyle]:
    """The classes both maps share; their tables must agree (ids and names) when both have one."""
    if a.classes and b.classes:
        ours = [(c.id, c.name) for c in a.classes]
        theirs = [(c.id, c.name) for c in b.classes]
        if ours != theirs:
            only_a = sorted(set(ours) - set(theirs))
            only_b = sorted(set(theirs) - set(ours))
            raise GeoSegError(
                f"its classes differ from {a.path}'s (only there: {only_a or 'none'}; only here: {only_b or 'none'}):"
                " a change map compares one legend",
                b.path,
            )
    if a.classes or b.classes:
        return a.classes or b.classes
    seen: set[int] = set()  # maps without a class table: the ids they hold (one extra pass)
    for cmap in (a, b):
        for window in cmap.windows():
            values, valid = cmap.read(window)
            seen.update(np.unique(values[valid]).tolist())
    return [ClassStyle(i, f"class {i}", (128, 128, 128)) for i in sorted(seen)]


def _positions(cmap: ClassMap, values: np.ndarray, valid: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Class positions of ``values`` through ``lookup`` (-1: not a class); a valid pixel whose id is not a class
    is a one-line error. One gather per pixel: the map's own type indexes the table (uint8 maps: 256 entries)."""
    if values.dtype != np.uint8 and np.any(valid & (values >= len(lookup))):
        raise GeoSegError(f"holds class id {int(values[valid].max())}, not one of the map's classes", cmap.path)
    positions = lookup[np.minimum(values, len(lookup) - 1) if values.dtype != np.uint8 else values]
    unknown = valid & (positions < 0)
    if np.any(unknown):
        raise GeoSegError(f"holds class id {int(values[unknown][0])}, not one of the map's classes", cmap.path)
    return positions


def products(out_dir: Path, vector_format: str | None) -> list[Path]:
    paths = [out_dir / n for n in (RASTER, RASTER + ".aux.xml", "change.qml", RECORD, MATRIX_CSV)]
    if vector_format:
        paths.extend(vector_files(polygons_beside(out_dir / RASTER, vector_format)))
    return paths


def _owned(out_dir: Path) -> list[Path]:
    """The files a previous ``change`` into ``out_dir`` recorded as its own."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
        return [out_dir / name for name in record["products"]] + [out_dir / RECORD]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def change(
    map_a: Path,
    map_b: Path,
    out_dir: Path,
    no_change: bool = False,
    vectorize: VectorizeOptions | None = None,
    console: Console | None = None,
) -> dict[str, object]:
    """Write ``out_dir/change.tif`` (+ styles), ``transitions.json`` and ``transitions.csv``; returns the record."""
    vector_format = vectorize.fmt if vectorize else None
    outputs = products(out_dir, vector_format)
    refuse_file_as_folder(out_dir)
    refuse_overwrite(outputs, [map_a, map_b], _owned(out_dir))
    with contextlib.ExitStack() as held:
        return _change(map_a, map_b, out_dir, no_change, vectorize, console, outputs, held)


def _change(
    map_a: Path,
    map_b: Path,
    out_dir: Path,
    no_change: bool,
    vectorize: VectorizeOptions | None,
    console: Console | None,
    outputs: list[Path],
    held: contextlib.ExitStack,
) -> dict[str, object]:
    with opened(map_a, "map A") as a, opened(map_b, "map B") as b:
        _overlap(a, b)
        table = TransitionTable(_classes(a, b), no_change)
        view = ClassMap(b.path, onto_grid(b.src, a.src.crs, a.src.transform, a.src.width, a.src.height), b.classes)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeoSegError(f"cannot create the output folder ({exc.strerror or exc})", out_dir) from exc
        held.enter_context(job_lock(out_dir))  # held until every product and the record are written
        # a killed run's staging raster and COG build folder (never one of the maps)
        remove_stale_partials(out_dir, {os.path.realpath(m) for m in (map_a, map_b)}, subfolders=())
        pairs, transitions = _write(a, view, table, out_dir / RASTER, console)
        view.src.close()
    if not transitions:
        raise GeoSegError(f"the maps share no valid pixel (map B: {map_b})", map_a)
    total = sum(t.area_m2 for t in transitions)
    written = [p.name for p in outputs[:3] if p.exists()]
    record: dict[str, object] = {
        "geoseg_version": __version__,
        "map_a": str(map_a),
        "map_b": str(map_b),
        "no_change": no_change,
        "crs": a.src.crs.to_string(),
        "total_area_m2": total,
        "classes": [{"id": c.id, "name": c.name} for c in table.classes],
        "transitions": [
            {
                "id": t.id,
                "from": t.from_id,
                "to": t.to_id,
                "name": t.name,
                "pixels": t.pixels,
                "area_m2": t.area_m2,
                "area_ha": t.area_m2 / 1e4,
            }
            for t in transitions
        ],
        "products": [*written, MATRIX_CSV],
    }
    write_text_atomic(out_dir / MATRIX_CSV, _matrix_csv(table, pairs))
    if vectorize is not None:
        from geoseg.vector.job import vectorize_raster

        vectors = outputs[5]
        vectorize_raster(out_dir / RASTER, [vectors], vectorize)
        record["products"] = [*record["products"], *(p.name for p in outputs[5:] if p.exists())]  # type: ignore[misc]
    write_text_atomic(out_dir / RECORD, json.dumps(record, indent=2))
    return record


def _overlap(a: ClassMap, b: ClassMap) -> None:
    try:
        west, south, east, north = transform_bounds(b.src.crs, a.src.crs, *b.src.bounds, densify_pts=21)
    except Exception as exc:
        raise GeoSegError(f"cannot bring map B onto map A's CRS ({exc})", b.path) from exc
    left, bottom, right, top = a.src.bounds
    if west >= right or east <= left or south >= top or north <= bottom:
        raise GeoSegError(f"does not overlap map A ({a.path}): the maps show two different places", b.path)


def _write(
    a: ClassMap, b: ClassMap, table: TransitionTable, path: Path, console: Console | None
) -> tuple[list[Transition], list[Transition]]:
    """The pass: write the change raster; returns the (from, to) pairs that occur and the transitions by id."""
    c = len(table.classes)
    # ids by code = position(A) * c + position(B); one more slot, c * c, for pixels that are nodata in either map
    ids = np.append(table.table.ravel(), table.nodata).astype(table.dtype)
    lookup = np.full(max(256, max(table.position) + 1), -1, dtype=np.int32)
    for cid, k in table.position.items():
        lookup[cid] = k
    pixels = np.zeros(c * c + 1, dtype=np.int64)
    areas = np.zeros(c * c + 1, dtype=np.float64)
    bh, bw = a.src.block_shapes[0]
    scene = SceneInfo(str(path), a.src.width, a.src.height, 1, table.dtype, a.src.crs, a.src.transform, None, (bh, bw))
    tile = bw if bw == bh and bw % 16 == 0 else 512
    chunks = [chunk for chunk, _ in a.chunks()]
    # The colour table goes in first (a TIFF cannot turn paletted once pixels are written): every possible
    # transition's colour; the names, which say which transitions occur, follow the pass.
    c_range = range(c)
    palette = dict(table.describe(i, j)[::2] for i in c_range for j in c_range)
    staging = StagingRaster(path, scene, ["transition"], table.nodata, tile, colormap=palette, dtype=table.dtype)
    try:
        with meter(console or Console(quiet=True), "change", len(chunks), "windows") as bar:
            for window, ((va, ok_a), (vb, ok_b)) in read_ahead(chunks, lambda w: (a.read(w), b.read(w))):
                valid = ok_a & ok_b
                code = _positions(a, va, valid, lookup) * c + _positions(b, vb, valid, lookup)
                code[~valid] = c * c
                staging.write(window, ids[code])
                counted = np.bincount(code.ravel(), minlength=c * c + 1)
                pixels += counted
                unit = a.pixel_areas(window)
                if unit.size == 1:
                    areas += counted * float(unit[0, 0])
                else:
                    areas += np.bincount(
                        code.ravel(), weights=np.broadcast_to(unit, code.shape).ravel(), minlength=c * c + 1
                    )
                bar.advance(1)
        pixels, areas = pixels[:-1], areas[:-1]
        pairs = []  # every (from, to) that occurs; with no_change the unchanged ones share id 0
        for code in np.flatnonzero(pixels):
            i, j = divmod(int(code), c)
            tid, name, color = table.describe(i, j)
            pairs.append(
                Transition(
                    tid, table.classes[i].id, table.classes[j].id, name, color, int(pixels[code]), float(areas[code])
                )
            )
        transitions = _by_id(pairs)
        staging.describe({}, class_tags([t.id for t in transitions], [t.name for t in transitions]))
        publish_cog(staging.close(), path, "nearest")
    except BaseException:
        staging.abort()
        raise
    style_class_raster(path)
    return pairs, transitions


def _by_id(pairs: list[Transition]) -> list[Transition]:
    """One transition per raster id, in id order: pairs that share an id ("no change") are summed."""
    merged: dict[int, Transition] = {}
    for p in pairs:
        if p.id in merged:
            m = merged[p.id]
            merged[p.id] = Transition(p.id, None, None, m.name, m.color, m.pixels + p.pixels, m.area_m2 + p.area_m2)
        else:
            merged[p.id] = p
    return [merged[i] for i in sorted(merged)]


def _matrix_csv(table: TransitionTable, pairs: list[Transition]) -> str:
    """The transition matrix in hectares: rows are map A's classes, columns map B's, with totals."""
    names = [c.name for c in table.classes]
    index = {c.id: k for k, c in enumerate(table.classes)}
    matrix = np.zeros((len(names), len(names)))
    for t in pairs:
        matrix[index[t.from_id], index[t.to_id]] += t.area_m2 / 1e4  # type: ignore[index]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["from \\ to (ha)", *names, "total A"])
    for name, row in zip(names, matrix, strict=True):
        writer.writerow([name, *(f"{v:.4f}" for v in row), f"{row.sum():.4f}"])
    writer.writerow(["total B", *(f"{v:.4f}" for v in matrix.sum(axis=0)), f"{matrix.sum():.4f}"])
    return buffer.getvalue()
