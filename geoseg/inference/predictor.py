"""Run a bundle's model on batches of tiles: the only torch code on the prediction path."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from geoseg.bundle import BundleSpec


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Predictor:
    """Holds a model on one device and turns normalised tiles into softmax probabilities.

    CPU: fp32 + channels_last (this CPU class has no bf16 units; bf16 autocast is 6-58x slower).
    CUDA: bf16 autocast + channels_last; probabilities are returned in fp32 either way.
    """

    def __init__(
        self,
        spec: BundleSpec,
        state_dict: dict[str, Any],
        device: torch.device | None = None,
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = device or pick_device()
        model: nn.Module = spec.build()
        model.load_state_dict(state_dict)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``[B, bands, H, W]`` float32 -> ``[B, classes, H, W]`` float32 probabilities."""
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(x)
        return logits.float().softmax(dim=1).cpu().numpy()
