"""The ``geoseg`` command line. Errors a user can cause print one line and exit 1 (``--debug`` for tracebacks)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from geoseg import __version__
from geoseg.errors import GeoSegError
from geoseg.vector.formats import FORMAT_NAMES
from geoseg.vector.polygonize import VectorizeOptions

if TYPE_CHECKING:
    from geoseg.bundle import BandSpec, ClassSpec

console = Console(stderr=True, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Land-cover segmentation of GeoTIFF archives with U-Nets on Ray."""
    # --debug is read by main() before click runs: the error handling around the command depends on it.


def _polygon_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The polygon clean-up options, declared once for ``vectorize`` and ``predict --vectorize``."""
    options = [
        click.option("--skip-class", "skip_class", type=int, multiple=True, help="Class id that yields no polygons."),
        click.option(
            "--min-area",
            type=click.FloatRange(min=0),
            default=0,
            show_default=True,
            help="Minimum mapping unit (m2): smaller regions are merged into their largest neighbour (sieve).",
        ),
        click.option(
            "--fill-holes",
            type=click.FloatRange(min=0),
            default=0,
            show_default=True,
            help="Holes below this area (m2) are filled; what was inside them is absorbed.",
        ),
        click.option(
            "--simplify",
            type=click.FloatRange(min=0),
            default=0,
            show_default=True,
            help="Tolerance in map units; shared edges stay shared.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _vectorize_options(
    skip_class: tuple[int, ...], min_area: float, fill_holes: float, simplify: float, **rest: Any
) -> VectorizeOptions:
    return VectorizeOptions(
        skip_classes=frozenset(skip_class), min_area_m2=min_area, fill_holes_m2=fill_holes, simplify=simplify, **rest
    )


@cli.group()
def bundle() -> None:
    """Create and inspect model bundles."""


def _class_spec(index: int, text: str) -> ClassSpec:
    """``NAME`` or ``NAME=#RRGGBB`` from ``--class`` (ids follow the order given)."""
    from geoseg.bundle import PALETTE, ClassSpec

    name, _, colour = text.partition("=")
    digits = colour.strip().lstrip("#")
    if not name.strip() or (colour and (len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits))):
        raise GeoSegError(f"--class takes NAME or NAME=#RRGGBB, got {text!r}")
    rgb = (
        (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)) if colour else PALETTE[index % len(PALETTE)]
    )
    return ClassSpec(id=index, name=name.strip(), color=rgb)


def _band_spec(index: int, text: str) -> BandSpec:
    """``NAME`` or ``NAME:MEAN:STD`` from ``--band`` (read from band ``index``)."""
    from geoseg.bundle import BandSpec

    name, *stats = text.split(":")
    try:
        if len(stats) not in (0, 2) or not name.strip():
            raise ValueError
        mean, std = (float(stats[0]), float(stats[1])) if stats else (0.0, 1.0)
        if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
            raise ValueError
    except ValueError:
        raise GeoSegError(f"--band takes NAME or NAME:MEAN:STD, finite numbers with STD > 0, got {text!r}") from None
    return BandSpec(name=name.strip(), index=index, mean=mean, std=std)


