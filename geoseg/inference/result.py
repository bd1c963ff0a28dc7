"""A finished block, the value that crosses from the model workers (blend) to the driver (scene): its own
module, so that the blender, the workers and the executors each import it without importing one another."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BlockResult:
    """A finished block: uint8 classes over its output window, counts for the report, stage times."""

    index: int
    classes: np.ndarray  # [height, width] uint8 class ids, CLASS_NODATA where nothing valid was seen
    probabilities: np.ndarray | None = None  # [classes + 1, height, width] uint8: p x 254 per class, confidence
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per model output index
    tiles_run: int = 0
    tiles_skipped: int = 0
    seam_pixels: int = 0
    seam_disagreements: int = 0
    read_seconds: float = 0.0
    model_seconds: float = 0.0
    masked_pixels: int = 0  # of the output window, hidden by the scene's mask (clouds, shadows)
