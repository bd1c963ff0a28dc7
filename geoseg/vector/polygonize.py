"""Class raster -> polygons, chunk by chunk, with seams merged so the result equals a whole-raster polygonize.

Each chunk is polygonized with ``rasterio.features.shapes`` in *pixel* coordinates, where every vertex is an
integer: pieces cut by a chunk seam then meet on exactly equal coordinates, and matching them needs no
tolerance. Only pieces that touch an internal seam take part in the merge; they are joined into connected
components (same class, and sharing an edge across a seam, or also a corner under 8-connectivity) and each
component is unioned once. Everything else passes through untouched. Georeferencing is applied at the end.

Chunks are independent, so :func:`polygonize` takes a ``map_fn``: the builtin ``map`` runs them here, the
Ray layer (:mod:`geoseg.vector.parallel`) runs them as tasks. Peak memory is one chunk of pixels plus the polygons.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.io.writer import class_names_from_tags
from geoseg.vector.dissolve import (
    RaggedPolygons,
    Seams,
    dissolve,
    drop_collinear_rings,
    exterior_edges,
    shared_seam_pairs,
)

Connectivity = Literal[4, 8]
MapFn = Callable[[Callable[..., Any], Iterable[Any]], Iterable[Any]]


@dataclass(frozen=True)
class VectorizeOptions:
    """How a class raster becomes polygons: ``geoseg vectorize`` and ``predict --vectorize`` share them.

    ``min_area_m2`` (a minimum mapping unit) and ``fill_holes_m2`` keep the polygons a partition (see
    :mod:`geoseg.vector.refine`); ``fmt`` None means "from the output's extension".
    """

    chunk: int = 1024
    skip_classes: frozenset[int] = field(default_factory=frozenset)
    connectivity: Connectivity = 4
    simplify: float = 0.0
    min_area_m2: float = 0.0
    fill_holes_m2: float = 0.0
    to_crs: str | None = None
    fmt: str | None = None
    confidence: bool = True

    def key(self) -> str:
        """What makes the polygons what they are (not where they go): recorded with a job's outputs."""
        values = asdict(self) | {"skip_classes": sorted(self.skip_classes)}
        return ",".join(f"{k}={values[k]}" for k in sorted(values))