@bundle.command("init")
@click.option(
    "--arch",
    required=True,
    help="A registered architecture (geoseg.models.MODELS: unet, resnet_unet, smp_unet); smp_unet is "
    "segmentation_models_pytorch / TorchGeo's Unet with a ResNet encoder, weight for weight.",
)
@click.option("--in-channels", type=click.IntRange(min=1), required=True)
@click.option("--num-classes", type=click.IntRange(min=1, max=255), required=True)
@click.option("--base-channels", type=click.IntRange(min=1), help="U-Net width (unet only).")
@click.option("--depth", type=click.IntRange(min=1), help="U-Net depth (unet only).")
@click.option("--encoder", help="ResNet encoder of resnet_unet and smp_unet: resnet18, resnet34 or resnet50.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--class",
    "class_specs",
    multiple=True,
    metavar="NAME[=#RRGGBB]",
    help="A class, in output-channel order (ids 0, 1, ...), with its colour (repeat once per class).",
)
@click.option(
    "--band",
    "band_specs",
    multiple=True,
    metavar="NAME[:MEAN:STD]",
    help="An input band, in order (read from band 1, 2, ...), with the normalisation the model was trained with.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Weights trained elsewhere: a state dict or a checkpoint holding one (DDP/Lightning prefixes removed).",
)
@click.option(
    "--out", "--output", "out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write."
)
def bundle_init(
    arch: str,
    in_channels: int,
    num_classes: int,
    base_channels: int | None,
    depth: int | None,
    encoder: str | None,
    seed: int,
    class_specs: tuple[str, ...],
    band_specs: tuple[str, ...],
    weights: Path | None,
    out: Path,
) -> None:
    """Write a bundle: your model's weights, classes and bands (or random weights for tests and benchmarks)."""
    from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE, init_bundle

    for name in (SPEC_FILE, WEIGHTS_FILE):  # a bundle is a model's only copy: never replaced by another
        if os.path.lexists(out / name):
            raise GeoSegError(
                f"holds a model bundle ({name}); bundle init never replaces one: choose another --out", out
            )

    kwargs: dict[str, Any] = {
        k: v for k, v in {"base_channels": base_channels, "depth": depth, "encoder": encoder}.items() if v is not None
    }
    path = init_bundle(
        out,
        arch,
        in_channels,
        num_classes,
        seed=seed,
        classes=[_class_spec(i, text) for i, text in enumerate(class_specs)] or None,
        bands=[_band_spec(i, text) for i, text in enumerate(band_specs, start=1)] or None,
        weights=weights,
        **kwargs,
    )
    click.echo(str(path))


