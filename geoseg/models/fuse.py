"""Inference-time folding of BatchNorm into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a bias. Folding removes one full pass over every activation: 15 % of a base-16 U-Net's CPU time
per tile, 8 % of a 163-parameter one's (measured). The results equal the unfolded model's up to float rounding
(a few ulp), so a pixel whose top two classes are within that of each other can change; every prediction worker
folds the same way, so outputs stay identical across workers, blocks and batches.
"""

from __future__ import annotations

import itertools
import sys

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair of ``model`` (in eval mode) in place; returns the model."""
    if model.training:
        raise ValueError("batch norms can only be folded in eval mode")
    # torchvision's ResNet blocks, where torchvision is loaded: a model holding one was built after importing it
    # (a from-scratch U-Net's worker never imports it, 1.2 s of start-up; see models.pretrained.resnet).
    resnets = sys.modules.get("torchvision.models.resnet")
    blocks = () if resnets is None else (resnets.BasicBlock, resnets.Bottleneck, resnets.ResNet)
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        elif isinstance(module, blocks):  # a ResNet stem: conv1, bn1
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(module, f"bn{i}", nn.Identity())
    return model


def _fold_sequential(sequence: nn.Sequential) -> None:
    names = list(sequence._modules)
    for first, second in itertools.pairwise(names):
        conv, bn = sequence._modules[first], sequence._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            sequence._modules[first] = fuse_conv_bn_eval(conv, bn)
            sequence._modules[second] = nn.Identity()
