"""Train / validation / test as three spatial sets, with a buffer between them.

Land-cover maps are judged on ground nothing was tuned on. Neighbouring pixels are alike (spatial
autocorrelation), so a random pixel split flatters a model; the sets here are *places*: whole scenes, strips
of each scene, square blocks (random or checkerboard), or regions the user names by bounds or polygons.

Every scene gets a :class:`RoleMap`: one role per cell of a grid over the scene (``cell`` pixels a side, 1 for
scenes up to 4096 px), so a 100 000-px scene costs a few MB, and a role is exact per pixel at cell edges.
Roles are assigned in three steps:

1. the ``split`` method gives every cell a set (``scene``: whole scenes; ``region``: west train, then a
   validation strip, the test strip in the east; ``blocks``: squares of ``block_size`` px assigned at random
   in exact proportions, or as diagonal stripes of a checkerboard);
2. named regions win over the method: cells whose centre lies in ``val_region`` become validation, those in
   ``test_region`` test; the method then draws no set that a region names, and splits only the other cells
   (a validation strip lies west of a named test region, blocks wholly inside a region are not drawn);
3. a **buffer**: a cell of a lower set (train < validation < test) within ``buffer`` px of a higher set is
   used by neither. ``buffer`` defaults to the model's receptive-field radius, so an output pixel of one set is
   never computed from the image of another: a test pixel sees only test and buffer pixels, whatever tiles
   predicted it. The test set keeps exactly the region the user named; the buffer comes out of the others.

Patches use a set's cells and the buffer: a training window lies where the roles are train or buffer (drawn
among the positions where it fits; see :meth:`RoleMap.window_positions`), a validation window is any grid
window over the validation cells; in both, pixels of another set are blanked (image zeros, label ignored), so
no pixel of a test region ever reaches a training or validation patch. Labels count only on the set's own
cells. The test set is scored once, after training, on whole-scene predictions (see ``train.score_test``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping

from geoseg.errors import GeoSegError
from geoseg.io.raster import SceneInfo, reflect_index
from geoseg.io.vectors import read_polygons
from geoseg.io.writer import temp_sibling

TRAIN, VAL, TEST, BUFFER = 0, 1, 2, 3
ROLE_NAMES = {TRAIN: "train", VAL: "validation", TEST: "test", BUFFER: "buffer"}
ROLE_COLORS = {TRAIN: (77, 175, 74), VAL: (55, 126, 184), TEST: (228, 26, 28), BUFFER: (190, 190, 190)}
MAX_CELLS = 4096  # per side of a role grid


@dataclass(frozen=True)
class RoleMap:
    """The set of every pixel of one scene, stored per cell of ``cell`` x ``cell`` pixels."""

    roles: np.ndarray  # uint8 [rows, cols] of TRAIN/VAL/TEST/BUFFER
    cell: int
    width: int  # the scene's, in pixels
    height: int

    @classmethod
    def constant(cls, role: int, width: int, height: int) -> RoleMap:
        cell = cell_size(width, height)
        return cls(np.full(_cells(width, height, cell), role, dtype=np.uint8), cell, width, height)

    def sample(self, window: Window, shape: tuple[int, int] | None = None, mirror: bool = False) -> np.ndarray:
        """Roles at the pixel centres of ``window`` (read at ``shape``, decimated like a GDAL nearest read).
        Outside the scene: BUFFER, or with ``mirror`` the role of the pixel that reflect padding copies there
        (a patch padded by mirroring must not mirror another set's pixels into it)."""
        rows_n, cols_n = shape or (int(window.height), int(window.width))
        rows = window.row_off + (np.arange(rows_n) + 0.5) * (window.height / rows_n)
        cols = window.col_off + (np.arange(cols_n) + 0.5) * (window.width / cols_n)
        r = np.floor(rows).astype(np.int64)
        c = np.floor(cols).astype(np.int64)
        if mirror:
            r, c = reflect_index(r, self.height), reflect_index(c, self.width)
        inside_r = (r >= 0) & (r < self.height)
        inside_c = (c >= 0) & (c < self.width)
        cr = np.clip(r // self.cell, 0, self.roles.shape[0] - 1)
        cc = np.clip(c // self.cell, 0, self.roles.shape[1] - 1)
        out = self.roles[cr[:, None], cc[None, :]]
        return np.where(inside_r[:, None] & inside_c[None, :], out, BUFFER).astype(np.uint8)

    def count(self, role: int) -> int:
        """Pixels of ``role`` (cells at the right and bottom edge may be partial)."""
        weights = np.outer(_cell_extents(self.height, self.cell), _cell_extents(self.width, self.cell))
        return int(weights[self.roles == role].sum())

    def bounding_window(self, role: int) -> Window | None:
        """The smallest window holding every pixel of ``role``; None when the scene has none."""
        rows, cols = np.nonzero(self.roles == role)
        if not len(rows):
            return None
        top, left = int(rows.min()) * self.cell, int(cols.min()) * self.cell
        bottom = min(self.height, (int(rows.max()) + 1) * self.cell)
        right = min(self.width, (int(cols.max()) + 1) * self.cell)
        return Window(left, top, right - left, bottom - top)

    def window_positions(self, role: int, size: int, limit: int = 1_000_000) -> np.ndarray:
        """Top-left pixel positions ``[n, 2]`` (row, col) of ``size``-px windows inside the scene that touch no
        other set's cell and hold at least one cell of ``role``; at most ``limit`` of them (evenly thinned).

        Positions are cell corners; the window may start anywhere in its corner cell, so it is checked over the
        ``ceil((size + cell - 1) / cell)`` cells a side that such a window can touch.
        """
        k = math.ceil((size + self.cell - 1) / self.cell)
        rows_n, cols_n = self.roles.shape
        if size > self.height or size > self.width or k > rows_n or k > cols_n:
            return np.zeros((0, 2), dtype=np.int64)
        foreign = ~np.isin(self.roles, (role, BUFFER))
        own = self.roles == role
        rows, cols = np.nonzero((_box_sum(foreign, k) == 0) & (_box_sum(own, k) > 0))
        positions = np.stack([rows * self.cell, cols * self.cell], axis=1).astype(np.int64)
        # The last cells may hold fewer pixels: keep windows inside the scene.
        positions = positions[(positions[:, 0] + size <= self.height) & (positions[:, 1] + size <= self.width)]
        if len(positions) > limit:
            positions = positions[np.linspace(0, len(positions) - 1, limit).astype(np.int64)]
        return positions

    def profile(self, transform: Affine, crs: CRS) -> dict[str, Any]:
        """A GeoTIFF profile for writing the role grid georeferenced (one pixel per cell)."""
        return {
            "driver": "GTiff",
            "width": self.roles.shape[1],
            "height": self.roles.shape[0],
            "count": 1,
            "dtype": "uint8",
            "crs": crs,
            "transform": transform * Affine.scale(self.cell),
            "compress": "deflate",
        }


def cell_size(width: int, height: int) -> int:
    return max(1, math.ceil(max(width, height) / MAX_CELLS))


def _cells(width: int, height: int, cell: int) -> tuple[int, int]:
    return math.ceil(height / cell), math.ceil(width / cell)


def _cell_extents(length: int, cell: int) -> np.ndarray:
    n = math.ceil(length / cell)
    extents = np.full(n, cell, dtype=np.int64)
    extents[-1] = length - (n - 1) * cell
    return extents


def _box_sum(mask: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``mask`` over every k x k box inside the grid, indexed by the box's top-left cell."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    h, w = mask.shape[0] - k + 1, mask.shape[1] - k + 1
    return integral[k:, k:] - integral[:h, k:] - integral[k:, :w] + integral[:h, :w]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Cells within ``radius`` cells of a True cell (square neighbourhood, as a receptive field is square)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    out = mask
    for axis in (0, 1):
        moved = np.moveaxis(out, axis, 0)
        padded = np.concatenate([np.zeros((1, *moved.shape[1:]), dtype=np.int64), np.cumsum(moved, axis=0)])
        n = moved.shape[0]
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        out = np.moveaxis((padded[hi] - padded[lo]) > 0, 0, axis)
    return out


def apply_buffer(roles: np.ndarray, radius_cells: int) -> np.ndarray:
    """Cells of a lower set within ``radius_cells`` of a higher set become BUFFER (test > validation > train)."""
    out = roles.copy()
    for higher in (TEST, VAL):
        near = dilate(roles == higher, radius_cells)
        lower = (out != BUFFER) & (out < higher)
        out[near & lower] = BUFFER
    return out


def strip_roles(free: np.ndarray, shares: tuple[float, float]) -> np.ndarray:
    """West-to-east strips over the ``free`` cells: training, then ``shares`` = (validation, test) of the free
    cells, test in the east. Columns are assigned by how many free cells lie east of their centre, so a named
    region (not free) takes nothing from the shares: validation is the strip west of a named test region."""
    val_share, test_share = shares
    per_column = free.sum(axis=0).astype(np.float64)
    east_of_centre = np.cumsum(per_column[::-1])[::-1] - per_column / 2
    total = max(per_column.sum(), 1.0)
    roles = np.full(free.shape, TRAIN, dtype=np.uint8)
    roles[:, east_of_centre < (val_share + test_share) * total] = VAL
    roles[:, east_of_centre < test_share * total] = TEST
    return roles


def block_roles(free: np.ndarray, block_cells: int, shares: tuple[float, float], layout: str, seed: int) -> np.ndarray:
    """Roles of square blocks of ``block_cells`` cells: ``shares`` = (validation, test) of the blocks that hold a
    ``free`` cell (blocks wholly inside a named region are not drawn).

    ``random``: those blocks shuffled (seeded) and the first round(n * share) taken, exact counts.
    ``checkerboard``: diagonal stripes with period round(1 / validation share): block (i, j) is validation where
    (i + j) % period == 0 and test where it is period // 2 (when a test share is asked), so every row and
    column of blocks holds every set.
    """
    rows_b, cols_b = math.ceil(free.shape[0] / block_cells), math.ceil(free.shape[1] / block_cells)
    padded = np.zeros((rows_b * block_cells, cols_b * block_cells), dtype=bool)
    padded[: free.shape[0], : free.shape[1]] = free
    drawable = padded.reshape(rows_b, block_cells, cols_b, block_cells).any(axis=(1, 3)).ravel()
    per_block = np.full(rows_b * cols_b, TRAIN, dtype=np.uint8)
    val_share, test_share = shares
    if layout == "random":
        candidates = np.flatnonzero(drawable)
        order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
        n_test = round(len(candidates) * test_share)
        n_val = round(len(candidates) * val_share)
        per_block[order[:n_test]] = TEST
        per_block[order[n_test : n_test + n_val]] = VAL
    else:
        period = max(2, round(1 / val_share)) if val_share else max(2, round(1 / test_share))
        i, j = np.divmod(np.arange(len(per_block)), cols_b)
        phase = (i + j) % period
        if val_share:
            per_block[phase == 0] = VAL
        if test_share:
            per_block[phase == period // 2] = TEST
    grid = per_block.reshape(rows_b, cols_b)
    return np.repeat(np.repeat(grid, block_cells, axis=0), block_cells, axis=1)[: free.shape[0], : free.shape[1]]


def region_cells(region: Any, info: SceneInfo, cell: int, root: Path) -> np.ndarray:
    """Cells of ``info``'s role grid whose centre lies in a named region (bounds or a polygon file)."""
    shape = _cells(info.width, info.height, cell)
    transform = info.transform * Affine.scale(cell)
    if region.polygons is not None:
        path = root / region.polygons
        frame = read_polygons(path, info.crs)
        geometries = [mapping(g) for g in frame.geometry if g is not None and not g.is_empty]
        if not geometries:
            raise GeoSegError("the region file holds no polygon", path)
    else:
        crs = CRS.from_user_input(region.crs) if region.crs else info.crs
        geometry = mapping(box(*region.bounds).segmentize(max(region.bounds[2] - region.bounds[0], 1e-9) / 64))
        geometries = [transform_geom(crs, info.crs, geometry) if crs != info.crs else geometry]
    mask = features.rasterize([(g, 1) for g in geometries], out_shape=shape, transform=transform, fill=0, dtype="uint8")
    return mask.astype(bool)


def write_role_map(path: Path, roles: RoleMap, info: SceneInfo) -> Path:
    """The role grid as a small GeoTIFF with a colour table and role names (open it over the scene in QGIS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temp_sibling(path)
    with rasterio.open(partial, "w", **roles.profile(info.transform, info.crs)) as dst:
        dst.write(roles.roles, 1)
        dst.write_colormap(1, {k: (*v, 255) for k, v in ROLE_COLORS.items()})
        dst.update_tags(**{f"role_{k}": v for k, v in ROLE_NAMES.items()})
    partial.replace(path)
    return path