@bundle.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
def bundle_info(directory: Path) -> None:
    """Print a bundle's spec (architecture, bands, classes, metrics) and parameter count."""
    from geoseg.bundle import load_bundle

    spec, model = load_bundle(directory)
    info = spec.model_dump(mode="json") | {"parameters": sum(p.numel() for p in model.parameters())}
    click.echo(json.dumps(info, indent=2))


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="Training YAML.")
@click.option(
    "--output",
    "--out",
    "output",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder: bundle/, metrics.json, curves.png, checkpoints (rerun to resume).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--ray-address", envvar="RAY_ADDRESS", help="Existing Ray cluster; local Ray by default.")
def train(config_path: Path, output: Path, overrides: tuple[str, ...], ray_address: str | None) -> None:
    """Train a model with Ray Train; writes OUTPUT/bundle, metrics.json and curves.png."""
    from geoseg.training.config import load_config
    from geoseg.training.loop import train as run_train

    cfg = load_config(config_path, list(overrides))
    run_train(cfg, output, ray_address=ray_address, console=console)


def _predict_config_defaults(ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    """Make the values of ``--config FILE`` the defaults of the other options (the command line wins)."""
    if path is not None:
        from geoseg.inference.jobfile import load_predict_config

        values = load_predict_config(path).model_dump(exclude_none=True)
        if not values.get("input"):
            values.pop("input", None)
        ctx.default_map = values  # parameters are named as the job file's keys
    return path


@cli.command()
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_predict_config_defaults,
    help="YAML job file with any of these options (keys: long names with _); the command line wins.",
)
@click.option("--model", required=True, help="Model bundle folder, or s3://bucket/prefix/ of one.")
@click.option("--input", multiple=True, help="Scene file, glob, folder or .txt/.csv list.")
@click.argument("more_inputs", nargs=-1)
@click.option(
    "--output",
    "--out",
    "output",
    required=True,
    help="Job folder (created), or s3://bucket/prefix/: products published there as objects, resumable.",
)
@click.option(
    "--stac-filter",
    multiple=True,
    metavar="KEY=VALUE",
    help="Which items of STAC inputs to run: datetime=START/END, bbox=W,S,E,N (lon/lat), max-cloud=PCT, ids=A,B.",
)
@click.option(
    "--stac-items/--no-stac-items",
    default=None,
    help="Also describe the results as a STAC catalogue: stac/catalog.json and one Item per finished scene.",
)
@click.option(
    "--tile", type=click.IntRange(min=32), help="Tile side in pixels (default: from the model's receptive field)."
)
@click.option(
    "--halo",
    type=click.IntRange(min=0),
    help="Pixels cropped from each tile side that has a neighbour (default: covers the model's receptive field).",
)
@click.option(
    "--overlap", type=click.IntRange(min=0), help="Blend width between neighbouring tiles (default 0: none needed)."
)
@click.option(
    "--block",
    type=click.IntRange(min=32),
    help="Output block side: the unit of work (default 1024 px on CPU workers, 2048 on GPUs).",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Tiles per model call (default: about 4 Mpx).")
@click.option("--workers", type=click.IntRange(min=1), help="Model actors (default: one per GPU, else one per CPU).")
@click.option(
    "--pad",
    type=click.Choice(["reflect", "constant", "nodata"]),
    default="reflect",
    show_default=True,
    help="How tiles are padded beyond the scene's edge (reflect matches training crops).",
)
@click.option(
    "--probabilities/--no-probabilities",
    default=None,
    help="Also write <scene>_probabilities.tif: one uint8 band per class (p x 254) + confidence.",
)
@click.option(
    "--vectorize",
    type=click.Choice(FORMAT_NAMES),
    help="Also polygonize each class raster into <scene>.<format> (changing only polygon options reruns no model).",
)
@click.option("--no-vectorize", is_flag=True, help="No polygons, whatever the job file says.")
@_polygon_options
@click.option(
    "--mask-asset",
    metavar="KEY",
    help="STAC asset whose values mask pixels (SCL, qa_pixel): clouds and shadows become nodata everywhere.",
)
@click.option(
    "--mask-file",
    metavar="PATTERN",
    help="A mask raster per scene, e.g. '{stem}_mask.tif' beside it (Fmask, s2cloudless, hand-made).",
)
@click.option(
    "--mask-values",
    metavar="SPEC",
    help="What masks: scl, scl-snow, qa-pixel, qa-pixel-snow, values (2,4) or bits (bits:1,3); "
    "default: the asset's preset.",
)
@click.option("--mask-buffer", type=float, metavar="METRES", help="Grow masked areas by this distance.")
@click.option("--compile/--no-compile", default=None, help="torch.compile the model in each worker (GPU jobs).")
@click.option(
    "--in-process/--ray",
    "in_process",
    default=None,
    help="Run the model in this process or on a Ray pool (default: in this process for jobs under 24 Mpx when no "
    "cluster or --workers is given; Ray otherwise).",
)
@click.option("--ray-address", envvar="RAY_ADDRESS", help="Existing Ray cluster; local Ray by default.")
def predict(more_inputs: tuple[str, ...], no_vectorize: bool, **params: Any) -> None:
    """Predict class rasters (COG) for every input scene; exit 1 if any scene failed.

    MORE_INPUTS (like --input): scene files, globs, folders, .txt/.csv lists, band stacks written
    a.tif+b.tif+c.tif, GDAL paths (/vsis3/..., s3://...), or STAC Items, ItemCollections and Catalogs (.json,
    local or s3://): one scene per item, bands chosen by the bundle's band names. Scenes named on the command
    line (here or with --input) replace the job file's input; both forms add up.
    """
    from click.core import ParameterSource

    from geoseg.inference.job import predict_archive
    from geoseg.inference.jobfile import PredictConfig
    from geoseg.io.objectstore import is_s3
    from geoseg.settings import validated

    context = click.get_current_context()
    from_file = context.get_parameter_source("input") == ParameterSource.DEFAULT_MAP
    params["input"] = [*([] if from_file and more_inputs else params["input"]), *more_inputs]
    if no_vectorize:
        params["vectorize"] = None
    _refuse_file_name_as_job_folder(params.get("output"))
    job: PredictConfig = validated(PredictConfig, params)  # the one place that says what is valid
    if not job.input:
        raise GeoSegError("no --input given")
    model, output = job.model or "", job.output or ""
    reports = predict_archive(
        model if is_s3(model) else Path(model),
        job.input,
        output if is_s3(output) else Path(output),
        job.predict_options(),
        job.workers,
        job.ray_address,
        console,
        compile=bool(job.compile),
        in_process=job.in_process,
        stac_filter=job.stac(),
        stac_items=bool(job.stac_items),
    )
    failed = [r for r in reports if r.status == "failed"]
    polygons = [r for r in reports if r.status != "failed" and r.error]  # rasters published, polygons not
    report = f"{output.rstrip('/')}/report.json" if is_s3(output) else Path(output) / "report.json"
    more = f", {len(polygons)} without their polygons (rerun to make them)" if polygons else ""
    console.print(
        f"{len(reports) - len(failed)} scene(s) done, {len(failed)} failed{more}; report: {report}", markup=False
    )
    if failed or polygons:
        sys.exit(1)


def _refuse_file_name_as_job_folder(output: str | None) -> None:
    """``predict --output classes.tif`` made a folder of that name without a word; a job folder is a folder.
    (An existing folder of that name is still a job folder; an existing file is refused by the job itself.)"""
    from geoseg.io.sources import RASTER_SUFFIXES
    from geoseg.vector.formats import FORMATS

    suffix = Path(output).suffix.lower() if output else ""
    named_a_file = suffix in RASTER_SUFFIXES or suffix in FORMATS  # the files geoseg reads and writes
    if output and not output.startswith("s3://") and named_a_file and not Path(output).exists():
        raise GeoSegError(
            "predict writes a job folder (one class raster per scene, the manifest and the report); this names "
            "a file: give a folder, e.g. --output results/",
            output,
        )


@cli.command()
@click.argument("mask", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "--out",
    "output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output file; its extension (or --format) picks the format.",
)
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES))
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Window side in pixels; memory scales with it, not with the raster.",
)
@click.option("--connectivity", type=click.Choice(["4", "8"]), default="4", show_default=True)
@_polygon_options
@click.option("--to-crs", help="Reproject the polygons, e.g. EPSG:4326.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel chunk workers on Ray (default: all CPUs).")
@click.option("--ray-address", envvar="RAY_ADDRESS", help="Existing Ray cluster; local Ray by default.")
def vectorize(
    mask: Path,
    output: Path,
    fmt: str | None,
    chunk: int,
    connectivity: str,
    skip_class: tuple[int, ...],
    min_area: float,
    fill_holes: float,
    simplify: float,
    to_crs: str | None,
    workers: int | None,
    ray_address: str | None,
) -> None:
    """Polygonize a class raster chunk by chunk (exactly as a whole-raster polygonize) and export it."""
    from geoseg.vector.export import output_path
    from geoseg.vector.job import vectorize_raster

    options = _vectorize_options(
        skip_class, min_area, fill_holes, simplify, chunk=chunk, connectivity=int(connectivity), to_crs=to_crs, fmt=fmt
    )
    output = output_path(output, fmt)
    count = vectorize_raster(mask, [output], options, workers, ray_address, console)
    console.print(f"{count} polygons -> {output}", markup=False)


