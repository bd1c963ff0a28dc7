"""Pretrained ResNet encoders from local files: torchvision, timm and multispectral (SSL4EO-S12, SatlasPretrain)
checkpoints, their first convolution taken band by band.

**Layouts.** A ResNet's own parameter names are the same in torchvision and timm (``conv1``, ``bn1``,
``layer1``..``layer4``, ``fc``); what differs between published files is what surrounds them: a wrapper prefix
(``module.`` from DDP, ``model.``/``state_dict`` from Lightning and timm's trainer, ``encoder_q.`` from MoCo
(SSL4EO-S12), ``backbone.resnet.`` from SatlasPretrain, ``encoder.`` from segmentation models), and a head
(``fc``, a MoCo projector ``fc.0``/``fc.2``) that an encoder does not use. :func:`encoder_weights` finds the prefix
under which a complete ResNet lies (the one with most of the encoder's keys), drops everything else, and refuses
a file in which any encoder parameter is missing or has another shape, naming one.

**Bands.** A checkpoint's first convolution has one kernel slice per band it was trained on: 3 for ImageNet
(red, green, blue), 13 for Sentinel-2 L1C (B01..B12 with B8A and B10). :func:`first_conv` builds the model's
from it by band *name*: a band the checkpoint knows gets that band's slice; a band it does not know (elevation,
a SAR channel, ...) gets the mean of the checkpoint's slices (the kernel that responds to "any band", TorchGeo's
and timm's rule for extra channels). The result is scaled by (checkpoint bands / model bands), so the layer's
response to an input whose bands are alike keeps its magnitude (timm's rule when it repeats RGB kernels).
Without band names (a 3-band checkpoint, the old behaviour) kernels are cycled R, G, B, R, ...

The checkpoint's normalisation (mean and std per band, in raw units) is what its features expect; training
records it in the bundle for the matched bands (see ``train.pretrained_bands``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from geoseg.errors import GeoSegError

STEM, BN = "conv1.weight", "bn1."

Encoder = Literal["resnet18", "resnet34", "resnet50"]
# The torchvision ResNets both ResNet-encoder U-Nets are built from: one declaration of the encoders geoseg has.
RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")


def resnet(encoder: str) -> Any:
    """An untrained torchvision ResNet by name; an unknown name is a ValueError listing the known ones.

    torchvision is imported here, not with the module: importing it imports ``torch._dynamo`` (1.2 s of CPU,
    measured), which every prediction process of a from-scratch U-Net paid at start-up for nothing."""
    if encoder not in RESNETS:
        raise ValueError(f"encoder must be one of {sorted(RESNETS)}, got {encoder!r}")
    from torchvision import models as tvm

    constructors: dict[str, Callable[..., nn.Module]] = {
        "resnet18": tvm.resnet18,
        "resnet34": tvm.resnet34,
        "resnet50": tvm.resnet50,
    }
    return constructors[encoder](weights=None)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file as other tools save them: a plain state dict, a checkpoint holding one
    (``state_dict``/``model_state_dict``/``model``: Lightning, plain PyTorch loops), loaded tensors-only."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GeoSegError("weights file not found", path) from None
    except pickle.UnpicklingError as exc:
        raise GeoSegError("refused: the file holds objects other than tensors (possible pickle payload)", path) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GeoSegError(f"not a PyTorch weights file: {str(exc).splitlines()[0]}", path) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise GeoSegError("holds no state dict (a mapping of parameter names to tensors)", path)
    return loaded


def encoder_keys(resnet: nn.Module) -> dict[str, torch.Size]:
    """A torchvision ResNet's encoder parameters and buffers (everything but the classifier ``fc``)."""
    return {k: v.shape for k, v in resnet.state_dict().items() if not k.startswith("fc.")}


def encoder_weights(state: dict[str, torch.Tensor], resnet: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder part of ``state`` under torchvision names, whatever wraps it (see the module docstring).

    The first convolution is returned as the checkpoint has it (any band count); every other tensor must have
    ``resnet``'s shape.
    """
    wanted = encoder_keys(resnet)
    prefixes = {k[: -len(STEM)] for k in state if k.endswith(STEM)}  # layerN.M.conv1 too: they match nothing
    if not prefixes:
        raise GeoSegError("no ResNet in the weights file (no first convolution 'conv1.weight')", path)

    def rank(prefix: str) -> tuple[int, bool, int]:
        # Most encoder keys found; on a tie, not a momentum/teacher copy (MoCo keeps encoder_q and encoder_k:
        # transfer uses the query encoder), then the shortest prefix.
        copy = any(tag in prefix for tag in ("encoder_k", "momentum", "teacher", "ema"))
        return sum(1 for k in wanted if prefix + k in state), not copy, -len(prefix)

    prefix = max(sorted(prefixes), key=rank)
    found = {k: state[prefix + k] for k in wanted if prefix + k in state}
    missing = [k for k in wanted if k not in found]
    if missing:
        raise GeoSegError(
            f"the weights are not a ResNet of this depth: {len(missing)} encoder parameters missing under "
            f"{prefix or 'no prefix'!r} (e.g. {missing[0]})",
            path,
        )
    extra = sorted(
        k[len(prefix) :]
        for k in state
        if k.startswith(prefix) and k[len(prefix) :].startswith("layer") and k[len(prefix) :] not in wanted
    )
    if extra:  # a resnet34 holds every resnet18 key, and more blocks: a partial load would go unnoticed
        raise GeoSegError(
            f"the weights are not a ResNet of this depth: {len(extra)} encoder parameters beyond it (e.g. {extra[0]})",
            path,
        )
    for key, tensor in found.items():
        if key != STEM and tensor.shape != wanted[key]:
            raise GeoSegError(
                f"the weights are not a ResNet of this depth: {key} is {tuple(tensor.shape)}, "
                f"expected {tuple(wanted[key])}",
                path,
            )
    if found[STEM].ndim != 4 or found[STEM].shape[0] != wanted[STEM][0]:
        raise GeoSegError(f"the first convolution is {tuple(found[STEM].shape)}, not a ResNet stem", path)
    return found


def first_conv(
    weight: torch.Tensor, model_bands: list[str] | None, checkpoint_bands: list[str] | None, in_channels: int
) -> tuple[torch.Tensor, list[str]]:
    """The model's first-conv kernels ``[out, in_channels, k, k]`` from the checkpoint's, band by name (see the
    module docstring), and the names of the model bands that got no kernel of their own."""
    ckpt_count = weight.shape[1]
    if checkpoint_bands is not None and len(checkpoint_bands) != ckpt_count:
        raise GeoSegError(
            f"model.pretrained.bands names {len(checkpoint_bands)} bands; the checkpoint's first convolution "
            f"has {ckpt_count}"
        )
    if checkpoint_bands is None or model_bands is None:
        if ckpt_count == in_channels:
            return weight.clone(), []
        index = torch.arange(in_channels) % ckpt_count
        return weight[:, index] * (ckpt_count / in_channels), []
    if len(model_bands) != in_channels:
        raise GeoSegError(f"data.band_names names {len(model_bands)} bands; the scenes have {in_channels}")
    lookup = {name.casefold(): i for i, name in enumerate(checkpoint_bands)}
    fallback = weight.mean(dim=1)
    slices, unknown = [], []
    for name in model_bands:
        if name.casefold() in lookup:
            slices.append(weight[:, lookup[name.casefold()]])
        else:
            slices.append(fallback)
            unknown.append(name)
    return torch.stack(slices, dim=1) * (ckpt_count / in_channels), unknown
