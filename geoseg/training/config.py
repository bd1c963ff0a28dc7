"""Training configuration: YAML validated by pydantic, with ``--set key=value`` overrides.

Unknown keys and bad values are errors that name the key. YAML is read with ``safe_load`` and no value is
ever imported or evaluated: architectures and losses are chosen by name from fixed registries.
"""

from __future__ import annotations

import glob
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from geoseg.bundle import ClassSpec
from geoseg.errors import GeoSegError
from geoseg.io import objectstore
from geoseg.io.paths import gdal_path, is_virtual
from geoseg.io.raster import PadMode
from geoseg.io.sources import STACK_SEPARATOR, base_name, parse_stack
from geoseg.io.stack import build_stack_vrt
from geoseg.settings import Strict, read_yaml_mapping, validated


class SceneSource(Strict):
    image: str = Field(
        description="Image GeoTIFF path or glob, relative to data.root; 'b1.tif+b2.tif+...' "
        "stacks one file per band (Landsat style)."
    )
    labels: str = Field(
        description="Class raster or polygon file; '{stem}' is replaced by the image's file "
        "stem, so one entry can describe a whole folder."
    )
    label_field: str = Field("class_id", description="Attribute holding the class id, for polygon labels.")

    @field_validator("labels")
    @classmethod
    def _only_stem(cls, value: str) -> str:
        """``{stem}`` is the one placeholder: anything else in braces would fail per scene, mid-run."""
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid pattern ({exc}); write '{{stem}}' or literal text") from None
        unknown = sorted({f for f in fields if f != "stem"})
        if unknown:
            raise ValueError(
                f"{value!r} holds the placeholder {{{unknown[0]}}}; the one placeholder is {{stem}} "
                "(the image's file name without its extension)"
            )
        return value


class RegionSpec(Strict):
    """A held-out place: bounds (in ``crs``) or the polygons of a file."""

    bounds: tuple[float, float, float, float] | None = Field(
        None, description="min x, min y, max x, max y, in `crs` (lon/lat with crs: EPSG:4326)."
    )
    crs: str | None = Field(None, description="CRS of `bounds`; default: each scene's own CRS.")
    polygons: str | None = Field(None, description="Polygon file (any OGR format), relative to data.root.")

    @model_validator(mode="after")
    def _one_kind(self) -> RegionSpec:
        if (self.bounds is None) == (self.polygons is None):
            raise ValueError("give either bounds or polygons")
        if self.crs is not None and self.bounds is None:
            raise ValueError("crs goes with bounds (a polygon file carries its own CRS)")
        if self.bounds is not None and not (self.bounds[0] < self.bounds[2] and self.bounds[1] < self.bounds[3]):
            raise ValueError("bounds must be min x, min y, max x, max y with min < max")
        return self


class DataConfig(Strict):
    root: str = Field(".", description="Folder that relative paths are resolved against.")
    stacks_dir: str | None = Field(
        None, description="Where band-stack VRTs are written; default: the run's output folder."
    )
    scenes: list[SceneSource] = Field(min_length=1, description="Training and validation scenes.")
    split: Literal["scene", "region", "blocks"] = Field(
        "scene",
        description="Spatial split (see geoseg/training/split.py): 'scene' holds out whole scenes (the last ones, "
        "sorted by path), 'region' strips of every scene (validation, then test, in the east), 'blocks' squares "
        "of block_size px.",
    )
    val_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of scenes (of each scene's width, of blocks) held out for validation."
    )
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share held out for the test set, scored once after training (0: no test set)."
    )
    val_region: RegionSpec | None = Field(None, description="Validation set by bounds or polygons (not drawn).")
    test_region: RegionSpec | None = Field(None, description="Test set by bounds or polygons (not drawn).")
    block_size: int = Field(128, ge=8, description="Side in pixels of the blocks of split: blocks.")
    block_layout: Literal["random", "checkerboard"] = Field(
        "random", description="Blocks drawn at random in exact shares, or diagonal checkerboard stripes."
    )
    split_seed: int = Field(0, description="Seed of the random block assignment (independent of optim.seed).")
    buffer: int | None = Field(
        None,
        ge=0,
        description="Pixels between sets that no set uses; default: the model's receptive-field radius, so no "
        "output pixel of one set depends on another set's image.",
    )
    patch_size: int = Field(128, ge=32, description="Training patch side in pixels.")
    patches_per_epoch: int = Field(512, ge=1, description="Random patches drawn per epoch (all workers).")
    val_stride: int | None = Field(None, description="Grid stride of validation patches; default patch_size.")
    nodata: float | None = Field(None, description="Image nodata value when the files declare none.")
    band_names: list[str] | None = Field(
        None,
        description="Name of each image band in order (e.g. [B02, B03, B04, B08]): kept in the bundle and matched "
        "to a pretrained checkpoint's bands. Default: the files' band descriptions, else band_1, band_2, ...",
    )
    balance_classes: bool = Field(
        False,
        description="Centre training patches on a uniformly drawn class "
        "(located on a coarse label grid), so rare classes are seen as often as common ones.",
    )
    augment: bool = Field(True, description="Flips, 90-degree rotations and per-band brightness/contrast.")
    loader_workers: int = Field(
        0,
        ge=0,
        description="DataLoader processes per training worker that read, label and augment patches (persistent; "
        "0 = in the training process). Give each its CPU: scaling.cpus_per_worker covers the training process "
        "plus these.",
    )
    prefetch: int = Field(2, ge=1, description="Batches each loader process prepares ahead.")

    @model_validator(mode="after")
    def _shares(self) -> DataConfig:
        val = 0.0 if self.val_region else self.val_fraction
        test = 0.0 if self.test_region else self.test_fraction
        if val + test >= 1:
            raise ValueError("val_fraction + test_fraction must leave a share for training")
        return self


