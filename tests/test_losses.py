"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from geoseg.training.losses import BinaryBCELoss, CEDiceLoss, SoftDiceLoss, build_loss


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    """[pixels, classes] probabilities -> logits [1, C, 1, pixels] whose softmax gives them back."""
    return torch.tensor(probs).log().T.reshape(1, len(probs[0]), 1, len(probs))


def test_cross_entropy_ignores_nodata_pixels() -> None:
    logits = _logits_for([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    target = torch.tensor([[[0, 1, 255]]])
    expected = -(math.log(0.7) + math.log(0.8)) / 2
    assert build_loss("ce")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_class_weights() -> None:
    logits = _logits_for([[0.7, 0.3], [0.2, 0.8]])
    target = torch.tensor([[[0, 1]]])
    expected = -(1 * math.log(0.7) + 3 * math.log(0.8)) / (1 + 3)
    assert build_loss("ce", class_weights=[1, 3])(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_soft_dice_by_hand() -> None:
    logits = _logits_for([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.5, 0.5]])
    target = torch.tensor([[[0, 1, 1, 255]]])
    # class 0: intersection 0.9, sum p = 0.9+0.4+0.3 = 1.6, sum t = 1 -> (1.8+1)/(2.6+1)
    # class 1: intersection 0.6+0.7 = 1.3, sum p = 0.1+0.6+0.7 = 1.4, sum t = 2 -> (2.6+1)/(3.4+1)
    dice0, dice1 = 2.8 / 3.6, 3.6 / 4.4
    expected = 1 - (dice0 + dice1) / 2
    assert SoftDiceLoss(ignore_index=255)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_dice_is_zero_for_a_perfect_prediction() -> None:
    target = torch.tensor([[[0, 1, 2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert SoftDiceLoss(eps=1e-6)(logits, target).item() == pytest.approx(0, abs=1e-5)


def test_binary_bce_uses_the_logit_difference() -> None:
    logits = torch.tensor([[[[0.0, 1.0]], [[2.0, -1.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 0]]])
    # scores: 2-0 = 2 (target 1), -1-1 = -2 (target 0): both -log(sigmoid(2))
    expected = -math.log(1 / (1 + math.exp(-2)))
    assert BinaryBCELoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ce_dice_is_the_sum_of_its_parts() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, :2] = 255
    combined = CEDiceLoss(ignore_index=255)(logits, target)
    parts = build_loss("ce")(logits, target) + SoftDiceLoss()(logits, target)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-6)


def test_all_ignored_batch_gives_zero_gradient_not_nan() -> None:
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = BinaryBCELoss()(logits, target)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]])
def test_masked_cross_entropy_is_torchs_mean_and_zero_on_an_unlabelled_batch(weights) -> None:
    """Equal to nn.CrossEntropyLoss (weighted mean over labelled pixels) without a host sync per step; a batch
    with no labelled pixel gives 0 and finite (zero) gradients instead of NaN."""
    from geoseg.training.losses import MaskedCrossEntropy

    torch.manual_seed(0)
    w = None if weights is None else torch.tensor(weights)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :4] = 255
    ours = MaskedCrossEntropy(255, w)(logits, target)
    torch.testing.assert_close(ours, torch.nn.CrossEntropyLoss(weight=w, ignore_index=255)(logits, target))
    empty = MaskedCrossEntropy(255, w)(logits, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and torch.isfinite(logits.grad).all() and not logits.grad.any()
