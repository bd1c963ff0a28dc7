"""``geoseg vectorize`` and ``predict --vectorize``: polygonize (on Ray when it pays), clean up, export."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import rasterio
from rich.console import Console

from geoseg.cluster import ray_session
from geoseg.errors import GeoSegError
from geoseg.io.guard import refuse_foreign
from geoseg.io.styles import class_table
from geoseg.progress import meter
from geoseg.vector.export import PolygonWriter, to_geodataframe
from geoseg.vector.polygonize import (
    ChunkJob,
    ChunkPieces,
    ClassPolygons,
    MapFn,
    VectorizeOptions,
    concat,
    iter_polygonize,
    open_class_raster,
    polygonize,
)
from geoseg.vector.refine import absorb_holes, pixel_threshold, sieve_raster, simplify_shared_edges

# Below this many megapixels, with no cluster or worker count given, chunks run in this process. Measured
# (benchmarks/small_jobs.py, 2 vCPUs, whole command): Ray (2 workers) / in-process wall 3.85 at 4 Mpx, 1.97 at
# 16, 1.42 at 32; extrapolated crossover ~50 Mpx on 2 cores (lower with more cores, which Ray can use).
PARALLEL_MIN_MPX = 48.0


def confidence_source(mask: Path) -> tuple[str, int] | None:
    """The ``confidence`` band of ``<stem>_probabilities.tif`` beside a geoseg class raster, if there is one."""
    probabilities = mask.with_name(f"{mask.stem}_probabilities.tif")
    if not probabilities.exists():
        return None
    with rasterio.open(probabilities) as src:
        if src.descriptions[-1] != "confidence":
            return None
        return str(probabilities), src.count


GEOSEG_FIELDS = frozenset({"class_id", "class_name", "area_m2"})


def _layers(path: Path) -> dict[str, set[str]] | None:
    """Each layer's fields (but QGIS's ``layer_styles``); None when GDAL cannot open the file as vectors."""
    import pyogrio

    try:
        names = [str(name) for name, _ in pyogrio.list_layers(path) if str(name) != "layer_styles"]
        return {name: set(pyogrio.read_info(path, layer=name)["fields"]) for name in names}
    except Exception:  # not a vector file GDAL can open
        return None


def is_geoseg_vector(path: Path) -> bool:
    """Polygons geoseg may write at ``path``: a vector file whose every layer has the class fields geoseg
    writes (a rerun replaces it), or a GeoPackage whose layer of geoseg's name (the file's stem) is absent or
    geoseg's: there geoseg adds or replaces that one layer and keeps every other, as ``gdal_polygonize.py``
    does. A layer of that name holding someone's data, or any other file, is refused."""
    layers = _layers(path)
    if not layers:
        return False
    if path.suffix.lower() == ".gpkg":
        own = layers.get(path.stem)
        return own is None or own >= GEOSEG_FIELDS
    return all(fields >= GEOSEG_FIELDS for fields in layers.values())


def vectorize_raster(
    mask: Path,
    outputs: Sequence[Path],
    options: VectorizeOptions,
    workers: int | None = None,
    ray_address: str | None = None,
    console: Console | None = None,
) -> int:
    """Polygonize ``mask`` once into every path in ``outputs``; returns the number of polygons.

    Polygons are cleaned and written batch by batch as chunks finish (chunks run on Ray when there are
    enough), so memory holds one chunk's polygons plus the pieces waiting at chunk seams. Hole filling and
    shared-edge simplification need all polygons together and are the options that hold them all. A minimum
    mapping unit sieves the raster first (see :mod:`geoseg.vector.refine`), so the polygons stay a partition.
    ``console``: where progress goes (none when called per scene by ``predict``, which has its own).
    """
    for out in outputs:  # an existing file is replaced only if it is polygons geoseg wrote
        refuse_foreign(out, is_geoseg_vector, "geoseg polygons")
    confidence = confidence_source(mask) if options.confidence else None
    with open_class_raster(mask) as src:  # one-line errors before any work (or Ray) starts
        chunks = math.ceil(src.width / options.chunk) * math.ceil(src.height / options.chunk)
        megapixels = src.width * src.height / 1e6
        styles = class_table(src)
        crs = src.crs
        if options.min_area_m2 > 0:
            covered = pixel_threshold(src.transform, src.crs, src.width, src.height, options.min_area_m2)
            if covered >= src.width * src.height:
                raise GeoSegError(
                    f"--min-area {options.min_area_m2:g} m2 is at least the whole raster's area "
                    f"({src.width * src.height} pixels): every region would be below the minimum mapping unit",
                    mask,
                )
    colors = {c.id: c.hex for c in styles}
    if workers is None:
        parallel = chunks > 1 and (ray_address is not None or megapixels > PARALLEL_MIN_MPX)
    else:
        parallel = workers > 1 and chunks > 1
    with contextlib.ExitStack() as stack:
        source = str(mask)
        if options.min_area_m2 > 0:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="geoseg-sieve-")))
            source = str(sieve_raster(mask, scratch / "sieved.tif", options.min_area_m2, options.connectivity))
        args = (source, options.chunk, set(options.skip_classes), options.connectivity, confidence)
        map_fn: MapFn = map
        if parallel:
            from geoseg.vector.parallel import ray_map

            stack.enter_context(ray_session(ray_address, num_cpus=workers))
            map_fn = ray_map
        writers = [PolygonWriter(out, options.to_crs, options.fmt, styles) for out in outputs]
        for writer in writers:
            stack.callback(writer.abort)  # no-op after close; removes staging on any error
            writer.check_source(crs)
        bar = stack.enter_context(meter(console, "vectorize", chunks, "chunks")) if console else None

        def counted(fn: Callable[[ChunkJob], ChunkPieces], jobs: Iterable[ChunkJob]) -> Iterator[ChunkPieces]:
            for pieces in map_fn(fn, jobs):
                if bar is not None:
                    bar.advance(1)
                yield pieces

        batches: Iterable[ClassPolygons] = iter_polygonize(*args, map_fn=counted)
        if options.fill_holes_m2 > 0 or options.simplify > 0:
            whole = absorb_holes(concat(list(batches)), options.fill_holes_m2)
            batches = [simplify_shared_edges(whole, options.simplify)]
        total, seen = 0, False
        for batch in batches:
            seen = True
            frame = to_geodataframe(batch)
            if confidence is not None and "confidence" in frame:
                frame["confidence"] = (frame["confidence"] / 254).round(4)  # probability rasters store p x 254
            if colors:
                frame["color"] = frame["class_id"].map(colors)
            for writer in writers:
                writer.write(frame)
            total += len(frame)
        if not seen:  # nothing to polygonize: still publish an (empty) layer with the usual fields
            for writer in writers:
                writer.write(to_geodataframe(polygonize(*args)))
        if bar is not None:
            bar.describe("writing " + ", ".join(str(w.out) for w in writers))
        for writer in writers:
            writer.close()
    return total
