"""How scenes are cut into tiles and blocks, with defaults derived from the model.

A tile's halo must cover the model's receptive field, or the pixels near a tile's edge are computed from
padding instead of their real neighbours and tiled output differs from whole-image inference. The bundle
knows the field (computed from the architecture), so the defaults follow it:

- ``halo``: the receptive-field radius rounded up to 16 px, at most :data:`MAX_AUTO_HALO` (ResNet encoders see
  200-450 px; their effective field is far smaller, and the report says when a halo is below the radius),
  and at most a quarter of a tile size chosen by hand;
- ``overlap``: 0. With the halo covering the field, neighbouring tiles compute the same values where they
  meet, so there is nothing to blend, and blocks never repeat a tile (see :mod:`geoseg.inference.tiling`);
- ``tile``: a core of 1024 px (a multiple of the model's output stride) plus the halo on both sides: the halo
  costs 6 % extra model work for a small field, 49 % for a depth-4 U-Net (107 px), and the last tile of a
  row reaches past a 10 980-px Sentinel-2 scene by 2.6 % instead of the 14 % of a 1792-px core; a scene
  smaller than a core gets one tile just covering it;
- ``block``: 1024 px on CPU workers (enough blocks per scene to keep several workers busy), 2048 px on GPUs
  (fewer, larger units keep a GPU fed); the output does not depend on it, and neither does the job's
  fingerprint (a job resumed with another block size does not redo its finished scenes);
- ``batch_size``: as many tiles as make about 1 Mpx per model call on CPU (one default tile: a tile's result
  then cannot depend on its batch, whose size may change oneDNN's algorithm and a probability's last bit),
  4 Mpx on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from geoseg.errors import GeoSegError
from geoseg.geometry import ModelGeometry
from geoseg.inference.tiling import BlockGrid, TileGrid
from geoseg.io.maskrules import MaskOptions
from geoseg.io.raster import PadMode, SceneInfo
from geoseg.vector.polygonize import VectorizeOptions

MAX_AUTO_HALO = 128
CPU_BATCH_PIXELS, GPU_BATCH_PIXELS = 2**20, 4 * 2**20
MIN_ALIGNMENT = 32  # strides are aligned to at least this (every U-Net up to depth 5), as geoseg always did
DEFAULT_CORE = 1024
CPU_BLOCK, GPU_BLOCK = 1024, 2048


@dataclass(frozen=True)
class PredictOptions:
    """Tiling, batching and outputs of a prediction job; ``None`` means "derived from the model" (see above).

    :meth:`resolved` fills in the defaults for a model; :meth:`grid` then gives each scene's tiles. With an
    automatic tile size a scene smaller than the default core gets one tile just covering it (an archive of
    512-px chips must not pay for 1024-px tiles of padding).
    """

    tile: int | None = None
    halo: int | None = None
    overlap: int | None = None
    block: int | None = None
    batch_size: int | None = None
    pad_mode: PadMode = "reflect"
    probabilities: bool = False
    vectors: VectorizeOptions | None = None  # also polygonize each class raster into <scene>.<vectors.fmt>
    mask: MaskOptions | None = None  # clouds, shadows: pixels read as nodata (geoseg.io.masks)
    alignment: int = MIN_ALIGNMENT  # tile strides are multiples of this (the model's output stride, at least 32)
    auto_core: int | None = None  # set by resolved() when the tile size is automatic

    def resolved(self, geometry: ModelGeometry, gpu: bool = False) -> PredictOptions:
        """Every default filled in for this model (and device), every value checked."""
        alignment = max(MIN_ALIGNMENT, geometry.output_stride)
        overlap = 0 if self.overlap is None else self.overlap
        halo = self.halo
        if halo is None:
            halo = min(MAX_AUTO_HALO, 16 * math.ceil(geometry.receptive_field / 16))
            if self.tile is not None:  # a tile chosen small: keep half of it for the core (the report notes it)
                halo = min(halo, max(0, (self.tile - 2 * overlap) // 4))
        auto_core = None if self.tile is not None else alignment * math.ceil(DEFAULT_CORE / alignment)
        tile = self.tile if self.tile is not None else auto_core + 2 * halo  # type: ignore[operator]
        if tile - 2 * halo < max(1, 2 * overlap):
            raise GeoSegError(
                f"tile {tile} is too small: need tile - 2*halo >= 2*overlap (halo {halo}, overlap {overlap})"
            )
        block = self.block or (GPU_BLOCK if gpu else CPU_BLOCK)
        batch = self.batch_size or max(1, (GPU_BATCH_PIXELS if gpu else CPU_BATCH_PIXELS) // tile**2)
        return replace(
            self, halo=halo, overlap=overlap, block=block, batch_size=batch, alignment=alignment, auto_core=auto_core
        )

    def tile_for(self, scene: SceneInfo) -> int:
        """The tile side for ``scene``: the chosen one, or the automatic one (never larger than needed)."""
        if self.tile is not None:
            return self.tile
        if self.auto_core is None or self.halo is None:
            raise ValueError("options are not resolved")
        needed = self.alignment * math.ceil(max(scene.width, scene.height) / self.alignment)
        return min(self.auto_core, needed) + 2 * self.halo

    def effective_overlap(self, output_stride: int = MIN_ALIGNMENT, tile: int | None = None) -> int:
        """The smallest overlap >= the requested one that makes the tile stride a multiple of the alignment.

        Strides that are multiples of the model's down-sampling (its output stride; at least 32, so grids stay
        those geoseg always used) keep the pooling and up-sampling grids of every tile aligned with those of
        the whole image, so overlapping tiles compute the same features. Falls back to the requested overlap
        when no such overlap fits in the core.
        """
        tile = tile if tile is not None else self.tile
        if tile is None or self.halo is None:
            raise ValueError("options are not resolved")
        overlap = self.overlap or 0
        core = tile - 2 * self.halo
        alignment = max(self.alignment, output_stride)
        aligned = overlap + (core - overlap) % alignment
        return aligned if core >= 2 * aligned and core - aligned > 0 else overlap

    def grid(self, scene: SceneInfo) -> TileGrid:
        tile = self.tile_for(scene)
        return TileGrid(scene.width, scene.height, tile, self.halo or 0, self.effective_overlap(tile=tile))

    def blocks(self, scene: SceneInfo) -> BlockGrid:
        if self.block is None:
            raise ValueError("options are not resolved")
        return BlockGrid(self.grid(scene), self.block)

    @property
    def vector_format(self) -> str | None:
        return self.vectors.fmt if self.vectors is not None else None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["vectors"] = self.vectors.key() if self.vectors is not None else None
        if self.mask is None:
            del values["mask"]  # absent, not null: jobs from before masks existed keep their fingerprint
        else:
            values["mask"] = self.mask.key()
        return values

    def model_run_dict(self) -> dict[str, Any]:
        """The options that decide the rasters (the job's fingerprint): polygons can be redone from those, and
        blocks only group tiles (the output does not depend on them)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("vectors", "block")}

    def legacy_run_dict(self) -> dict[str, Any]:
        """:meth:`model_run_dict` as geoseg wrote it before the block size left it (2026-12): a job started then
        resumes without redoing its finished scenes."""
        return self.model_run_dict() | {"block": self.block}