@dataclass(frozen=True)
class ClassPolygons:
    """Polygons in map coordinates with their class ids (and mean confidence when known)."""

    geometries: np.ndarray  # of shapely (Multi)Polygons
    class_ids: np.ndarray
    crs: CRS
    class_names: dict[int, str]
    confidence: np.ndarray | None = None
    pixel_size: float = 1.0  # smallest side of a pixel, in map units
    connectivity: Connectivity = 4  # 4-connected polygons are valid by construction; 8 may touch themselves


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs to polygonize one window (picklable: it travels to Ray tasks)."""

    path: str
    window: Window
    skip: frozenset[int]
    connectivity: Connectivity
    confidence_path: str | None = None
    confidence_band: int = 1


@dataclass
class ChunkPieces:
    """Polygons of one chunk in pixel coordinates; ``on_seam`` marks those cut by an internal seam."""

    geoms: np.ndarray
    classes: np.ndarray
    on_seam: np.ndarray
    confidence_sum: np.ndarray
    pixel_count: np.ndarray

    def __getstate__(self) -> dict[str, Any]:
        # Ship polygons as flat coordinate + offset arrays: pickling 10^5 shapely objects one by one is
        # slower than polygonizing them.
        state = dict(self.__dict__)
        state["geoms"] = shapely.to_ragged_array(self.geoms) if len(self.geoms) else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        ragged = state.pop("geoms")
        self.__dict__.update(state)
        self.geoms = np.empty(0, dtype=object) if ragged is None else shapely.from_ragged_array(*ragged)


def _geoms_from_shapes(shapes: Iterable[tuple[dict[str, Any], float]]) -> tuple[np.ndarray, np.ndarray]:
    """GeoJSON-like polygons from ``features.shapes`` -> shapely array, built in one call (no per-object shape())."""
    coords: list[Any] = []
    ring_offsets, polygon_offsets, values = [0], [0], []
    for geojson, value in shapes:
        rings = geojson["coordinates"]
        for ring in rings:
            coords.extend(ring)
            ring_offsets.append(ring_offsets[-1] + len(ring))
        polygon_offsets.append(polygon_offsets[-1] + len(rings))
        values.append(int(value))
    if not values:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.asarray(coords, dtype=np.float64),
        (np.asarray(ring_offsets), np.asarray(polygon_offsets)),
    )
    return geoms, np.asarray(values, dtype=np.int64)


def chunk_windows(width: int, height: int, chunk: int) -> Iterator[Window]:
    for row in range(0, height, chunk):
        for col in range(0, width, chunk):
            yield Window(col, row, min(chunk, width - col), min(chunk, height - row))


_INT32 = np.iinfo(np.int32)


def _categorical(data: np.ndarray, mask: np.ndarray, path: str) -> np.ndarray:
    """Class ids as ``features.shapes`` takes them (at most 32-bit signed), exactly: values that do not fit are
    refused with a message, never wrapped (a uint32 id of 3e9 would become a negative class id)."""
    if data.dtype.kind == "f":
        # Many class rasters are stored as float (GRASS exports, for one); fine while every value is whole.
        values = data[mask]
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise GeoSegError("not a categorical raster: it holds fractional values", path)
    values = data[mask]
    if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
        worst = values.max() if values.max() > _INT32.max else values.min()
        raise GeoSegError(f"class id {worst:.0f} does not fit the 32-bit ids polygons carry (|id| < 2^31)", path)
    if data.dtype.kind == "f" or data.dtype.itemsize > 4 or data.dtype == np.uint32:
        return np.where(mask, data, 0).astype(np.int32)
    return data


def polygonize_chunk(job: ChunkJob) -> ChunkPieces:
    """Polygonize one window; runs anywhere the raster is readable."""
    with rasterio.open(job.path) as src:
        data = src.read(1, window=job.window)
        mask = src.read_masks(1, window=job.window) > 0
        size = (src.width, src.height)
    data = _categorical(data, mask, job.path)
    if job.skip:
        mask &= ~np.isin(data, list(job.skip))
    col0, row0 = int(job.window.col_off), int(job.window.row_off)
    shapes = features.shapes(data, mask=mask, connectivity=job.connectivity, transform=Affine.translation(col0, row0))
    geoms, classes = _geoms_from_shapes(shapes)
    confidence_sum: np.ndarray = np.zeros(len(geoms))
    pixel_count: np.ndarray = np.zeros(len(geoms))
    if job.confidence_path and len(geoms):
        # Label each pixel with its piece to average the confidence per polygon.
        labels = features.rasterize(
            zip(geoms, range(1, len(geoms) + 1), strict=True),
            out_shape=data.shape,
            transform=Affine.translation(col0, row0),
            fill=0,
            dtype="int32",
        )
        with rasterio.open(job.confidence_path) as conf_src:
            confidence = conf_src.read(job.confidence_band, window=job.window).astype(np.float64)
        pixel_count = np.bincount(labels.ravel(), minlength=len(geoms) + 1)[1:].astype(float)
        confidence_sum = np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=len(geoms) + 1)[1:]
    return ChunkPieces(geoms, classes, _seam_touching(geoms, job.window, *size), confidence_sum, pixel_count)


def _seam_touching(geoms: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    if not len(geoms):
        return np.zeros(0, dtype=bool)
    bounds = shapely.bounds(geoms)
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    return (
        ((bounds[:, 0] == c0) & (c0 > 0))
        | ((bounds[:, 2] == c1) & (c1 < width))
        | ((bounds[:, 1] == r0) & (r0 > 0))
        | ((bounds[:, 3] == r1) & (r1 < height))
    )


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root (smallest index) of each of ``n`` items' group, given pairs ``a[i] ~ b[i]``.

    Vectorized hook-and-compress: every round each pair whose ends have different roots hooks the larger root
    under the smaller (``np.minimum.at``), then pointer jumping compresses every path to its root; rounds repeat
    until no pair spans two roots. Parents only ever point to smaller indices, so each group's root is its
    smallest member. Numpy work per round, a few rounds, instead of a Python step per pair.
    """
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        np.minimum.at(parent, np.maximum(ra[differ], rb[differ]), np.minimum(ra[differ], rb[differ]))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def _touching_pairs(geoms: np.ndarray, classes: np.ndarray, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connectivity: same-class pieces of different chunks whose boundaries meet (at an edge or a corner)."""
    left, right = shapely.STRtree(geoms).query(geoms)
    keep = (left < right) & (classes[left] == classes[right]) & (chunk_ids[left] != chunk_ids[right])
    left, right = left[keep], right[keep]
    touching = shapely.relate_pattern(geoms[left], geoms[right], "****T****")
    return left[touching], right[touching]


@dataclass
class _SeamPieces:
    """Seam pieces of one chunk waiting for the merge, held as compact integer coordinates."""

    polygons: RaggedPolygons
    classes: np.ndarray
    confidence_sum: np.ndarray
    pixel_count: np.ndarray


Regions = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # geometries, classes, confidence sum, pixels
MERGED_BATCH_VERTICES = 1_000_000  # merged regions are handed on in batches of about this many vertices


def iter_regions(chunks: Iterable[ChunkPieces], seams: Seams, connectivity: Connectivity = 4) -> Iterator[Regions]:
    """Yield final regions (pixel coordinates) as soon as they are known: each chunk's inner pieces as the
    chunk arrives, then the seam pieces merged into connected regions. Only seam pieces are held back."""
    seam: list[_SeamPieces] = []
    for piece in chunks:
        inner = ~piece.on_seam
        if inner.any():
            yield piece.geoms[inner], piece.classes[inner], piece.confidence_sum[inner], piece.pixel_count[inner]
        on = piece.on_seam
        if on.any():
            polygons = RaggedPolygons.from_geoms(piece.geoms[on])
            seam.append(_SeamPieces(polygons, piece.classes[on], piece.confidence_sum[on], piece.pixel_count[on]))
        del piece
    if seam:
        yield from _merge_seam(seam, seams, connectivity)


def _merge_seam(seam: list[_SeamPieces], seams: Seams, connectivity: Connectivity) -> Iterator[Regions]:
    pieces = RaggedPolygons.concat([s.polygons for s in seam])
    classes = np.concatenate([s.classes for s in seam])
    sums = np.concatenate([s.confidence_sum for s in seam])
    counts = np.concatenate([s.pixel_count for s in seam])
    if connectivity == 4:
        edges = exterior_edges(pieces, seams)
        a, b, cancelled = shared_seam_pairs(edges, classes)
    else:
        chunk_ids = np.concatenate([np.full(len(s.classes), i) for i, s in enumerate(seam)])
        a, b = _touching_pairs(pieces.to_geoms(), classes, chunk_ids)
    seam.clear()
    roots = union_find(len(pieces), a, b)
    size = np.bincount(roots, minlength=len(pieces))
    region_sums = np.bincount(roots, weights=sums, minlength=len(pieces))
    region_counts = np.bincount(roots, weights=counts, minlength=len(pieces))
    single = np.flatnonzero(size[roots] == 1)
    yield from _batches(pieces.take(single), classes[single], sums[single], counts[single])
    merged = np.flatnonzero(size > 1)
    built = np.zeros(len(merged), dtype=bool)
    if connectivity == 4 and len(merged):
        polygons, built = dissolve(pieces, edges, cancelled, roots, merged)
        done = merged[built]
        yield from _batches(polygons, classes[done], region_sums[done], region_counts[done])
    rest = merged[~built]  # 8-connectivity: GEOS unions of the connected pieces
    if len(rest):
        order = np.argsort(roots, kind="stable")  # one grouping pass, not a scan of all pieces per region
        groups = np.split(order, np.flatnonzero(np.diff(roots[order])) + 1)
        members_of = {int(members[0]): members for members in groups}
        geoms = np.empty(len(rest), dtype=object)
        for k, root in enumerate(rest.tolist()):
            geoms[k] = drop_collinear(shapely.union_all(pieces.take(members_of[root]).to_geoms()))
        yield geoms, classes[rest], region_sums[rest], region_counts[rest]


def _batches(polygons: RaggedPolygons, classes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> Iterator[Regions]:
    """GEOS geometries built a batch at a time, so big merged regions never all exist twice in memory."""
    if not len(polygons):
        return
    vertices = np.cumsum(polygons.vertex_counts())
    cuts = np.searchsorted(vertices, np.arange(MERGED_BATCH_VERTICES, vertices[-1], MERGED_BATCH_VERTICES), "right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(polygons)]]))
    for lo, hi in itertools.pairwise(bounds.tolist()):
        index = np.arange(lo, hi)
        yield polygons.take(index).to_geoms(), classes[index], sums[index], counts[index]


def drop_collinear(geom: Any) -> Any:
    """``geom`` without vertices lying on a straight line between their neighbours (see dissolve)."""
    _, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(shapely.get_parts(geom))
    closed, offsets = drop_collinear_rings(coords, ring_offsets)
    rebuilt = shapely.from_ragged_array(shapely.GeometryType.POLYGON, closed, (offsets, polygon_offsets))
    return rebuilt[0] if len(rebuilt) == 1 else shapely.MultiPolygon(list(rebuilt))


def open_class_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a class raster to polygonize: one band of numbers with a CRS; one-line errors otherwise."""
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        cause = str(exc).split(": ", 1)[-1] if str(exc) else "cannot be read"
        raise GeoSegError(f"cannot open as a raster ({cause})", path) from exc
    problem = None
    if src.count != 1:
        problem = f"has {src.count} bands; a class raster has one band of class ids"
    elif np.dtype(src.dtypes[0]).kind not in "uif":
        problem = f"not a categorical raster: pixel type {src.dtypes[0]}"
    elif src.crs is None:
        problem = "no CRS: polygons would have no location"
    elif src.transform == Affine.identity():
        problem = "no geotransform: polygons would have no location"
    if problem:
        src.close()
        raise GeoSegError(problem, path)
    return src


def iter_polygonize(
    path: str,
    chunk: int = 1024,
    skip_classes: set[int] | None = None,
    connectivity: Connectivity = 4,
    confidence: tuple[str, int] | None = None,
    map_fn: MapFn = map,
) -> Iterator[ClassPolygons]:
    """Polygonize a categorical raster in ``chunk`` x ``chunk`` windows, yielding batches of final polygons.

    Together the batches are exactly the polygons of a whole-raster polygonize. Inner polygons of a chunk are
    yielded as the chunk finishes, so a caller that writes them out holds only the seam pieces in memory.

    Args:
        path: class raster (any integer type, or float holding whole numbers).
        chunk: window side in pixels; peak memory scales with it, not with the raster.
        skip_classes: class ids that produce no polygons (background); nodata never does.
        connectivity: 4 (edges) or 8 (edges and corners), as in ``gdal_polygonize``.
        confidence: (raster, band) whose mean over each polygon becomes its ``confidence``.
        map_fn: how chunks are run (``map`` here, or a Ray map from :mod:`geoseg.vector.parallel`).
    """
    if chunk < 1:
        raise GeoSegError(f"chunk must be >= 1 pixel, got {chunk}")
    if connectivity not in (4, 8):
        raise GeoSegError(f"connectivity must be 4 or 8, got {connectivity}")
    with open_class_raster(path) as src:
        transform, crs, names = src.transform, src.crs, class_names_from_tags(src.tags())
        width, height = src.width, src.height
        windows = list(chunk_windows(width, height, chunk))
    conf_path, conf_band = confidence if confidence else (None, 1)
    skip = frozenset(skip_classes or ())
    jobs = (ChunkJob(str(path), w, skip, connectivity, conf_path, conf_band) for w in windows)
    matrix = np.array([[transform.a, transform.d], [transform.b, transform.e]])
    offset = np.array([transform.c, transform.f])
    pixel_size = min(abs(transform.a), abs(transform.e)) or 1.0
    seams = Seams.of(width, height, chunk)
    for geoms, classes, conf_sum, count in iter_regions(map_fn(polygonize_chunk, jobs), seams, connectivity):
        mean_confidence = None
        if confidence:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_confidence = conf_sum / count
        geometries = shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy @ matrix + offset)
        yield ClassPolygons(
            geometries, np.asarray(classes, dtype=np.int64), crs, names, mean_confidence, pixel_size, connectivity
        )


def polygonize(
    path: str,
    chunk: int = 1024,
    skip_classes: set[int] | None = None,
    connectivity: Connectivity = 4,
    confidence: tuple[str, int] | None = None,
    map_fn: MapFn = map,
) -> ClassPolygons:
    """All polygons of :func:`iter_polygonize` at once (for callers that need them together)."""
    batches = list(iter_polygonize(path, chunk, skip_classes, connectivity, confidence, map_fn))
    with rasterio.open(path) as src:
        crs, names, t = src.crs, class_names_from_tags(src.tags()), src.transform
    if not batches:
        return ClassPolygons(
            np.empty(0, dtype=object),
            np.empty(0, dtype=np.int64),
            crs,
            names,
            np.empty(0) if confidence else None,
            min(abs(t.a), abs(t.e)) or 1.0,
            connectivity,
        )
    return concat(batches)


def concat(batches: list[ClassPolygons]) -> ClassPolygons:
    first = batches[0]
    confidence = None if first.confidence is None else np.concatenate([b.confidence for b in batches])
    return replace(
        first,
        geometries=np.concatenate([b.geometries for b in batches]),
        class_ids=np.concatenate([b.class_ids for b in batches]),
        confidence=confidence,
    )
