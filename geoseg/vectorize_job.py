"""``geoseg vectorize`` and ``predict --vectorize``: polygonize (on Ray when it pays), clean up, export."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rasterio

from geoseg.cluster import ray_session
from geoseg.export import to_geodataframe, write_polygons
from geoseg.refine import drop_small, fill_holes, simplify_shared_edges
from geoseg.vectorize import ClassPolygons, Connectivity, polygonize

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
) -> ClassPolygons:
    """Polygonize ``mask`` once and write every path in ``outputs``; chunks run on Ray when there are enough."""
    confidence = confidence_source(mask) if options.confidence else None
    with rasterio.open(mask) as src:
        chunks = math.ceil(src.width / options.chunk) * math.ceil(src.height / options.chunk)
    args = (str(mask), options.chunk, set(options.skip_classes), options.connectivity, confidence)
    if (workers is None or workers > 1) and chunks >= PARALLEL_MIN_CHUNKS:
        from geoseg.parallel import ray_map

        with ray_session(ray_address, num_cpus=workers):
            polygons = polygonize(*args, map_fn=ray_map)
    else:
        polygons = polygonize(*args)
    polygons = simplify_shared_edges(polygons, options.simplify)
    polygons = fill_holes(polygons, options.fill_holes_m2)
    polygons = drop_small(polygons, options.min_area_m2)
    scale = None if confidence is None else 1 / 254  # probability rasters store p x 254
    frame = to_geodataframe(polygons)
    if scale is not None and "confidence" in frame:
        frame["confidence"] = (frame["confidence"] * scale).round(4)
    for output in outputs:
        write_polygons(frame, output, options.to_crs, options.fmt)
    return polygons
