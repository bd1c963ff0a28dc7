"""The U-Net of segmentation_models_pytorch (and TorchGeo's ``Unet``) with a ResNet encoder, weight for weight.

Users bring models trained with ``smp.Unet(encoder_name="resnet34", in_channels=..., classes=...)``, often through
TorchGeo's ``SemanticSegmentationTask`` (the same module under ``model.``). This module has the same parameter
names and shapes (``encoder.*`` as torchvision's ResNet, ``decoder.blocks.<i>.conv<j>.<0|1>.*``,
``segmentation_head.0.*``), the same computation (nearest up-sampling to each skip's size, 3x3 conv-BN-ReLU twice,
a 3x3 head) and so the same outputs, without depending on smp at run time. What it does not cover is refused
when the weights are loaded (attention blocks, a center block, other encoders or decoder widths).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.models.pretrained import Encoder, resnet
from geoseg.models.resnet_unet import _needs

DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Block(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int], skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class _Decoder(nn.Module):
    def __init__(self, encoder_channels: list[int]) -> None:
        super().__init__()
        head, *skips = encoder_channels[::-1]  # layer4, then layer3 .. stem
        inputs = [head, *DECODER_CHANNELS[:-1]]
        self.blocks = nn.ModuleList(
            _Block(i, s, o) for i, s, o in zip(inputs, [*skips, 0], DECODER_CHANNELS, strict=True)
        )


class SmpUNet(nn.Module):
    """smp's ``Unet`` (ResNet encoder, default decoder) in geoseg, so its weights predict here unchanged.

    Args:
        in_channels: input bands (the encoder's first conv takes them all, as smp's does).
        num_classes: output classes.
        encoder: ``resnet18``, ``resnet34`` or ``resnet50``.
    """

    output_stride = 32

    def __init__(self, in_channels: int, num_classes: int, encoder: Encoder = "resnet34") -> None:
        super().__init__()
        net = resnet(encoder)
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        del net.fc, net.avgpool
        self.encoder = net
        width = 4 if encoder == "resnet50" else 1
        self.decoder = _Decoder([64, 64 * width, 128 * width, 256 * width, 512 * width])
        self.segmentation_head = nn.Sequential(nn.Conv2d(DECODER_CHANNELS[-1], num_classes, 3, padding=1))

    def _stages(self) -> list[nn.Module]:
        e = self.encoder
        return [nn.Sequential(e.conv1, e.bn1, e.relu), nn.Sequential(e.maxpool, e.layer1), e.layer2, e.layer3, e.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32  # smp requires multiples of 32; tiles here always are
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        features = [x]
        for stage in self._stages():
            features.append(stage(features[-1]))
        sizes = [tuple(f.shape[-2:]) for f in features]
        y = features[-1]
        skips = features[1:-1][::-1]  # layer3, layer2, layer1, stem
        for i, block in enumerate(self.decoder.blocks):
            y = block(y, sizes[-2 - i], skips[i] if i < len(skips) else None)
        return self.segmentation_head(y)[..., :height, :width]

    def receptive_field(self) -> int:
        """Radius in pixels of the input that can change one output pixel (exact interval propagation, as
        :meth:`geoseg.models.resnet_unet.ResNetUNet.receptive_field`)."""
        stages = self._stages()

        def encoder(level: int, a: int, b: int) -> tuple[int, int]:
            for stage in reversed(stages[:level]):
                a, b = _needs(stage, a, b)
            return a, b

        def decoder(level: int, a: int, b: int) -> tuple[int, int]:
            a, b = a - 2, b + 2  # two 3x3 convs
            # Nearest x2 reads floor(y / 2): the block below, or layer4 itself under the deepest block.
            low, high = a // 2, b // 2
            up = decoder(level + 1, low, high) if level + 1 < len(stages) else encoder(len(stages), low, high)
            if level == 0:
                return up
            skip = encoder(level, a, b)
            return min(skip[0], up[0]), max(skip[1], up[1])

        radius = 0
        for x in range(self.output_stride):
            low, high = decoder(0, x - 1, x + 1)  # the 3x3 head first
            radius = max(radius, x - low, high - x)
        return radius
