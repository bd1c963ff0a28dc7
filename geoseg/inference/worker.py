"""The model worker: a block's raw pixels in, its uint8 classes out. The only torch code on the prediction path.

Per block, on the model's device: the raw pixels are normalised (the arithmetic of
:class:`geoseg.io.normalisation.Normalisation`, in torch), cut into the block's tiles, run through the model in
batches (tiles with no valid pixel are skipped) and blended into classes (:mod:`geoseg.inference.blend`): from
softmax probabilities where tiles overlap or probabilities are asked for, else straight from the logits (the
default: no softmax pass).
What leaves the worker is 1 byte per pixel (plus 1 per class and the confidence when probabilities are asked
for): no float probability crosses to the host, let alone the driver.

CPU: fp32 + channels_last (this CPU class has no bf16 units; bf16 autocast is 6-58x slower). CUDA: bf16
autocast + channels_last, raw pixels copied from pinned memory without blocking; ``torch.compile`` on request.
Either way batch norms are folded into their convolutions (:mod:`geoseg.models.fuse`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn

from geoseg.bundle import BundleSpec
from geoseg.inference.blend import BlockBlender
from geoseg.inference.options import PredictOptions
from geoseg.inference.reader import BlockPixels
from geoseg.inference.result import BlockResult
from geoseg.inference.tiling import Block, BlockGrid, Tile
from geoseg.models.fuse import fold_batch_norms


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class ModelWorker:
    """Holds a bundle's model on one device and turns blocks of raw pixels into classes.

    Args:
        spec, state_dict: the bundle.
        device: default: the GPU when there is one, else the CPU.
        threads: torch threads on CPU (one per CPU of the worker's share).
        compile: ``torch.compile`` the model (pays a compilation per tile shape; for long GPU jobs).
    """

    def __init__(
        self,
        spec: BundleSpec,
        state_dict: dict[str, Any],
        device: torch.device | None = None,
        threads: int | None = None,
        compile: bool = False,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = device or pick_device()
        self.spec = spec
        model: nn.Module = spec.build()
        model.load_state_dict(state_dict)
        model = fold_batch_norms(model.eval())
        self.model: Any = model.to(self.device).to(memory_format=torch.channels_last)
        if compile:
            self.model = torch.compile(self.model)
        norm = spec.normalisation()
        self.mean = torch.from_numpy(norm.mean).view(1, -1, 1, 1).to(self.device)
        self.std = torch.from_numpy(norm.std).view(1, -1, 1, 1).to(self.device)
        self.class_ids = [c.id for c in spec.classes]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, bands, H, W]`` float32 (channels_last) -> ``[B, classes, H, W]`` logits (bf16 on
        a GPU)."""
        with self._autocast():
            return self.model(batch)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, bands, H, W]`` float32 (channels_last) -> ``[B, classes, H, W]`` float32 softmax."""
        return self.logits(batch).float().softmax(dim=1)

    def _to_device(self, array: Any) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def normalise(self, raw: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Model input from raw pixels ``[n, bands, h, w]`` (any numeric type) and validity ``[n, h, w]``: the
        arithmetic of :class:`geoseg.io.normalisation.Normalisation`, in torch on the model's device (a test
        compares it with a training patch of the same window, bit for bit)."""
        x = raw.to(torch.float32)  # float32 already (the worker's gathered batch): normalised in place
        x.sub_(self.mean).div_(self.std)
        if masks is not None:
            x.masked_fill_(~masks[:, None], 0.0)
        return x

    @torch.inference_mode()
    def run(self, blocks: BlockGrid, block: Block, pixels: BlockPixels, options: PredictOptions) -> BlockResult:
        """Predict and blend ``block`` from its raw pixels (read by :func:`geoseg.inference.reader.read_block`)."""
        started = time.perf_counter()
        raw = self._to_device(pixels.data)
        valid = None if pixels.valid is None else self._to_device(pixels.valid)
        blender = BlockBlender(blocks.grid, block, self.class_ids, options.probabilities, self.device)
        size = blocks.grid.tile

        def window(tile: Tile) -> tuple[slice, slice]:
            r, c = block.tile_offset(tile)
            return slice(r, r + size), slice(c, c + size)

        batch: list[Tile] = []
        batch_size = options.batch_size or 1

        def flush() -> None:
            slices = [window(t) for t in batch]
            # Normalised band-planar, then made channels_last: per-channel arithmetic on channels_last tensors
            # of 4-6 bands broadcasts along the innermost axis and took 2-3x longer (measured).
            masks = None if valid is None else torch.stack([valid[s] for s in slices])
            # Each tile's window is converted to float32 as it is gathered (one pass fewer than stacking the raw
            # pixels first: 4.5 vs 6 ms per batch of four 512² tiles, measured), then normalised in place.
            x = torch.empty((len(slices), raw.shape[0], size, size), dtype=torch.float32, device=raw.device)
            for i, s in enumerate(slices):
                x[i].copy_(raw[(slice(None), *s)])
            x = self.normalise(x, masks).contiguous(memory_format=torch.channels_last)
            scores = self.probabilities(x) if blender.needs_probabilities else self.logits(x)
            for i, tile in enumerate(batch):
                blender.add(tile, scores[i], None if masks is None else masks[i])
            batch.clear()

        for tile in blocks.tiles(block):
            tile_valid = None if valid is None else valid[window(tile)]
            if tile_valid is not None and not bool(tile_valid.any()):
                blender.add(tile, None, tile_valid)  # all nodata: the model is skipped
                continue
            batch.append(tile)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        result = blender.result()
        result.read_seconds = pixels.read_seconds
        result.masked_pixels = pixels.masked_pixels
        result.model_seconds = time.perf_counter() - started
        return result
