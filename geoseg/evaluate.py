"""Compare a predicted class raster with truth (a class raster or polygons), window by window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.windows import transform as window_transform

from geoseg.errors import GeoSegError
from geoseg.io.raster import onto_grid
from geoseg.io.vectors import is_vector, read_class_polygons, read_polygons
from geoseg.io.writer import class_names_from_tags
from geoseg.metrics import summarize
from geoseg.vector.polygonize import polygonize


def _open(path: Path, role: str) -> rasterio.DatasetReader:
    """Open a class raster (``role``: prediction or truth) with one-line errors for what makes it unusable."""
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        cause = str(exc).split(": ", 1)[-1] if str(exc) else "cannot be read"
        raise GeoSegError(f"cannot open the {role} raster ({cause})", path) from exc
    if src.transform == Affine.identity():
        gcps = bool(src.gcps[0])
        src.close()
        if gcps:
            raise GeoSegError(f"the {role} is georeferenced by ground control points only: warp it first", path)
        raise GeoSegError(f"the {role} has no geotransform: its pixels have no position", path)
    if src.crs is None:
        src.close()
        raise GeoSegError(f"the {role} has no CRS", path)
    if np.dtype(src.dtypes[0]).kind not in "uif":
        src.close()
        raise GeoSegError(f"the {role} has pixel type {src.dtypes[0]}, not class ids", path)
    return src


def _class_ids(values: np.ndarray, valid: np.ndarray, path: Path, role: str) -> np.ndarray:
    """Class ids as int64, exactly: fractional values and (in truth) negative ids are refused, not rounded or
    wrapped; NaN is no class and leaves ``valid``."""
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)
        ids = values[valid]
        if not np.all(np.isfinite(ids) & (ids == np.round(ids))):
            raise GeoSegError(f"the {role} holds fractional values: not a class raster", path)
    ids = values[valid]
    if ids.size and ids.min() < 0:
        raise GeoSegError(
            f"the {role} holds negative class ids ({int(ids.min())}) and no nodata value: declare its nodata "
            "(gdal_edit.py -a_nodata) or remap its ids",
            path,
        )
    return np.where(valid, values, 0).astype(np.int64)


class _Confusion:
    """Counts of (truth id, predicted id) pairs over any ids, exactly (not capped at 255)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[int, int], int] = {}

    def add(self, truth: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> None:
        keys = np.stack([truth[valid], pred[valid]], axis=1)
        if not len(keys):
            return
        unique, counts = np.unique(keys, axis=0, return_counts=True)
        for (t, p), n in zip(unique.tolist(), counts.tolist(), strict=True):
            self.pairs[(t, p)] = self.pairs.get((t, p), 0) + n

    def matrix(self) -> tuple[np.ndarray, list[int]]:
        """The confusion matrix over ``0..max id`` when every id fits a class raster (0-255), else over the ids
        seen; and the id of each row/column."""
        ids = sorted({i for pair in self.pairs for i in pair})
        if ids and ids[-1] <= 255:
            ids = list(range(ids[-1] + 1))
        index = {c: k for k, c in enumerate(ids)}
        cm = np.zeros((len(ids), len(ids)), dtype=np.int64)
        for (t, p), n in self.pairs.items():
            cm[index[t], index[p]] += n
        return cm, ids

    def over(self, ids: list[int]) -> np.ndarray:
        """The matrix over exactly ``ids`` (rows: truth): pairs with another id (truth outside the classes a
        model was trained on) are left out, as training leaves them out."""
        index = {c: k for k, c in enumerate(ids)}
        cm = np.zeros((len(ids), len(ids)), dtype=np.int64)
        for (t, p), n in self.pairs.items():
            if t in index and p in index:
                cm[index[t], index[p]] += n
        return cm


def _remapped(ids: np.ndarray, remap: dict[int, int] | None) -> np.ndarray:
    """Truth ids translated by ``remap`` (all at once: ``{0: 1, 1: 0}`` swaps, it does not chain)."""
    if not remap:
        return ids
    out = ids.copy()
    for old, new in remap.items():
        out[ids == old] = new
    return out


class _Region:
    """Which prediction pixels are scored: those inside polygons, or a mask raster's pixels whose value is in
    ``values`` (any non-zero value by default); brought onto the prediction's grid like the truth."""

    def __init__(self, path: Path, pred: rasterio.DatasetReader, values: set[int] | None) -> None:
        self.path, self.values, self.pred = path, values, pred
        self._shapes: list[Any] | None = None
        self._src: Any = None
        self._file: rasterio.DatasetReader | None = None
        if is_vector(path):
            frame = read_polygons(path, pred.crs)
            self._shapes = [(g, 1) for g in frame.geometry if g is not None and not g.is_empty]
        else:
            src = self._file = _open(path, "region")
            self._src = onto_grid(src, pred.crs, pred.transform, pred.width, pred.height)

    def mask(self, window: Any, shape: tuple[int, int]) -> np.ndarray:
        if self._shapes is not None:
            if not self._shapes:
                return np.zeros(shape, dtype=bool)
            transform = window_transform(window, self.pred.transform)
            return features.rasterize(self._shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8") > 0
        values = self._src.read(1, window=window)
        inside = self._src.read_masks(1, window=window) > 0
        chosen = np.isin(values, sorted(self.values)) if self.values is not None else values != 0
        return inside & chosen

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def confusion(
    pred_path: str | Path,
    truth_path: str | Path,
    class_field: str = "class_id",
    remap: dict[int, int] | None = None,
    background: int | None = None,
    region: str | Path | None = None,
    region_values: set[int] | None = None,
) -> tuple[_Confusion, dict[int, str]]:
    """The (truth, prediction) pair counts behind :func:`evaluate`, and the class names the rasters carry;
    counts of several scenes can be pooled (training's test set)."""
    pred_path, truth_path = Path(pred_path), Path(truth_path)
    counts = _Confusion()
    with _open(pred_path, "prediction") as pred:
        if pred.count != 1:
            raise GeoSegError(f"the prediction has {pred.count} bands; a class raster has one", pred_path)
        names = class_names_from_tags(pred.tags())
        scored = _Region(Path(region), pred, region_values) if region is not None else None
        try:
            if is_vector(truth_path):
                truth_frame = read_class_polygons(truth_path, class_field, pred.crs)
                shapes = list(zip(truth_frame.geometry, truth_frame[class_field].astype(int), strict=True))
                for _, window in pred.block_windows(1):
                    p = pred.read(1, window=window)
                    t = features.rasterize(
                        shapes,
                        out_shape=p.shape,
                        transform=window_transform(window, pred.transform),
                        fill=-1 if background is None else background,
                        dtype="int32",
                    )
                    valid = (t >= 0) & (pred.read_masks(1, window=window) > 0)
                    if scored is not None:
                        valid &= scored.mask(window, p.shape)
                    t_ids = _remapped(t.astype(np.int64), remap)
                    counts.add(t_ids, _class_ids(p, valid, pred_path, "prediction"), valid)
            else:
                with _open(truth_path, "truth") as truth_src:
                    if truth_src.count != 1:
                        raise GeoSegError(f"the truth has {truth_src.count} bands; a class raster has one", truth_path)
                    names = class_names_from_tags(truth_src.tags()) | names
                    truth = onto_grid(truth_src, pred.crs, pred.transform, pred.width, pred.height)
                    for _, window in pred.block_windows(1):
                        p = pred.read(1, window=window)
                        t = truth.read(1, window=window)
                        valid = truth.read_masks(1, window=window) > 0
                        valid &= pred.read_masks(1, window=window) > 0
                        if scored is not None:
                            valid &= scored.mask(window, p.shape)
                        t_ids = _remapped(_class_ids(t, valid, truth_path, "truth"), remap)
                        counts.add(t_ids, _class_ids(p, valid, pred_path, "prediction"), valid)
        finally:
            if scored is not None:
                scored.close()
    return counts, names


def evaluate(
    pred_path: str | Path,
    truth_path: str | Path,
    class_field: str = "class_id",
    remap: dict[int, int] | None = None,
    background: int | None = None,
    region: str | Path | None = None,
    region_values: set[int] | None = None,
) -> dict[str, Any]:
    """Metrics of ``pred_path`` against ``truth_path``; truth is brought onto the prediction's grid.

    Raster truth on another grid is warped (nearest) on the fly; vector truth is rasterised per window.
    Pixels that are nodata in either raster (or NaN) are left out; class ids are taken exactly, whatever
    their range (ids above 255 have their own rows; the matrix then lists its ``class_ids``).

    ``remap``: truth ids translated before scoring (a 0/255 building mask scored as 0/1: ``{255: 1}``).
    ``background``: with polygon truth, the class of every valid prediction pixel no polygon covers (building
    footprints give no background polygons; without it only the footprints' pixels are scored).
    ``region``: score only the pixels inside these polygons, or the pixels of this raster whose value is in
    ``region_values`` (default: non-zero): a test region of a larger prediction, e.g. ``geoseg train``'s
    ``split/<scene>.tif`` with value 2 (test).
    """
    counts, names = confusion(pred_path, truth_path, class_field, remap, background, region, region_values)
    cm, ids = counts.matrix()
    if not counts.pairs:
        where = "inside the region" if region is not None else "(no overlap, or all nodata)"
        raise GeoSegError(f"prediction and truth share no valid pixels {where}", truth_path)
    metrics = summarize(cm, names, ids)
    present = [i for i, c in enumerate(ids) if cm[i].sum() + cm[:, i].sum()]
    if len(present) == 2 and region is None:  # binary (buildings vs background): whole objects, SpaceNet style
        metrics["objects"] = object_f1(Path(pred_path), Path(truth_path), ids[present[-1]], class_field)
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
