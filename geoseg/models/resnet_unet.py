"""U-Net with a torchvision ResNet encoder: pretrained features when a local weights file is given."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.pretrained import BN, STEM, Encoder, encoder_weights, first_conv, read_state_dict, resnet
from geoseg.models.unet import DoubleConv


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
        in_channels: number of input bands.
        num_classes: number of output classes.
        encoder: ``resnet18``, ``resnet34`` or ``resnet50``.
        weights: a local ResNet checkpoint (torchvision, timm, SSL4EO-S12, SatlasPretrain layouts; see
            :mod:`geoseg.models.pretrained`) loaded at construction, its RGB kernels cycled over the bands. There
            is no download at run time: archive clusters often have no internet, and silent downloads break
            reproducibility. Training loads checkpoints by band name instead (``model.pretrained``), and the
            bundle then holds the weights, not the path.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: Encoder = "resnet34",
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        net = resnet(encoder)
        self.encoder_name, self.in_channels = encoder, in_channels
        conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            conv1.weight.copy_(first_conv(net.conv1.weight, None, None, in_channels)[0])
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
        if weights is not None:
            self.load_encoder(read_state_dict(weights), weights)

    def load_encoder(
        self,
        state: dict[str, torch.Tensor],
        path: str | Path,
        bands: list[str] | None = None,
        checkpoint_bands: list[str] | None = None,
    ) -> list[str]:
        """Take the encoder from a checkpoint (any layout of :mod:`geoseg.models.pretrained`), the first
        convolution band by band; returns the bands that got no kernel of their own. The decoder keeps its
        initialisation."""
        found = encoder_weights(state, resnet(self.encoder_name), path)
        conv, unknown = first_conv(found.pop(STEM), bands, checkpoint_bands, self.in_channels)
        renamed = {"stem.0.weight": conv}
        for key, tensor in found.items():
            if key.startswith(BN):
                renamed["stem.1." + key[len(BN) :]] = tensor
            else:  # layerN.rest -> layers.(N-1).rest
                stage, rest = key.split(".", 1)
                renamed[f"layers.{int(stage[len('layer') :]) - 1}.{rest}"] = tensor
        result = self.load_state_dict(renamed, strict=False)
        if result.unexpected_keys:  # a mapping bug, never the user's file: every key was checked above
            raise RuntimeError(f"encoder keys not in the model: {result.unexpected_keys[:3]}")
        return unknown

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

    output_stride = 32

    def receptive_field(self) -> int:
        """Radius in pixels of the input that can influence one output pixel (the worst position); exact, by
        propagating each layer's input interval back from one output pixel (see :meth:`UNet.receptive_field`).

        ResNet encoders see far: 200-450 px. Their *effective* field is much smaller, so prediction caps its
        default halo and says so in the report rather than paying a halo this wide.
        """
        stages = [self.stem, nn.Sequential(self.pool, self.layers[0]), *self.layers[1:]]

        def encoder(level: int, a: int, b: int) -> tuple[int, int]:
            if level == 0:
                return a - 2, b + 2  # full-resolution DoubleConv
            for stage in reversed(stages[:level]):
                a, b = _needs(stage, a, b)
            return a, b

        def decoder(level: int, a: int, b: int) -> tuple[int, int]:
            if level == len(stages):
                return encoder(level, a, b)
            a, b = a - 2, b + 2  # DoubleConv over [upsampled, skip]
            # Bilinear x2 (align_corners=False) reads floor(y/2 - 1/4) and the next pixel. The stem halves the
            # resolution too, so every level is twice the next.
            up = decoder(level + 1, (2 * a - 1) // 4, (2 * b - 1) // 4 + 1)
            skip = encoder(level, a, b)
            return min(skip[0], up[0]), max(skip[1], up[1])

        radius = 0
        for x in range(self.output_stride):
            low, high = decoder(0, x, x)
            radius = max(radius, x - low, high - x)
        return radius


def _needs(module: nn.Module, a: int, b: int) -> tuple[int, int]:
    """The input interval (one axis) that output pixels ``[a, b]`` of ``module`` are computed from."""
    from torchvision.models.resnet import BasicBlock, Bottleneck  # only ResNets hold them (see pretrained.resnet)

    if isinstance(module, nn.Conv2d | nn.MaxPool2d):
        k, s, p, d = (_first(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation))
        return a * s - p, b * s - p + (k - 1) * d
    if isinstance(module, BasicBlock):  # the shortcut (1x1) needs a subset of the main path
        return _needs(module.conv1, *_needs(module.conv2, a, b))
    if isinstance(module, Bottleneck):
        return _needs(module.conv1, *_needs(module.conv2, *_needs(module.conv3, a, b)))
    if isinstance(module, nn.Sequential):
        for child in reversed(list(module)):
            a, b = _needs(child, a, b)
        return a, b
    return a, b  # BatchNorm, ReLU: per pixel


def _first(value: object) -> int:
    """One axis of a (square) kernel, stride, padding or dilation given as an int or a tuple."""
    if isinstance(value, int):
        return value
    if isinstance(value, tuple) and isinstance(value[0], int):
        return value[0]
    raise ValueError(f"cannot take the receptive field through a layer with {value!r}")


def _out_channels(layer: nn.Module) -> int:
    """Channels out of a ResNet stage: those of its last BatchNorm (bn3 for bottlenecks, bn2 for basic)."""
    norms = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)
