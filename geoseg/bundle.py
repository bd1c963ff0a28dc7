"""Model bundles: a directory with ``weights.pt`` (a state_dict) and ``bundle.json`` (everything else).

A bundle is all that ``geoseg predict`` needs: the architecture and its arguments, which bands to read and
how to normalise them, which class id and colour each output channel means, and how nodata is handled.
Weights load with ``torch.load(weights_only=True)``, so a bundle cannot run code on the machine loading it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from geoseg import __version__
from geoseg.errors import GeoSegError
from geoseg.geometry import ModelGeometry
from geoseg.io.normalisation import Normalisation
from geoseg.io.writer import temp_sibling
from geoseg.models import build_model
from geoseg.models.pretrained import read_state_dict
from geoseg.settings import Strict

SPEC_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1

# Distinct, colour-blind-friendly-ish defaults for untrained bundles (Tableau 10).
PALETTE: list[tuple[int, int, int]] = [
    (78, 121, 167),
    (242, 142, 43),
    (225, 87, 89),
    (118, 183, 178),
    (89, 161, 79),
    (237, 201, 72),
    (176, 122, 161),
    (255, 157, 167),
    (156, 117, 95),
    (186, 176, 172),
]


class BandSpec(Strict):
    name: str = Field(min_length=1, description="Band name, e.g. 'red' or 'B4'.")
    index: int = Field(ge=1, description="1-based band index to read from the input raster.")
    mean: float = Field(allow_inf_nan=False, description="Mean of the raw band values over the training scenes.")
    std: float = Field(gt=0, allow_inf_nan=False, description="Standard deviation of the raw band values.")


Channel = Annotated[int, Field(ge=0, le=255)]


class ClassSpec(Strict):
    id: int = Field(ge=0, le=254, description="Value written to the class raster (255 is nodata).")
    name: str = Field(min_length=1)
    color: tuple[Channel, Channel, Channel] = Field(description="RGB colour (0-255 each) for the colour table.")


class ArchitectureSpec(Strict):
    name: str = Field(description="Registered architecture name (see geoseg.models.MODELS).")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Constructor arguments besides in_channels and num_classes."
    )


class BundleSpec(Strict):
    format_version: int = FORMAT_VERSION
    geoseg_version: str = __version__
    architecture: ArchitectureSpec
    bands: list[BandSpec]
    input_band_count: int = Field(
        ge=1,
        description="Band count of the scenes the model was trained on; "
        "scenes with another count are rejected rather than misread.",
    )
    classes: list[ClassSpec]
    input_nodata: float | None = Field(
        None,
        description="Nodata value to assume when an input file declares none; a file's own nodata/mask always applies.",
    )
    ignore_index: int = Field(255, description="Label value ignored by the loss and the metrics.")
    output_stride: int | None = Field(
        None, description="The model's total down-sampling (tile strides are aligned to it); from the architecture."
    )
    receptive_field: int | None = Field(
        None,
        description="Radius in pixels of the input that can change one output pixel; prediction's default halo "
        "covers it. Computed from the architecture.",
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Training/validation metrics.")
    pretrained: dict[str, Any] | None = Field(
        None,
        description="The checkpoint the encoder started from (file name, sha256) and which bands took its kernels "
        "and its normalisation.",
    )
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _consistent(self) -> BundleSpec:
        """What no single field can say: ids and names unique (two classes with one id would be merged into
        one without a word), every band read from the scenes the model was trained on."""
        groups: tuple[tuple[str, list[Any]], ...] = (
            ("class id", [c.id for c in self.classes]),
            ("class name", [c.name for c in self.classes]),
            ("band name", [b.name for b in self.bands]),
        )
        for what, values in groups:
            twice = sorted({v for v in values if values.count(v) > 1}, key=str)
            if twice:
                raise ValueError(f"{what} {twice[0]!r} is given twice")
        if not self.classes or not self.bands:
            raise ValueError("a bundle needs at least one band and one class")
        beyond = [b for b in self.bands if b.index > self.input_band_count]
        if beyond:
            raise ValueError(
                f"band {beyond[0].name!r} is read from band {beyond[0].index}, but input_band_count is "
                f"{self.input_band_count}"
            )
        return self

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(
                f"bundle format {value} is not supported by geoseg {__version__} (expects {FORMAT_VERSION})"
            )
        return value

    def geometry(self) -> ModelGeometry:
        """Output stride and receptive field: stored in the bundle, or computed from the architecture (bundles
        written before they were recorded)."""
        if self.output_stride is not None and self.receptive_field is not None:
            return ModelGeometry(self.output_stride, self.receptive_field)
        return model_geometry(self.build())

    def normalisation(self) -> Normalisation:
        """The normalisation this bundle's model was trained with (io knows no bundles: it is built here)."""
        return Normalisation.of(
            [b.index for b in self.bands],
            [b.mean for b in self.bands],
            [b.std for b in self.bands],
            self.input_band_count,
            self.input_nodata,
        )

    def build(self) -> nn.Module:
        """An (untrained) model of this bundle's architecture."""
        return build_model(
            self.architecture.name,
            in_channels=len(self.bands),
            num_classes=len(self.classes),
            **self.architecture.kwargs,
        )


