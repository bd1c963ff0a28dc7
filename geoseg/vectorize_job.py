"""``geoseg vectorize`` and ``predict --vectorize``: polygonize (on Ray when it pays), clean up, export."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rasterio

from geoseg.cluster import ray_session
from geoseg.export import PolygonWriter, to_geodataframe
from geoseg.refine import drop_small, fill_holes, simplify_shared_edges
from geoseg.vectorize import (
    ClassPolygons,
    Connectivity,
    MapFn,
    concat,
    iter_polygonize,
    open_class_raster,
    polygonize,
)

PARALLEL_MIN_CHUNKS = 4  # below this, starting Ray costs more than it saves


@dataclass(frozen=True)
class VectorizeOptions:
    """The CLI's vectorize options."""

    chunk: int = 1024
    skip_classes: frozenset[int] = field(default_factory=frozenset)
    connectivity: Connectivity = 4
    simplify: float = 0.0
    min_area_m2: float = 0.0
    fill_holes_m2: float = 0.0
    to_crs: str | None = None
    fmt: str | None = None
    confidence: bool = True


def confidence_source(mask: Path) -> tuple[str, int] | None:
    """The ``confidence`` band of ``<stem>_probabilities.tif`` beside a geoseg class raster, if there is one."""
    probabilities = mask.with_name(f"{mask.stem}_probabilities.tif")
    if not probabilities.exists():
        return None
    with rasterio.open(probabilities) as src:
        if src.descriptions[-1] != "confidence":
            return None
        return str(probabilities), src.count


def vectorize_raster(
    mask: Path,
    outputs: Sequence[Path],
    options: VectorizeOptions,
    workers: int | None = None,
    ray_address: str | None = None,
) -> int:
    """Polygonize ``mask`` once into every path in ``outputs``; returns the number of polygons.

    Polygons are cleaned and written batch by batch as chunks finish (chunks run on Ray when there are
    enough), so memory holds one chunk's polygons plus the pieces waiting at chunk seams. Shared-edge
    simplification needs all polygons together and is the one option that holds them all.
    """
    confidence = confidence_source(mask) if options.confidence else None
    with open_class_raster(mask) as src:  # one-line errors before any work (or Ray) starts
        chunks = math.ceil(src.width / options.chunk) * math.ceil(src.height / options.chunk)
    args = (str(mask), options.chunk, set(options.skip_classes), options.connectivity, confidence)
    parallel = (workers is None or workers > 1) and chunks >= PARALLEL_MIN_CHUNKS
    with contextlib.ExitStack() as stack:
        map_fn: MapFn = map
        if parallel:
            from geoseg.parallel import ray_map

            stack.enter_context(ray_session(ray_address, num_cpus=workers))
            map_fn = ray_map
        writers = [PolygonWriter(out, options.to_crs, options.fmt) for out in outputs]
        for writer in writers:
            stack.callback(writer.abort)  # no-op after close; removes staging on any error
        batches: Iterable[ClassPolygons] = iter_polygonize(*args, map_fn=map_fn)
        if options.simplify > 0:
            batches = [simplify_shared_edges(concat(list(batches)), options.simplify)]
        total, seen = 0, False
        for batch in batches:
            seen = True
            batch = drop_small(fill_holes(batch, options.fill_holes_m2), options.min_area_m2)
            frame = to_geodataframe(batch)
            if confidence is not None and "confidence" in frame:
                frame["confidence"] = (frame["confidence"] / 254).round(4)  # probability rasters store p x 254
            for writer in writers:
                writer.write(frame)
            total += len(frame)
        if not seen:  # nothing to polygonize: still publish an (empty) layer with the usual fields
            for writer in writers:
                writer.write(to_geodataframe(polygonize(*args)))
        for writer in writers:
            writer.close()
    return total
