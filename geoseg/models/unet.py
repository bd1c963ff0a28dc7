"""The from-scratch U-Net (Ronneberger et al. 2015) with padding so that any H x W works."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(conv3x3 -> [BN] -> ReLU) twice: the building block of every encoder and decoder stage."""

    def __init__(self, in_channels: int, out_channels: int, norm: Literal["batch", "none"] = "batch") -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            # A conv followed by BN needs no bias: BN's shift replaces it.
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample by 2, concatenate the encoder skip, DoubleConv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: Literal["batch", "none"],
        upsample: Literal["transpose", "bilinear"],
    ) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        self.conv = DoubleConv(in_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net returning per-class logits at the input resolution.

    Args:
        in_channels: number of input bands.
        num_classes: number of output classes (logit channels).
        base_channels: width of the first stage; stage ``i`` has ``base_channels * 2**i`` channels.
        depth: number of down-sampling steps. Inputs are reflect-padded to a multiple of ``2**depth`` and the
            logits cropped back, so callers (the tiler) never have to round their tile sizes.
        norm: ``"batch"`` for BatchNorm after every conv, ``"none"`` to drop it (tiny batches, export).
        upsample: ``"transpose"`` (learned ConvTranspose2d, the original) or ``"bilinear"`` (fewer checkerboard
            artefacts).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        norm: Literal["batch", "none"] = "batch",
        upsample: Literal["transpose", "bilinear"] = "transpose",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {base_channels}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.depth = depth
        self.bilinear = upsample == "bilinear"
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], norm, upsample) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            # Reflect needs pad < size; replicate covers the tiny inputs (1 x 1 tiles) reflect cannot.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :height, :width]

    @property
    def output_stride(self) -> int:
        """Total down-sampling: tiles whose offsets are multiples of it see the same pooling grid."""
        return int(2**self.depth)

    def receptive_field(self) -> int:
        """Radius in pixels of the input that can influence one output pixel (the worst position).

        Exact for this architecture: the input interval each layer needs is propagated back from one output
        pixel (3x3 convs widen it by one pixel per side, 2x2 pooling doubles it, the transposed conv halves
        it, skips take the union), for every position on the pooling grid.
        """

        def encoder(level: int, a: int, b: int) -> tuple[int, int]:
            a, b = a - 2, b + 2  # DoubleConv
            if level == 0:
                return a, b
            return encoder(level - 1, 2 * a, 2 * b + 1)  # 2x2 max-pool, stride 2

        def decoder(level: int, a: int, b: int) -> tuple[int, int]:
            if level == self.depth:
                return encoder(level, a, b)
            a, b = a - 2, b + 2  # DoubleConv over [skip, up]
            if self.bilinear:  # bilinear x2 (align_corners=False) reads floor(y/2 - 1/4) and the next pixel
                up = decoder(level + 1, (2 * a - 1) // 4, (2 * b - 1) // 4 + 1)
            else:  # 2x2 transposed conv, stride 2: output y comes from input y // 2
                up = decoder(level + 1, a // 2, b // 2)
            skip = encoder(level, a, b)
            return min(skip[0], up[0]), max(skip[1], up[1])

        radius = 0
        for x in range(self.output_stride):
            low, high = decoder(0, x, x)
            radius = max(radius, x - low, high - x)
        return radius