def model_geometry(model: nn.Module) -> ModelGeometry:
    """Output stride and receptive field of a built model (every registered architecture provides both)."""
    stride, field = getattr(model, "output_stride", None), getattr(model, "receptive_field", None)
    if not isinstance(stride, int) or not callable(field):
        raise TypeError(f"{type(model).__name__} does not say its output stride and receptive field")
    return ModelGeometry(stride, int(field()))


def save_bundle(directory: str | Path, spec: BundleSpec, model: nn.Module) -> Path:
    """Write a bundle atomically: a half-written bundle never appears under ``directory``."""
    directory = Path(directory)
    geometry = model_geometry(model)
    spec = spec.model_copy(
        update={"output_stride": geometry.output_stride, "receptive_field": geometry.receptive_field}
    )
    # Only a bundle is ever replaced: any other file or folder under that name is the user's, and stays.
    if directory.exists() and not (directory.is_dir() and (directory / SPEC_FILE).is_file()):
        raise GeoSegError("exists and is not a model bundle; refusing to replace it", directory)
    staging = temp_sibling(directory)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise GeoSegError(f"cannot create the bundle ({exc.strerror or exc})", directory) from None
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, staging / WEIGHTS_FILE)
        (staging / SPEC_FILE).write_text(spec.model_dump_json(indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_spec(directory: str | Path) -> BundleSpec:
    """Read and validate ``bundle.json``."""
    path = Path(directory) / SPEC_FILE
    try:
        return BundleSpec.model_validate(json.loads(path.read_text()))
    except (FileNotFoundError, NotADirectoryError):
        raise GeoSegError(f"not a model bundle (no {SPEC_FILE})", directory) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise GeoSegError(f"cannot read the bundle spec ({getattr(exc, 'strerror', None) or exc})", path) from None
    except json.JSONDecodeError as exc:
        raise GeoSegError(f"corrupt bundle spec: {exc}", path) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise GeoSegError(f"invalid bundle spec: {where + ': ' if where else ''}{message}", path) from exc


def load_bundle(directory: str | Path) -> tuple[BundleSpec, nn.Module]:
    """Load spec and weights into a model in eval mode."""
    spec = load_spec(directory)
    try:
        model = spec.build()
    except GeoSegError as exc:  # architecture arguments no model can take: name the file that holds them
        raise GeoSegError(exc.cause, exc.path or Path(directory) / SPEC_FILE) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise GeoSegError(f"invalid architecture: {exc}", Path(directory) / SPEC_FILE) from exc
    path = Path(directory) / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GeoSegError(f"bundle has no {WEIGHTS_FILE}", directory) from None
    except pickle.UnpicklingError as exc:
        raise GeoSegError(
            "refused to load weights: the file holds objects other than tensors (possible pickle payload)", path
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise GeoSegError(f"corrupt weights: {str(exc).splitlines()[0]}", path) from exc
    if not isinstance(state, dict):
        raise GeoSegError("corrupt weights: not a state dict", path)
    fit_state_dict(state, model, path)  # one line naming the first parameter that differs
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise GeoSegError(f"weights do not match the architecture in {SPEC_FILE}: {lines[-1]}", path) from exc
    return spec, model.eval()


def default_classes(num_classes: int) -> list[ClassSpec]:
    return [ClassSpec(id=i, name=f"class_{i}", color=PALETTE[i % len(PALETTE)]) for i in range(num_classes)]


# Prefixes training wrappers put before a model's own parameter names (DDP, Lightning modules, compiled models).
_WRAPPER_PREFIXES = ("module.", "model.", "net.", "network.", "_orig_mod.")


def fit_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """``state`` with wrapper prefixes removed so that it is exactly ``model``'s, or a one-line refusal saying
    what differs (a partial load would predict with random layers and nobody would notice)."""
    wanted = model.state_dict()

    def views(keys: dict[str, torch.Tensor], depth: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        yield keys  # as given, then under each wrapper prefix (a Lightning task also holds criterion.*, ...)
        for prefix in _WRAPPER_PREFIXES if depth < 3 else ():
            inner = {k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)}
            if inner:
                yield from views(inner, depth + 1)

    found = [view for view in views(dict(state)) if set(view) == set(wanted)]
    keys = found[0] if found else min(views(dict(state)), key=lambda v: len(set(v) ^ set(wanted)))
    missing, unexpected = sorted(set(wanted) - set(keys)), sorted(set(keys) - set(wanted))
    if missing or unexpected:
        raise GeoSegError(
            f"the weights are not this architecture's: {len(missing)} parameters missing (e.g. "
            f"{', '.join(missing[:2]) or '-'}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2]) or '-'})",
            path,
        )
    for name, tensor in keys.items():
        if tensor.shape != wanted[name].shape:
            raise GeoSegError(
                f"the weights are not this architecture's: {name} is {tuple(tensor.shape)}, "
                f"the model's is {tuple(wanted[name].shape)}",
                path,
            )
    return keys


def init_bundle(
    out: str | Path,
    arch: str,
    in_channels: int,
    num_classes: int,
    seed: int = 0,
    classes: list[ClassSpec] | None = None,
    bands: list[BandSpec] | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Write a bundle: random weights (tests, benchmarks) or ``weights`` trained elsewhere, with the classes
    (names, colours) and bands (names, normalisation) the model was trained with; defaults ``class_<i>`` and
    identity normalisation."""
    if classes is not None and len(classes) != num_classes:
        raise GeoSegError(f"{len(classes)} classes named for a model with {num_classes} outputs")
    if bands is not None and len(bands) != in_channels:
        raise GeoSegError(f"{len(bands)} bands described for a model with {in_channels} input channels")
    try:
        spec = BundleSpec(
            architecture=ArchitectureSpec(name=arch, kwargs=kwargs),
            bands=bands or [BandSpec(name=f"band_{i}", index=i, mean=0.0, std=1.0) for i in range(1, in_channels + 1)],
            input_band_count=in_channels,
            classes=classes or default_classes(num_classes),
        )
    except ValidationError as exc:  # e.g. --class forest --class forest
        first = exc.errors()[0]
        raise GeoSegError(f"invalid bundle: {str(first['msg']).removeprefix('Value error, ')}", out) from exc
    torch.manual_seed(seed)
    model = spec.build()
    if weights is not None:
        model.load_state_dict(fit_state_dict(read_state_dict(weights), model, weights))
    return save_bundle(out, spec, model)
