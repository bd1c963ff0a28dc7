"""Training data: patches sampled from large scenes by windowed reads, labels from rasters or polygons.

Nothing reads a whole scene: random training windows and a validation grid are read on demand, label
polygons are rasterised per window, and label rasters on another grid are warped per window. Pixels that
are nodata in the image, unlabelled, or of an unknown class become ``ignore_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
from affine import Affine
from numpy.typing import ArrayLike
from rasterio import features
from rasterio.enums import Resampling
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from geoseg.errors import GeoSegError
from geoseg.io.normalisation import Normalisation
from geoseg.io.paths import is_virtual
from geoseg.io.raster import PadMode, SceneInfo, onto_grid, open_scene, read_tile
from geoseg.io.vectors import is_vector, read_class_polygons
from geoseg.training.config import TrainConfig
from geoseg.training.split import (
    BUFFER,
    TEST,
    TRAIN,
    VAL,
    RoleMap,
    apply_buffer,
    block_roles,
    cell_size,
    region_cells,
    strip_roles,
)


@dataclass(frozen=True)
class TrainScene:
    """A scene and the part of it that belongs to one set: ``role`` cells of ``roles``, within ``region``."""

    info: SceneInfo
    labels: Path
    label_field: str
    region: Window  # the smallest window holding every pixel of the set
    roles: RoleMap
    role: int = TRAIN


@dataclass(frozen=True)
class Split:
    """The three spatial sets (see :mod:`geoseg.training.split`); ``test`` is empty when none is configured."""

    train: list[TrainScene]
    val: list[TrainScene]
    test: list[TrainScene]


def split_scenes(config: TrainConfig, buffer: int | None = None) -> Split:
    """Train / validation / test sets of the configured scenes (see :mod:`geoseg.training.split`).

    ``buffer``: pixels between sets; ``data.buffer`` wins, and one of them must be set when the sets share a
    scene (the trainer passes the model's receptive field).
    """
    data = config.data
    scenes = []
    for image, labels, field in config.scene_pairs():
        info = open_scene(image)
        if not is_virtual(str(labels)) and not labels.exists():  # objects in a bucket: opening names a missing one
            raise GeoSegError("label file not found", labels)
        scenes.append((info, labels, field))
    val_share = 0.0 if data.val_region else data.val_fraction
    test_share = 0.0 if data.test_region else data.test_fraction
    scene_roles = [TRAIN] * len(scenes)
    if data.split == "scene":
        n_test = max(1, round(len(scenes) * test_share)) if test_share else 0
        n_val = max(1, round(len(scenes) * val_share)) if val_share else 0
        if n_test + n_val >= len(scenes):
            raise GeoSegError(
                f"data.split=scene needs more than {n_test + n_val} scenes; use data.split=region or blocks"
            )
        for k in range(n_val):
            scene_roles[len(scenes) - 1 - k] = VAL
        for k in range(n_test):
            scene_roles[len(scenes) - 1 - n_val - k] = TEST
    root = Path(data.root)
    radius = data.buffer if data.buffer is not None else buffer
    out = Split([], [], [])
    for (info, labels, field), scene_role in zip(scenes, scene_roles, strict=True):
        cell = cell_size(info.width, info.height)
        roles = RoleMap.constant(scene_role, info.width, info.height).roles
        named = np.zeros(roles.shape, dtype=np.uint8)  # the regions a user names win; the method splits the rest
        if data.val_region:
            named[region_cells(data.val_region, info, cell, root)] = VAL + 1
        if data.test_region:
            named[region_cells(data.test_region, info, cell, root)] = TEST + 1
        if data.split == "region":
            roles = strip_roles(named == 0, (val_share, test_share))
        elif data.split == "blocks":
            block_cells = max(1, round(data.block_size / cell))
            shares = (val_share, test_share)
            roles = block_roles(named == 0, block_cells, shares, data.block_layout, data.split_seed)
        roles = np.where(named > 0, named - 1, roles).astype(np.uint8)
        if len(np.unique(roles)) > 1:
            if radius is None:
                raise GeoSegError("data.buffer is needed when sets share a scene", info.path)
            roles = apply_buffer(roles, math.ceil(radius / cell))
        role_map = RoleMap(roles, cell, info.width, info.height)
        for role, members in ((TRAIN, out.train), (VAL, out.val), (TEST, out.test)):
            window = role_map.bounding_window(role)
            if window is not None:
                members.append(TrainScene(info, labels, field, window, role_map, role))
    if not out.train:
        raise GeoSegError("the split leaves no training pixel (shares, regions and buffer take everything)")
    if not out.val:
        raise GeoSegError(
            "the split leaves no validation pixel (the buffer took it, or data.val_region lies outside every scene)"
        )
    if (data.test_region or data.test_fraction) and not out.test:
        raise GeoSegError("the split leaves no test pixel (is data.test_region outside every scene?)")
    return out


def band_statistics(
    scenes: list[TrainScene], bands: list[int], nodata: float | None = None, max_side: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over the training sets' pixels, from a decimated read (bounded memory)."""
    total = np.zeros(len(bands))
    total_sq = np.zeros(len(bands))
    count = 0
    for scene in scenes:
        with rasterio.open(scene.info.path) as src:
            w, h = int(scene.region.width), int(scene.region.height)
            scale = max(1.0, max(w, h) / max_side)
            shape = (len(bands), max(1, int(h / scale)), max(1, int(w / scale)))
            data = src.read(
                bands, window=scene.region, out_shape=shape, out_dtype="float64", resampling=Resampling.nearest
            )
            valid = np.all(
                src.read_masks(bands, window=scene.region, out_shape=shape, resampling=Resampling.nearest) > 0, axis=0
            )
            valid &= np.all(np.isfinite(data), axis=0)
            valid &= scene.roles.sample(scene.region, shape[1:]) == scene.role
            if src.nodata is None and nodata is not None:
                valid &= ~np.any(data == nodata, axis=0)
            pixels = data[:, valid]
            total += pixels.sum(axis=1)
            total_sq += (pixels**2).sum(axis=1)
            count += pixels.shape[1]
    if count == 0:
        raise GeoSegError("training scenes hold no valid pixels")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    return mean, np.where(std > 0, std, 1.0)


class LabelSource:
    """Class indices (model output channels) for any window of a scene's image grid."""

    def __init__(self, scene: TrainScene, class_ids: list[int], ignore_index: int) -> None:
        self.scene, self.ignore_index = scene, ignore_index
        self.lut = np.full(max(max(class_ids) + 1, 256), ignore_index, dtype=np.int64)
        self.lut[class_ids] = np.arange(len(class_ids))
        self._frame: gpd.GeoDataFrame | None = None
        self._raster: Any = None

    def _open(self) -> None:
        path, crs = self.scene.labels, self.scene.info.crs
        if is_vector(path):
            self._frame = read_class_polygons(path, self.scene.label_field, crs)
            return
        src = rasterio.open(path)
        info = self.scene.info
        if src.crs is None:
            raise GeoSegError("label raster has no CRS", path)
        self._raster = onto_grid(src, crs, info.transform, info.width, info.height)

    def reopen(self) -> None:
        """Drop an open label raster (a DataLoader process opens its own); polygons in memory are kept."""
        self._raster = None

    def read(self, window: Window) -> np.ndarray:
        """Label indices for ``window`` (which may extend past the scene: outside is ignore_index)."""
        if self._frame is None and self._raster is None:
            self._open()
        size = (int(window.height), int(window.width))
        if self._frame is not None:
            transform = window_transform(window, self.scene.info.transform)
            bounds = rasterio.windows.bounds(window, self.scene.info.transform)
            hits = self._frame.iloc[self._frame.sindex.query(_box(bounds))]
            values = np.full(size, -1, dtype=np.int32)
            if len(hits):
                shapes = zip(hits.geometry, hits[self.scene.label_field].astype(int), strict=True)
                values = features.rasterize(shapes, out_shape=size, transform=transform, fill=-1, dtype="int32")
            labels = np.where(values >= 0, self.lut[np.clip(values, 0, len(self.lut) - 1)], self.ignore_index)
        else:
            raw, valid = read_tile(self._raster, window, [1], pad_mode="nodata")
            raw = np.where(valid[None], raw, -1)[0]
            ok = valid & (raw >= 0) & (raw < len(self.lut)) & (raw == np.round(raw))
            labels = np.where(ok, self.lut[np.clip(raw, 0, len(self.lut) - 1).astype(np.int64)], self.ignore_index)
        return labels.astype(np.int64)

    def coarse_values(self, region: Window, max_side: int = 512) -> tuple[np.ndarray, tuple[float, float]]:
        """Raw label values over ``region`` at reduced resolution (nearest; -1 where there is no label) and the
        pixels per coarse cell: where each class is, without reading the labels at full resolution."""
        if self._frame is None and self._raster is None:
            self._open()
        height, width = int(region.height), int(region.width)
        scale = max(1.0, max(height, width) / max_side)
        shape = (max(1, int(height / scale)), max(1, int(width / scale)))
        cell = (height / shape[0], width / shape[1])
        if self._frame is not None:
            transform = window_transform(region, self.scene.info.transform) * Affine.scale(cell[1], cell[0])
            hits = self._frame.iloc[
                self._frame.sindex.query(_box(rasterio.windows.bounds(region, self.scene.info.transform)))
            ]
            values = np.full(shape, -1, dtype=np.int64)
            if len(hits):
                shapes = zip(hits.geometry, hits[self.scene.label_field].astype(int), strict=True)
                values = features.rasterize(shapes, out_shape=shape, transform=transform, fill=-1, dtype="int32")
        else:
            raw = self._raster.read(1, window=region, out_shape=shape, resampling=Resampling.nearest)
            valid = self._raster.read_masks(1, window=region, out_shape=shape, resampling=Resampling.nearest) > 0
            ok = valid & (raw >= 0) & (raw == np.round(raw))
            values = np.where(ok, raw, -1).astype(np.int64)
        return values.astype(np.int64), cell

    def coarse(self, region: Window, max_side: int = 512) -> tuple[np.ndarray, tuple[float, float]]:
        """Label indices over ``region`` at reduced resolution (see :meth:`coarse_values`)."""
        values, cell = self.coarse_values(region, max_side)
        known = (values >= 0) & (values < len(self.lut))
        labels = np.where(known, self.lut[np.clip(values, 0, len(self.lut) - 1)], self.ignore_index)
        return labels, cell

    def check(self, region: Window, role: str) -> dict[int, int]:
        """Refuse labels that give no usable pixel in ``region`` (one line naming the file and why); returns the
        label ids found outside the classes (coarse pixel counts), which training ignores.

        The coarse look finds regions of a few pixels only at the scale of its cells, so when it finds no
        usable label the region is read at full resolution before the labels are refused.
        """
        path = self.scene.labels
        try:
            values, _ = self.coarse_values(region)
        except GeoSegError:
            raise
        except Exception as exc:  # a CRS that cannot be transformed, a corrupt file, ...
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise GeoSegError(f"cannot bring the labels onto {self.scene.info.path} ({cause})", path) from exc
        known = (
            (values >= 0)
            & (values < len(self.lut))
            & (self.lut[np.clip(values, 0, len(self.lut) - 1)] != self.ignore_index)
        )
        if not known.any():
            full = self._usable_at_full_resolution(region)
            if not full:
                found = sorted(set(np.unique(values[values >= 0]).tolist()))
                cause = (
                    f"its ids {found[:8]} are none of the config's classes"
                    if found
                    else f"no label covers the {role} part of {self.scene.info.path}"
                )
                raise GeoSegError(f"labels give no usable pixel for {role}: {cause}", path)
        unknown = values[(values >= 0) & ~known]
        ids, counts = np.unique(unknown, return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def _usable_at_full_resolution(self, region: Window, step: int = 2048) -> bool:
        top, left = int(region.row_off), int(region.col_off)
        for row in range(top, top + int(region.height), step):
            for col in range(left, left + int(region.width), step):
                window = Window(
                    col, row, min(step, left + int(region.width) - col), min(step, top + int(region.height) - row)
                )
                if (self.read(window) != self.ignore_index).any():
                    return True
        return False


def _box(bounds: tuple[float, float, float, float]) -> Any:
    from shapely.geometry import box

    return box(*bounds)


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90 degrees: exact on pixel grids (no interpolation)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


class BandJitter(v2.Transform):
    """Per-band brightness and contrast on normalised images (ColorJitter only knows RGB); masks untouched."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        bands = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)).shape[-3]
        return {
            "shift": torch.empty(bands, 1, 1).uniform_(-self.brightness, self.brightness),
            "scale": torch.empty(bands, 1, 1).uniform_(1 - self.contrast, 1 + self.contrast),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(inpt * params["scale"] + params["shift"], like=inpt)


def augmentation(ignore_index: int = 255) -> v2.Transform:
    """Flips and 90-degree rotations (exact), a small random affine on 30 % of patches, per-band jitter.

    Masks go through the same geometric transforms (nearest neighbour); pixels the affine pulls in from
    outside the patch are ``ignore_index`` in the mask, so they teach the model nothing.
    """
    affine = v2.RandomAffine(
        degrees=10,
        translate=(0.05, 0.05),
        scale=(0.9, 1.1),
        fill={tv_tensors.Image: 0.0, tv_tensors.Mask: ignore_index},
    )
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
            v2.RandomApply([affine], p=0.3),
            BandJitter(),
        ]
    )


class PatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Patches of ``size`` pixels: random windows (training) or a regular grid (validation).

    Random windows are drawn from a generator seeded by (seed, epoch, index), so every DDP rank and every
    restart after a crash sees the same sequence; call :meth:`set_epoch` each epoch for fresh windows.
    """

    def __init__(
        self,
        scenes: list[TrainScene],
        class_ids: list[int],
        bands: list[int],
        mean: ArrayLike,
        std: ArrayLike,
        size: int,
        *,
        count: int | None = None,
        stride: int | None = None,
        augment: bool = False,
        balance: bool = False,
        ignore_index: int = 255,
        nodata: float | None = None,
        seed: int = 0,
        pad_mode: PadMode = "reflect",
    ) -> None:
        self.scenes, self.size, self.bands = scenes, size, bands
        # The same contract as prediction (geoseg.io.normalisation): train/serve skew cannot creep in.
        band_count = scenes[0].info.count if scenes else len(bands)
        self.norm = Normalisation.of(bands, np.asarray(mean), np.asarray(std), band_count, nodata)
        self.ignore_index, self.nodata, self.seed, self.pad_mode = ignore_index, nodata, seed, pad_mode
        self.labels = [LabelSource(s, class_ids, ignore_index) for s in scenes]
        self.transform = augmentation(ignore_index) if augment else None
        # In shared memory: persistent DataLoader processes (forked or spawned) see set_epoch() of the trainer.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._sources: dict[int, Any] = {}
        self._class_cells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float]]]] = {}
        if count is None:  # validation grid over each set's window, windows that hold a pixel of the set
            step = stride or size
            self.grid = [
                (i, window)
                for i, s in enumerate(scenes)
                for r in _grid_positions(int(s.region.height), size, step)
                for c in _grid_positions(int(s.region.width), size, step)
                if ((window := Window(int(s.region.col_off) + c, int(s.region.row_off) + r, size, size)) is not None)
                and (s.roles.sample(window) == s.role).any()
            ]
            self.count = len(self.grid)
        else:
            self.grid, self.count = [], count
            # Windows that touch no other set, per scene; a set narrower than a patch has none and gets windows
            # on its own pixels whose foreign part is blanked (see __getitem__).
            self._positions = [s.roles.window_positions(s.role, size) for s in scenes]
            areas = np.array([float(s.roles.count(s.role)) for s in scenes])
            self.weights = areas / areas.sum()
            if balance:
                self._class_cells = self._locate_classes()

    def _locate_classes(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float]]]]:
        """Where each class occurs, on a coarse grid per scene: (scene index, row, col) of its cells."""
        found: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        cells = []
        for i, (scene, labels) in enumerate(zip(self.scenes, self.labels, strict=True)):
            coarse, cell = labels.coarse(scene.region)
            cells.append(cell)
            own = scene.roles.sample(scene.region, coarse.shape) == scene.role
            coarse = np.where(own, coarse, self.ignore_index)
            for cls in np.unique(coarse[coarse != self.ignore_index]).tolist():
                rows, cols = np.nonzero(coarse == cls)
                found.setdefault(cls, []).append((i, rows, cols))
        return {
            cls: (
                np.concatenate([np.full(len(r), i) for i, r, _ in parts]),
                np.concatenate([r for _, r, _ in parts]),
                np.concatenate([c for _, _, c in parts]),
                cells,
            )
            for cls, parts in found.items()
        }

    def _balanced_window(self, rng: np.random.Generator) -> tuple[int, Window]:
        """A patch centred on a random location of a class drawn uniformly: rare classes are seen as often
        as common ones."""
        classes = sorted(self._class_cells)
        scenes, rows, cols, cells = self._class_cells[classes[int(rng.integers(len(classes)))]]
        k = int(rng.integers(len(rows)))
        i = int(scenes[k])
        region, (cell_h, cell_w) = self.scenes[i].region, cells[i]
        center_row = int(region.row_off) + int((rows[k] + rng.random()) * cell_h)
        center_col = int(region.col_off) + int((cols[k] + rng.random()) * cell_w)
        row = min(
            max(center_row - self.size // 2, int(region.row_off)),
            max(int(region.row_off), int(region.row_off + region.height) - self.size),
        )
        col = min(
            max(center_col - self.size // 2, int(region.col_off)),
            max(int(region.col_off), int(region.col_off + region.width) - self.size),
        )
        return i, self._fitted(i, Window(col, row, self.size, self.size))

    def _fitted(self, i: int, window: Window) -> Window:
        """``window``, or the nearest position that touches no other set when it does (unchanged if none fits)."""
        scene, positions = self.scenes[i], self._positions[i]
        if not len(positions) or np.isin(scene.roles.sample(window), (scene.role, BUFFER)).all():
            return window
        distance = np.abs(positions - np.array([int(window.row_off), int(window.col_off)])).max(axis=1)
        row, col = positions[int(np.argmin(distance))]
        return Window(int(col), int(row), self.size, self.size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def reopen(self) -> None:
        """Forget open files: each DataLoader process opens its own (GDAL handles do not survive a fork)."""
        self._sources = {}
        for labels in self.labels:
            labels.reopen()

    def __len__(self) -> int:
        return self.count

    def _window(self, index: int) -> tuple[int, Window]:
        if self.grid:
            return self.grid[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self._class_cells:
            return self._balanced_window(rng)
        i = int(rng.choice(len(self.scenes), p=self.weights))
        positions, scene = self._positions[i], self.scenes[i]
        if len(positions):
            row, col = positions[int(rng.integers(len(positions)))]
            cell = scene.roles.cell  # positions are cell corners: any offset within the cell fits too
            if cell > 1:
                row = min(int(row) + int(rng.integers(cell)), scene.info.height - self.size)
                col = min(int(col) + int(rng.integers(cell)), scene.info.width - self.size)
            return i, Window(int(col), int(row), self.size, self.size)
        region = scene.region
        col = int(region.col_off) + int(rng.integers(0, max(1, int(region.width) - self.size + 1)))
        row = int(region.row_off) + int(rng.integers(0, max(1, int(region.height) - self.size + 1)))
        return i, Window(col, row, self.size, self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, window = self._window(index)
        if i not in self._sources:
            self._sources[i] = rasterio.open(self.scenes[i].info.path)
        # The region may be narrower than a patch (region split): keep the patch inside the region's labels.
        raw, valid = read_tile(self._sources[i], window, self.bands, pad_mode=self.pad_mode)
        self.norm.mask_assumed_nodata(raw, valid, self._sources[i].nodata)
        # Pixels of another set are blanked like nodata; labels count on the set's own pixels only.
        roles = self.scenes[i].roles.sample(window, mirror=self.pad_mode == "reflect")
        valid &= np.isin(roles, (self.scenes[i].role, BUFFER))
        labels = self.labels[i].read(window)
        labels[~valid | (roles != self.scenes[i].role)] = self.ignore_index
        image = self.norm.apply(raw, valid)
        x, y = tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy(labels))
        if self.transform is not None:
            x, y = self.transform(x, y)
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)


def _grid_positions(length: int, size: int, step: int) -> list[int]:
    """Patch offsets every ``step`` pixels, the last one flush with the end so the whole length is covered."""
    count = max(1, math.ceil(max(0, length - size) / step) + 1)
    return sorted({min(k * step, max(0, length - size)) for k in range(count)})


def loader_worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: per-process file handles and a per-process seed for the augmentation
    (torch seeds each worker differently; numpy draws of windows are seeded by (seed, epoch, index))."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, PatchDataset):
        info.dataset.reopen()