@cli.command()
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Predicted class raster.")
@click.option("--truth", type=click.Path(path_type=Path), required=True, help="Class raster or polygons.")
@click.option("--class-field", default="class_id", show_default=True, help="Class attribute of truth polygons.")
@click.option(
    "--out",
    "--output",
    "out",
    type=click.Path(path_type=Path),
    help="Write the metrics JSON here (folders are created).",
)
@click.option(
    "--remap",
    multiple=True,
    metavar="FROM=TO",
    help="Translate a truth id before scoring, e.g. --remap 255=1 for a 0/255 building mask (repeatable).",
)
@click.option(
    "--background",
    type=click.IntRange(min=0),
    help="With polygon truth: the class of valid pixels that no polygon covers (e.g. 0 for footprints).",
)
@click.option(
    "--region",
    type=click.Path(path_type=Path),
    help="Score only inside these polygons, or the pixels of this raster with a --region-value (default: non-zero).",
)
@click.option(
    "--region-value",
    type=int,
    multiple=True,
    help="With a raster --region: the values scored, e.g. 2 for the test set of a training run's split/<scene>.tif.",
)
def evaluate(
    pred: Path,
    truth: Path,
    class_field: str,
    out: Path | None,
    remap: tuple[str, ...],
    background: int | None,
    region: Path | None,
    region_value: tuple[int, ...],
) -> None:
    """Per-class IoU/F1/precision/recall, mIoU and pixel accuracy of a prediction."""
    from geoseg.evaluate import evaluate as run_evaluate
    from geoseg.inference.manifest import write_json_atomic

    if out is not None:  # checked before the work, not after the metrics are printed
        if out.is_dir():
            raise GeoSegError("is a folder; --out takes a file name", out)
        from geoseg.io.guard import is_geoseg_json, refuse_foreign

        refuse_foreign(out, is_geoseg_json, "geoseg evaluate")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeoSegError(f"cannot create the folder for --out ({exc.strerror or exc})", out.parent) from exc
    mapping: dict[int, int] = {}
    for item in remap:
        source, _, target = item.partition("=")
        if not (source.strip().isdigit() and target.strip().isdigit()):
            raise GeoSegError(f"--remap takes FROM=TO with non-negative class ids, got {item!r}")
        mapping[int(source)] = int(target)
    metrics = run_evaluate(pred, truth, class_field, mapping, background, region, set(region_value) or None)

    def number(value: float | None, width: int = 8) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"  # undefined is not 0

    click.echo(f"{'class':<16}{'IoU':>8}{'F1':>8}{'prec':>8}{'recall':>8}{'support':>12}")
    for name, row in metrics["per_class"].items():
        click.echo(
            f"{name:<16}{number(row['iou'])}{number(row['f1'])}{number(row['precision'])}{number(row['recall'])}"
            f"{row['support']:>12}"
        )
    click.echo(f"mIoU {number(metrics['miou'], 0)}  pixel accuracy {number(metrics['pixel_accuracy'], 0)}")
    if "objects" in metrics:
        o = metrics["objects"]
        click.echo(
            f"objects (IoU >= {o['iou_threshold']}): precision {o['precision']:.3f}  recall {o['recall']:.3f}  "
            f"F1 {o['f1']:.3f}  ({o['matched']} of {o['truth']} truth, {o['predicted']} predicted)"
        )
    if out:
        try:
            write_json_atomic(out, {"geoseg_version": __version__, **metrics})
        except OSError as exc:
            raise GeoSegError(f"cannot write the metrics ({exc.strerror or exc})", out) from exc


