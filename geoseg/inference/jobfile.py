"""A prediction job as one validated value: ``geoseg predict``'s options, from the command line, from a job
file (``--config JOB.yaml``), or both (the command line wins). The CLI only parses; what the options mean and
which values are valid is declared here, and :meth:`PredictConfig.predict_options` makes the tiling/output
options the job runs with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from geoseg.io.raster import PadMode
from geoseg.settings import Strict, read_yaml_mapping, validated
from geoseg.vector.formats import FORMAT_NAMES

if TYPE_CHECKING:
    from geoseg.inference.options import PredictOptions
    from geoseg.io.maskrules import MaskOptions
    from geoseg.io.stac import StacFilter


class PredictConfig(Strict):
    """``geoseg predict --config``: the same options as the command line, kept in a file for batch jobs.

    Keys are the long option names with ``-`` written as ``_``; options given on the command line win.
    Relative paths are resolved against the working directory of the process (the job's working dir).
    """

    model: str | None = Field(None, description="Model bundle folder.")
    input: list[str] = Field(default_factory=list, description="Scene files, globs, folders or .txt/.csv lists.")
    output: str | None = Field(
        None, description="Job folder (outputs, manifest.json, report.json), or s3://bucket/prefix/."
    )
    stac_items: bool | None = Field(None, description="Also write stac/catalog.json and one STAC Item per scene.")
    stac_filter: list[str] | None = Field(
        None, description="Which items of STAC inputs run: datetime=START/END, bbox=W,S,E,N, max-cloud=PCT, ids=A,B."
    )
    tile: int | None = Field(None, ge=32, description="Tile side in pixels.")
    halo: int | None = Field(None, ge=0, description="Pixels cropped from each tile side that has a neighbour.")
    overlap: int | None = Field(None, ge=0, description="Blend width between neighbouring tiles.")
    block: int | None = Field(None, ge=32, description="Output block side in pixels: the unit of work.")
    batch_size: int | None = Field(None, ge=1, description="Tiles per model call.")
    workers: int | None = Field(None, ge=1, description="Model actors (default: one per GPU, else one per CPU).")
    pad: PadMode | None = Field(None, description="Padding at true image borders.")
    probabilities: bool | None = Field(None, description="Also write the per-class probability raster.")
    vectorize: str | None = Field(None, description="Also polygonize each class raster into this format.")
    skip_class: list[int] | None = Field(None, description="Class ids that yield no polygons (with vectorize).")
    min_area: float | None = Field(None, ge=0, description="Minimum mapping unit in m2 (regions merged, a partition).")
    fill_holes: float | None = Field(None, ge=0, description="Fill holes below this area in m2 (inside absorbed).")
    simplify: float | None = Field(None, ge=0, description="Polygon simplification tolerance in map units.")
    mask_asset: str | None = Field(
        None, description="STAC asset of each item whose values mask pixels (SCL, qa_pixel): clouds become nodata."
    )
    mask_file: str | None = Field(
        None, description="Mask raster per scene by pattern ({stem}, {name}; relative to the scene's folder)."
    )
    mask_values: str | None = Field(
        None,
        description="Values that mask: scl, scl-snow, qa-pixel, qa-pixel-snow, values (2,4) or bits (bits:1,3). "
        "Default: the asset's preset (SCL, qa_pixel).",
    )
    mask_buffer: float | None = Field(None, ge=0, description="Grow masked areas by this distance in metres.")
    compile: bool | None = Field(None, description="torch.compile the model in each worker (GPU jobs).")
    in_process: bool | None = Field(None, description="True: in this process; False: on Ray; unset: by job size.")
    ray_address: str | None = Field(None, description="Existing Ray cluster; local Ray by default.")

    @field_validator("vectorize")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in FORMAT_NAMES:
            raise ValueError(f"one of {', '.join(FORMAT_NAMES)}")
        return value

    @field_validator("mask_values")
    @classmethod
    def _mask_rule(cls, value: str | None) -> str | None:
        if value is not None:
            from geoseg.io.maskrules import MaskRule

            MaskRule.parse(value)
        return value

    @model_validator(mode="after")
    def _one_mask_source(self) -> PredictConfig:
        if self.mask_asset is not None and self.mask_file is not None:
            raise ValueError("mask_asset and mask_file: a mask comes from one of them")
        if self.mask_values is not None and self.mask_asset is None and self.mask_file is None:
            raise ValueError("mask_values without mask_asset or mask_file: say where the mask is")
        if self.mask_buffer and self.mask_asset is None and self.mask_file is None:
            raise ValueError("mask_buffer without mask_asset or mask_file: say where the mask is")
        if self.mask_file is not None and self.mask_values is None:
            raise ValueError("mask_file needs mask_values: the values that mean not ground (Fmask: 2,4; 0/1: 1)")
        if self.mask_asset is not None and self.mask_values is None:
            from geoseg.io.maskrules import MaskRule

            if MaskRule.default_for(self.mask_asset) is None:
                raise ValueError(f"mask_asset {self.mask_asset} has no preset: give mask_values")
        return self

    def mask_options(self) -> MaskOptions | None:
        """The job's masks (validated above), or None."""
        from geoseg.io.maskrules import MaskOptions, MaskRule

        if self.mask_asset is None and self.mask_file is None:
            return None
        rule = MaskRule.parse(self.mask_values) if self.mask_values else MaskRule.default_for(self.mask_asset or "")
        assert rule is not None
        return MaskOptions(rule, self.mask_asset, self.mask_file, self.mask_buffer or 0.0)

    def predict_options(self) -> PredictOptions:
        """Tiling, padding and outputs of this job (unset tiling values follow the model)."""
        from geoseg.inference.options import PredictOptions
        from geoseg.vector.polygonize import VectorizeOptions

        vectors = None
        if self.vectorize is not None:
            vectors = VectorizeOptions(
                skip_classes=frozenset(self.skip_class or ()),
                min_area_m2=self.min_area or 0.0,
                fill_holes_m2=self.fill_holes or 0.0,
                simplify=self.simplify or 0.0,
                fmt=self.vectorize,
            )
        return PredictOptions(
            tile=self.tile,
            halo=self.halo,
            overlap=self.overlap,
            block=self.block,
            batch_size=self.batch_size,
            pad_mode=self.pad or "reflect",
            probabilities=bool(self.probabilities),
            vectors=vectors,
            mask=self.mask_options(),
        )

    def stac(self) -> StacFilter:
        from geoseg.io.stac import StacFilter

        return StacFilter.parse(self.stac_filter or [])


def load_predict_config(path: str | Path) -> PredictConfig:
    """Read and validate a predict job file; unknown keys are errors that name the key."""
    config: PredictConfig = validated(PredictConfig, read_yaml_mapping(path), path)
    return config
