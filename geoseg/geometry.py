"""A model's geometry as tiling sees it: a small value with no torch in it, so that the bundle (which computes it
from the architecture) and the tiler (which a reader process imports without torch) share it without either
importing the other: models and bundles sit below inference."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelGeometry:
    """What tiling needs to know about a model, computed from its architecture (see the bundle)."""

    output_stride: int  # total down-sampling: tile offsets that are multiples of it see the same pooling grid
    receptive_field: int  # radius in px of the input that can change one output pixel (worst position)
