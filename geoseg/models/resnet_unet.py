"""U-Net with a torchvision ResNet encoder: pretrained features when a local weights file is given."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from geoseg.errors import GeoSegError
from geoseg.models.unet import DoubleConv

Encoder = Literal["resnet18", "resnet34", "resnet50"]
_ENCODERS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn RGB kernels ``[out, 3, k, k]`` into ``[out, in_channels, k, k]``.

    Band ``i`` gets the kernel of RGB channel ``i % 3``; scaling by ``3 / in_channels`` keeps the
    activation magnitude of the pretrained layer when all bands carry similar signal.
    """
    if weight.shape[1] == in_channels:
        return weight
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


class _Decoder(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class ResNetUNet(nn.Module):
    """ResNet encoder + U-Net decoder with a skip at every stage, logits at full input resolution.

    Args:
        in_channels: number of input bands; the first conv is adapted when it is not 3.
        num_classes: number of output classes.
        encoder: ``resnet18``, ``resnet34`` or ``resnet50``.
        weights: path to a local torchvision ResNet state_dict (ImageNet, SSL4EO, ...). There is no download
            at run time: archive clusters often have no internet, and silent downloads break reproducibility.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: Encoder = "resnet34",
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if encoder not in _ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(_ENCODERS)}, got {encoder!r}")
        net = _ENCODERS[encoder](weights=None)
        if weights is not None:
            path = Path(weights)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
                raise GeoSegError(f"cannot load encoder weights: {exc}".splitlines()[0], path) from exc
        conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            conv1.weight.copy_(adapt_first_conv(net.conv1.weight, in_channels))
        self.stem = nn.Sequential(conv1, net.bn1, net.relu)  # stride 2
        self.pool = net.maxpool
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])  # strides 4..32
        stage_channels = [64] + [_out_channels(layer) for layer in self.layers]
        # Full-resolution skip so that thin objects (roads, field boundaries) survive the stride-2 stem.
        self.full_res = DoubleConv(in_channels, 16)
        decoder_widths = [256, 128, 64, 32, 16]
        skips = [stage_channels[3], stage_channels[2], stage_channels[1], stage_channels[0], 16]
        blocks = []
        channels = stage_channels[4]
        for skip, width in zip(skips, decoder_widths, strict=True):
            blocks.append(_Decoder(channels, skip, width))
            channels = width
        self.decoders = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        features = [self.full_res(x)]
        y = self.stem(x)
        features.append(y)
        y = self.pool(y)
        for layer in self.layers:
            y = layer(y)
            features.append(y)
        y = features.pop()
        for decoder in self.decoders:
            y = decoder(y, features.pop())
        return self.head(y)[..., :height, :width]


def _out_channels(layer: nn.Module) -> int:
    """Channels out of a ResNet stage: those of its last BatchNorm (bn3 for bottlenecks, bn2 for basic)."""
    norms = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)
