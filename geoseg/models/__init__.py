"""Segmentation models and the name -> constructor registry used by bundles and configs.

Configs name an architecture by a string from :data:`MODELS`; nothing is imported by name from a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from geoseg.errors import GeoSegError
from geoseg.models.resnet_unet import ResNetUNet
from geoseg.models.smp_unet import SmpUNet
from geoseg.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "resnet_unet": ResNetUNet, "smp_unet": SmpUNet}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the architecture registered as ``name`` with its keyword arguments."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise GeoSegError(f"unknown architecture {name!r}; choose one of {sorted(MODELS)}") from None
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise GeoSegError(f"bad arguments for architecture {name!r}: {exc}") from exc


__all__ = ["MODELS", "ResNetUNet", "SmpUNet", "UNet", "build_model"]