class _Pairs(click.Option):
    """A repeatable ``ID=VALUE`` option that also takes the pairs that follow it (``--per-class 1=75 2=75``), as
    the survey literature writes them; ``--per-class 1=75 --per-class 2=75`` works too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name)
            if option is None:
                continue
            single = option.process

            def process(value: Any, state: Any, single: Any = single) -> None:
                single(value, state)
                while state.rargs and "=" in state.rargs[0] and not state.rargs[0].startswith("-"):
                    single(state.rargs.pop(0), state)

            option.process = process


def _pairs(option: str, items: tuple[str, ...], kind: type) -> dict[int, Any]:
    """``ID=VALUE`` items as a mapping; one line naming the option for anything else (or an id given twice)."""
    values: dict[int, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            cid, number = int(key), kind(value)
        except ValueError:
            raise GeoSegError(f"{option} takes CLASS_ID={kind.__name__.upper()} pairs, got {item!r}") from None
        if cid in values:
            raise GeoSegError(f"{option} gives class {cid} twice")
        values[cid] = number
    return values


@cli.command()
@click.argument("map_a", type=click.Path(path_type=Path))
@click.argument("map_b", type=click.Path(path_type=Path))
@click.option(
    "--output", "--out", "output", type=click.Path(path_type=Path), required=True, help="Folder for the products."
)
@click.option("--no-change", is_flag=True, help="All unchanged pixels one id (0, 'no change') instead of their class.")
@click.option(
    "--vectorize", type=click.Choice(FORMAT_NAMES), help="Also polygonize the transitions into change.<format>."
)
@_polygon_options
def change(
    map_a: Path,
    map_b: Path,
    output: Path,
    no_change: bool,
    vectorize: str | None,
    skip_class: tuple[int, ...],
    min_area: float,
    fill_holes: float,
    simplify: float,
) -> None:
    """From/to map of two maps of one place (B read on A's grid), with the transition matrix and its areas.

    Writes OUTPUT/change.tif (a COG: one id per transition, named 'forest -> developed', with colours and a QGIS
    style), transitions.json and transitions.csv (areas in m2 and ha), and with --vectorize change.<format>.
    """
    from geoseg.areas.change import change as run_change

    options = _vectorize_options(skip_class, min_area, fill_holes, simplify, fmt=vectorize) if vectorize else None
    record = run_change(map_a, map_b, output, no_change, options, console)
    changed = [t for t in record["transitions"] if t["from"] != t["to"]]  # type: ignore[attr-defined]
    total = float(record["total_area_m2"])  # type: ignore[arg-type]
    moved = sum(t["area_m2"] for t in changed)
    click.echo(f"{'transition':<40}{'pixels':>14}{'ha':>16}")
    for t in record["transitions"]:  # type: ignore[attr-defined]
        click.echo(f"{t['name'][:39]:<40}{t['pixels']:>14}{t['area_ha']:>16.2f}")
    console.print(
        f"{len(changed)} transition(s), {moved / 1e4:.2f} ha of {total / 1e4:.2f} ha changed -> {output}", markup=False
    )


@cli.command()
@click.argument("map_path", metavar="MAP", type=click.Path(path_type=Path))
@click.option(
    "--output", "--out", "output", type=click.Path(path_type=Path), required=True, help="The sheet to create (.gpkg)."
)
@click.option("--size", type=click.IntRange(min=1), help="Total sample size.")
@click.option(
    "--target-se",
    type=click.FloatRange(min=0, min_open=True, max=1, max_open=True),
    help="Or: the target standard error of overall accuracy (Olofsson et al. 2014, eq. 13), e.g. 0.01.",
)
@click.option(
    "--expected-ua",
    cls=_Pairs,
    metavar="ID=UA ...",
    help="With --target-se: each stratum's expected user's accuracy, e.g. --expected-ua 1=0.7 2=0.6 3=0.9.",
)
@click.option(
    "--allocation",
    type=click.Choice(["proportional", "equal"]),
    default="proportional",
    show_default=True,
    help="How the total is shared among strata (--per-class gives it explicitly).",
)
@click.option(
    "--min-per-class",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Floor per stratum, taken from the larger strata (Olofsson et al. recommend 50-100).",
)
@click.option("--per-class", cls=_Pairs, metavar="ID=N ...", help="Explicit sizes, e.g. --per-class 1=75 2=75 3=165.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same map: the same sheet.")
@click.option("--aoi", type=click.Path(path_type=Path), help="Sample only pixel centres inside these polygons.")
def sample(
    map_path: Path,
    output: Path,
    size: int | None,
    target_se: float | None,
    expected_ua: tuple[str, ...],
    allocation: str,
    min_per_class: int,
    per_class: tuple[str, ...],
    seed: int,
    aoi: Path | None,
) -> None:
    """A stratified random sample of MAP (its classes, or a change map's transitions, as strata) as a labelling
    sheet: a GeoPackage of points with a QGIS form for the reference class, and the strata's areas."""
    from geoseg.areas.sample import SampleDesign
    from geoseg.areas.sample import sample as run_sample

    given = [
        name for name, value in (("--size", size), ("--target-se", target_se), ("--per-class", per_class)) if value
    ]
    if len(given) > 1:
        raise GeoSegError(f"{' and '.join(given)} both set the sample size: give one")
    uas = _pairs("--expected-ua", expected_ua, float)
    if any(not 0 <= v <= 1 for v in uas.values()):
        raise GeoSegError("--expected-ua values are accuracies between 0 and 1")
    if uas and target_se is None:
        raise GeoSegError("--expected-ua goes with --target-se")
    design = SampleDesign(
        size=size,
        target_se=target_se,
        expected_ua=uas,
        allocation="explicit" if per_class else allocation,  # type: ignore[arg-type]
        min_per_class=min_per_class,
        per_class=_pairs("--per-class", per_class, int),
        seed=seed,
    )
    sheet, strata, sizes = run_sample(map_path, output, design, aoi, console)
    click.echo(f"{'stratum':<30}{'pixels':>14}{'area ha':>14}{'samples':>9}")
    for s in strata:
        click.echo(f"{s.name[:29]:<30}{s.pixels:>14}{s.area_m2 / 1e4:>14.2f}{sizes[s.id]:>9}")
    if size is not None and sum(sizes.values()) != size:
        console.print(
            f"warning: {sum(sizes.values())} samples, not --size {size}: the floor of {min_per_class} per stratum "
            "(--min-per-class) or the strata's own sizes decide",
            markup=False,
        )
    few = [s.name for s in strata if sizes[s.id] < 2]
    if few:
        console.print(
            f"warning: strata with fewer than 2 samples will have no variance: {', '.join(few)}", markup=False
        )
    console.print(f"{sum(sizes.values())} samples -> {sheet}", markup=False)


@cli.command()
@click.argument("sheet", type=click.Path(path_type=Path))
@click.option(
    "--out", "--output", "out", type=click.Path(path_type=Path), help="Write the JSON here (and <stem>_matrices.csv)."
)
def assess(sheet: Path, out: Path | None) -> None:
    """Accuracy and error-adjusted class areas with 95 % confidence intervals from a labelled sheet."""
    from geoseg.areas.assess import assess as run_assess
    from geoseg.areas.assess import table

    report, warnings = run_assess(sheet, out)
    for line in warnings:
        console.print(f"warning: {line}", markup=False)
    click.echo(table(report))
    if out is not None:
        console.print(f"assessment -> {out}", markup=False)


@cli.command()
@click.argument("jobs", nargs=-1, required=True)
@click.option(
    "--output", "--out", "output", type=click.Path(path_type=Path), required=True, help="Folder for the mosaic."
)
@click.option(
    "--method",
    type=click.Choice(["mean", "mode", "latest", "best"]),
    help="Per pixel: argmax of the mean probability (default with probabilities), the most frequent class "
    "(default without), the latest observation's class, or the most confident observation's.",
)
@click.option("--crs", help="Output CRS (EPSG:code, WKT, PROJ); default: the CRS most scenes use.")
@click.option("--resolution", type=float, help="Pixel size in CRS units; default: the finest of the scenes in the CRS.")
@click.option("--bounds", metavar="W,S,E,N", help="Extent in the output CRS (default: every scene's footprint).")
@click.option("--lonlat-bounds", metavar="W,S,E,N", help="Extent in longitude/latitude.")
@click.option("--aoi", type=click.Path(path_type=Path), help="Polygons (any vector file): pixels outside stay nodata.")
@click.option("--period", metavar="START/END", help="Only scenes acquired in it (ISO dates, both included, or a year).")
@click.option("--undated", is_flag=True, help="With --period: take scenes without an acquisition date too.")
@click.option("--tile-size", type=int, default=2048, show_default=True, help="Output tile side in pixels.")
@click.option("--cog", is_flag=True, help="Also write the whole mosaic as one COG, mosaic.tif.")
@click.option("--vectorize", type=click.Choice(FORMAT_NAMES), help="Also polygonize the mosaic into mosaic.<format>.")
@_polygon_options
@click.option(
    "--workers", type=click.IntRange(min=1), help="Tiles at once on Ray (default: in this process when small)."
)
@click.option(
    "--in-process/--ray",
    "in_process",
    default=None,
    help="Run the tiles here or on Ray (default: by the mosaic's size).",
)
@click.option(
    "--stac-items/--no-stac-items",
    default=False,
    help="Also describe the mosaic as a STAC Collection: stac/collection.json and one Item per tile.",
)
@click.option("--ray-address", envvar="RAY_ADDRESS", help="Existing Ray cluster; local Ray by default.")
def mosaic(
    jobs: tuple[str, ...],
    output: Path,
    method: str | None,
    crs: str | None,
    resolution: float | None,
    bounds: str | None,
    lonlat_bounds: str | None,
    aoi: Path | None,
    period: str | None,
    undated: bool,
    tile_size: int,
    cog: bool,
    vectorize: str | None,
    skip_class: tuple[int, ...],
    min_area: float,
    fill_holes: float,
    simplify: float,
    workers: int | None,
    in_process: bool | None,
    stac_items: bool,
    ray_address: str | None,
) -> None:
    """One map of a place and a period from finished predict jobs (JOBS: their folders or s3:// prefixes), in
    tiles and a VRT.

    Writes OUTPUT/tiles/ (a class COG and a stats COG per tile: count, confidence, agreement, date),
    mosaic.vrt (classes, with names, colours and a QGIS style), mosaic_stats.vrt and mosaic.json (the record a
    rerun resumes from: only tiles whose scenes changed are redone).
    """
    from geoseg.io.objectstore import is_s3
    from geoseg.mosaic.job import MosaicOptions, parse_bounds, parse_period
    from geoseg.mosaic.job import mosaic as run_mosaic

    options = MosaicOptions(
        method=method,  # type: ignore[arg-type]
        crs=crs,
        resolution=resolution,
        bounds=parse_bounds(bounds) if bounds else None,
        lonlat_bounds=parse_bounds(lonlat_bounds, "--lonlat-bounds") if lonlat_bounds else None,
        aoi=aoi,
        period=parse_period(period) if period else None,
        undated=undated,
        tile=tile_size,
        cog=cog,
        vectors=_vectorize_options(skip_class, min_area, fill_holes, simplify, fmt=vectorize) if vectorize else None,
        workers=workers,
        ray_address=ray_address,
        in_process=in_process,
        stac_items=stac_items,
    )
    summary = run_mosaic([j if is_s3(j) else Path(j) for j in jobs], output, options, console)
    left = ", ".join(f"{n} {why}" for why, n in summary.left_out.items() if n)
    console.print(
        f"{summary.observations} scene(s) by {summary.method}{f' ({left} left out)' if left else ''}: "
        f"{summary.tiles_run} tile(s) made, {summary.tiles_skipped} unchanged, {summary.tiles_empty} empty "
        f"in {summary.seconds:.1f} s -> {summary.outputs['classes']}",
        markup=False,
    )


@cli.command()
@click.option("--out", "--output", "out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--scenes", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--size", type=click.IntRange(min=64), default=1024, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--series",
    is_flag=True,
    help="Instead: repeated, overlapping, cloudy acquisitions of one place across UTM zones 32N/33N, as a STAC "
    "catalogue with an SCL-like mask asset and the truth (truth.gpkg).",
)
def synth(out: Path, scenes: int, size: int, seed: int, series: bool) -> None:
    """Write synthetic georeferenced scenes with label rasters and label polygons."""
    if series:
        from geoseg.synth_series import make_series

        archive = make_series(out, scenes, size, seed)
        for item in archive.scenes:
            click.echo(f"{item.item}  EPSG:{item.epsg}  {item.acquired:%Y-%m-%d}  clouds {item.cloud_share:.0%}")
        click.echo(f"catalogue: {archive.catalog}  truth: {archive.truth}")
        return
    from geoseg.synth import make_archive

    for scene in make_archive(out, scenes, size, seed):
        click.echo(f"{scene.image}  EPSG:{scene.epsg}  labels: {scene.labels.name}, {scene.polygons.name}")


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a training config key.")
def demo(workdir: Path, overrides: tuple[str, ...]) -> None:
    """Synthesise, train (Ray Train), predict (Ray actors), vectorize and report, on local Ray."""
    from geoseg.demo import run_demo

    run_demo(workdir, overrides=list(overrides), console=Console(soft_wrap=True))


def main() -> None:
    from geoseg.cluster import exit_without_final_collection
    from geoseg.stop import on_sigterm_interrupt, terminated

    debug = "--debug" in sys.argv[1:]
    on_sigterm_interrupt()
    exit_without_final_collection()
    try:
        cli.main(prog_name="geoseg", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("aborted (SIGTERM)" if terminated() else "aborted", markup=False)
        sys.exit(143 if terminated() else 130)
    except click.ClickException as exc:  # a bad option or a missing argument: one line too, exit 1
        context = getattr(exc, "ctx", None)
        where = f" (see {context.command_path} --help)" if context is not None else ""
        message = exc.format_message().replace("\n", " ")
        console.print(f"geoseg: error: {message}{where}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except GeoSegError as exc:
        if debug:
            raise
        console.print(f"geoseg: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        console.print(
            f"geoseg: unexpected error: {type(exc).__name__}: {cause} (rerun with --debug for details)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