class PretrainedConfig(Strict):
    """A published ResNet checkpoint to start the encoder from (see geoseg/models/pretrained.py)."""

    weights: str = Field(
        description="Local checkpoint file: torchvision, timm, SSL4EO-S12 (MoCo) or SatlasPretrain layout. Nothing "
        "is downloaded."
    )
    bands: list[str] | None = Field(
        None,
        description="The checkpoint's input bands in order (13 for Sentinel-2 L1C: B01 B02 B03 B04 B05 B06 B07 B08 "
        "B8A B09 B10 B11 B12), matched by name to data.band_names; unknown bands get the mean kernel. Unset: a "
        "3-band RGB checkpoint whose kernels are cycled over the bands.",
    )
    mean: list[float] | None = Field(
        None, description="The checkpoint's normalisation mean per band (its band order; one value: all bands)."
    )
    std: list[float] | None = Field(None, description="Its normalisation std, likewise (SSL4EO-S12: 10000).")

    @model_validator(mode="after")
    def _per_band(self) -> PretrainedConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            if self.bands is None:
                raise ValueError(f"{name} needs bands (which band each value is for)")
            if len(values) not in (1, len(self.bands)):
                raise ValueError(f"{name} has {len(values)} values for {len(self.bands)} bands")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std must be positive")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        return self

    def normalisation(self) -> dict[str, tuple[float, float]]:
        """(mean, std) by band name (case-folded), for the bands the checkpoint's normalisation covers."""
        if self.bands is None or self.mean is None or self.std is None:
            return {}
        count = len(self.bands)
        means = self.mean * count if len(self.mean) == 1 else self.mean
        stds = self.std * count if len(self.std) == 1 else self.std
        return {b.casefold(): (m, s) for b, m, s in zip(self.bands, means, stds, strict=True)}


class ModelConfig(Strict):
    arch: str = Field("unet", description="A registered architecture (geoseg.models.MODELS).")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"base_channels": 16, "depth": 3},
        description="Architecture arguments besides in_channels/num_classes.",
    )
    pretrained: PretrainedConfig | None = Field(
        None, description="Start the encoder from a published checkpoint (resnet_unet); the bundle keeps the weights."
    )

    @field_validator("arch")
    @classmethod
    def _registered(cls, value: str) -> str:
        from geoseg.models import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(sorted(MODELS))}")
        return value

    @model_validator(mode="after")
    def _pretrained_encoder(self) -> ModelConfig:
        if self.pretrained is not None and self.arch != "resnet_unet":
            raise ValueError("pretrained encoders are for arch: resnet_unet")
        if self.pretrained is not None and "weights" in self.kwargs:
            raise ValueError("give the checkpoint as model.pretrained.weights, not as kwargs.weights")
        return self


class OptimConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1, description="Per-worker batch size.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (one-cycle schedule).")
    weight_decay: float = Field(1e-4, ge=0)
    loss: Literal["ce", "bce", "dice", "ce_dice"] = "ce_dice"
    class_weights: list[float] | None = None
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better validation mIoU."
    )
    seed: int = 0


class ScalingOptions(Strict):
    workers: int = Field(2, ge=1, description="Ray Train workers (one per GPU on a GPU cluster).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=0, description="Worker crashes survived by restarting from the last checkpoint.")


class TrainConfig(Strict):
    name: str = Field(
        "geoseg",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Run name; rerunning with the same name and output folder resumes the run.",
    )
    data: DataConfig
    classes: list[ClassSpec] = Field(min_length=2)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingOptions = Field(default_factory=ScalingOptions)
    pad_mode: PadMode = Field(
        "reflect",
        description="How training patches are padded past a scene's edge; prediction pads tiles the same way "
        "by default (--pad).",
    )

    @model_validator(mode="after")
    def _dense_class_ids(self) -> TrainConfig:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError("class ids must be unique")
        return self

    def scene_pairs(self) -> list[tuple[Path, Path, str]]:
        """(image, labels, label_field) for every scene, with globs expanded, sorted by image path.

        ``data.root`` may be in object storage (``s3://bucket/prefix`` or ``/vsis3/...``): scenes and labels are
        then read in place through GDAL, and a glob is matched against the bucket's listing."""
        root_text = gdal_path(self.data.root)
        root = Path(root_text)  # a /vsis3/ path survives Path: no "//" inside
        pairs = []
        for source in self.data.scenes:
            if STACK_SEPARATOR in source.image:
                stack = parse_stack(source.image, root)
                folder = Path(self.data.stacks_dir or root)
                image = build_stack_vrt(stack.bands, folder / f"{base_name(stack)}.vrt")
                pairs.append((image, root / source.labels.format(stem=image.stem), source.label_field))
                continue
            pattern = str(root / source.image)
            if not glob.has_magic(pattern):
                images = [Path(pattern)]
            elif is_virtual(pattern):
                images = sorted(Path(p) for p in objectstore.glob(pattern))
            else:
                images = sorted(Path(p) for p in glob.glob(pattern))
            if not images:
                raise GeoSegError("data.scenes: no image matches", pattern)
            for image in images:
                labels = root / source.labels.format(stem=image.stem)
                pairs.append((image, labels, source.label_field))
        return sorted(pairs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise GeoSegError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path``, apply ``key=value`` overrides (values parsed as YAML), validate."""
    tree = read_yaml_mapping(path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise GeoSegError(f"--set expects key=value, got {item!r}")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return validate_config(tree, path)


def validate_config(tree: dict[str, Any], path: str | Path | None = None) -> TrainConfig:
    config: TrainConfig = validated(TrainConfig, tree, path)
    return config
