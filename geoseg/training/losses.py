"""Segmentation losses. All take logits ``[N, C, H, W]`` and integer targets ``[N, H, W]``.

Pixels equal to ``ignore_index`` (nodata in the image or the labels) contribute nothing to any loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossName = Literal["ce", "bce", "dice", "ce_dice"]


class SoftDiceLoss(nn.Module):
    """Multi-class soft Dice: ``1 - mean_c (2 sum p*t + eps) / (sum p + sum t + eps)`` over valid pixels.

    Dice is insensitive to class frequency, which is why it is added to CE on imbalanced land cover.
    Classes absent from both prediction and target score 1 (the smoothing term), so they neither help nor
    hurt. ``class_weights`` weight the per-class Dice terms.
    """

    def __init__(self, ignore_index: int = 255, class_weights: torch.Tensor | None = None, eps: float = 1.0) -> None:
        super().__init__()
        self.ignore_index, self.eps = ignore_index, eps
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)
        probs = logits.float().softmax(dim=1) * valid
        onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        cardinality = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.eps) / (cardinality + self.eps)
        weights = self.class_weights if isinstance(self.class_weights, torch.Tensor) else torch.ones_like(dice)
        return 1 - (dice * weights).sum() / weights.sum()


class BinaryBCELoss(nn.Module):
    """BCE-with-logits for binary masks: uses the logit difference of the 2-class head (or a 1-class head)."""

    def __init__(self, ignore_index: int = 255, pos_weight: float | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.pos_weight = None if pos_weight is None else torch.tensor(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        valid = (target != self.ignore_index).float()
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(score.device)
        # Masked sum / count instead of indexing by the mask: no host sync per step, and 0 (not NaN) for a batch
        # with no labelled pixel.
        losses = F.binary_cross_entropy_with_logits(
            score.float(), target.clamp(0, 1).float(), pos_weight=pos_weight, reduction="none"
        )
        return (losses * valid).sum() / valid.sum().clamp(min=1.0)


class MaskedCrossEntropy(nn.Module):
    """PyTorch's (weighted) mean cross-entropy over labelled pixels, written as sum / weight so that a batch with
    no labelled pixel gives 0 instead of NaN without the host checking for one (a sync every step)."""

    def __init__(self, ignore_index: int = 255, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = self.class_weights if isinstance(self.class_weights, torch.Tensor) else None
        total = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=self.ignore_index, reduction="sum")
        valid = target != self.ignore_index
        if weights is None:
            denominator = valid.sum().float()
        else:
            denominator = (weights[target.clamp(0, len(weights) - 1)] * valid).sum()
        return total / denominator.clamp(min=1e-12)


class CEDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice``."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: torch.Tensor | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce = MaskedCrossEntropy(ignore_index, class_weights)
        self.dice = SoftDiceLoss(ignore_index, class_weights)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce_weight * self.ce(logits.float(), target) + self.dice_weight * self.dice(logits, target)


def build_loss(name: LossName, ignore_index: int = 255, class_weights: list[float] | None = None) -> nn.Module:
    """The loss named in a training config."""
    weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if name == "ce":
        return MaskedCrossEntropy(ignore_index, weights)
    if name == "bce":
        return BinaryBCELoss(ignore_index, None if weights is None else float(weights[-1] / weights[0]))
    if name == "dice":
        return SoftDiceLoss(ignore_index, weights)
    if name == "ce_dice":
        return CEDiceLoss(ignore_index, weights)
    raise ValueError(f"unknown loss {name!r}")
