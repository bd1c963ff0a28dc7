"""Compare a predicted class raster with truth (a class raster or polygons), window by window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.windows import transform as window_transform

from geoseg.errors import GeoSegError
from geoseg.io.raster import on_grid, warp_to_grid
from geoseg.io.vectors import is_vector, read_class_polygons
from geoseg.metrics import confusion_matrix, summarize
from geoseg.vectorize import class_names_from_tags, polygonize

MAX_CLASSES = 256  # any uint8 id; nodata comes from the rasters' masks, not from a reserved value


def evaluate(pred_path: str | Path, truth_path: str | Path, class_field: str = "class_id") -> dict[str, Any]:
    """Metrics of ``pred_path`` against ``truth_path``; truth is brought onto the prediction's grid.

    Raster truth on another grid is warped (nearest) on the fly; vector truth is rasterised per window.
    Pixels that are nodata in either raster are left out.
    """
    pred_path, truth_path = Path(pred_path), Path(truth_path)
    cm = np.zeros((MAX_CLASSES, MAX_CLASSES), dtype=np.int64)
    try:
        pred = rasterio.open(pred_path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeoSegError("cannot open prediction raster", pred_path) from exc
    with pred:
        names = class_names_from_tags(pred.tags())
        if is_vector(truth_path):
            truth_frame = read_class_polygons(truth_path, class_field, pred.crs)
            shapes = list(zip(truth_frame.geometry, truth_frame[class_field].astype(int), strict=True))
            for _, window in pred.block_windows(1):
                p = pred.read(1, window=window)
                t = features.rasterize(
                    shapes,
                    out_shape=p.shape,
                    transform=window_transform(window, pred.transform),
                    fill=-1,
                    dtype="int32",
                )
                valid = (t >= 0) & (pred.read_masks(1, window=window) > 0)
                cm += confusion_matrix(p, t, MAX_CLASSES, valid)
        else:
            try:
                truth_src = rasterio.open(truth_path)
            except rasterio.errors.RasterioIOError as exc:
                raise GeoSegError("cannot open truth raster", truth_path) from exc
            with truth_src:
                names = class_names_from_tags(truth_src.tags()) | names
                truth = (
                    truth_src
                    if on_grid(truth_src, pred.crs, pred.transform, pred.width, pred.height)
                    else warp_to_grid(truth_src, pred.crs, pred.transform, pred.width, pred.height)
                )
                for _, window in pred.block_windows(1):
                    p = pred.read(1, window=window)
                    t = truth.read(1, window=window)
                    valid = truth.read_masks(1, window=window) > 0
                    valid &= pred.read_masks(1, window=window) > 0
                    if t.dtype.kind == "f":
                        t = np.where(valid, t, 0).astype(np.int64)
                    cm += confusion_matrix(p, t, MAX_CLASSES, valid)
    used = np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1))
    if not len(used):
        raise GeoSegError("prediction and truth share no valid pixels", truth_path)
    size = int(used.max()) + 1
    metrics = summarize(cm[:size, :size], names)
    if len(used) == 2:  # binary (buildings vs background): also score whole objects, SpaceNet style
        metrics["objects"] = object_f1(pred_path, truth_path, int(used.max()), class_field)
    return metrics


def _class_polygons(path: Path, positive: int, class_field: str, crs: Any) -> np.ndarray:
    if is_vector(path):
        frame = read_class_polygons(path, class_field, crs)
        return frame.geometry[frame[class_field].astype(int) == positive].to_numpy()
    polygons = polygonize(str(path), chunk=2048)
    return polygons.geometries[polygons.class_ids == positive]


def object_f1(
    pred_path: Path, truth_path: Path, positive: int, class_field: str = "class_id", iou_threshold: float = 0.5
) -> dict[str, Any]:
    """Object-level precision/recall/F1: a predicted polygon is a true positive when it overlaps a not yet
    matched truth polygon with IoU >= ``iou_threshold`` (pairs taken in order of decreasing IoU, one-to-one)."""
    with rasterio.open(pred_path) as src:
        crs = src.crs
    pred = _class_polygons(Path(pred_path), positive, class_field, crs)
    truth = _class_polygons(Path(truth_path), positive, class_field, crs)
    matches = 0
    if len(pred) and len(truth):
        p_idx, t_idx = shapely.STRtree(truth).query(pred, predicate="intersects")
        inter = shapely.area(shapely.intersection(pred[p_idx], truth[t_idx]))
        iou = inter / (shapely.area(pred[p_idx]) + shapely.area(truth[t_idx]) - inter)
        used_p: set[int] = set()
        used_t: set[int] = set()
        for k in np.argsort(-iou, kind="stable"):
            if iou[k] < iou_threshold:
                break
            if p_idx[k] not in used_p and t_idx[k] not in used_t:
                used_p.add(int(p_idx[k]))
                used_t.add(int(t_idx[k]))
                matches += 1
    precision = matches / len(pred) if len(pred) else 0.0
    recall = matches / len(truth) if len(truth) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "class_id": positive,
        "iou_threshold": iou_threshold,
        "predicted": len(pred),
        "truth": len(truth),
        "matched": matches,
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
    }
