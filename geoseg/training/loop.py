"""Training with Ray Train: DDP across workers (gloo on CPU, NCCL on GPU), resumable checkpoints, a bundle out.

The driver validates the config, splits scenes spatially, computes band statistics and starts a
``TorchTrainer``. Each worker samples its own patches (windowed reads), trains, and after every epoch
all-reduces the validation confusion matrix so every rank sees the same metrics (and stops early together).
Rank 0 reports a checkpoint holding the current and the best weights, optimizer, schedule and history:
rerunning the same command (same run name and output folder) resumes from it, and a crashed worker is
replaced and restarted from it (``FailureConfig``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue
from rich.console import Console
from torch.utils.data import DataLoader

from geoseg.bundle import ArchitectureSpec, BandSpec, BundleSpec, load_spec, model_geometry, save_bundle
from geoseg.cluster import ray_session
from geoseg.errors import GeoSegError
from geoseg.inference.manifest import write_json_atomic
from geoseg.inference.scene import file_sha256
from geoseg.io.joblock import job_lock
from geoseg.io.paths import gdal_path, is_virtual
from geoseg.metrics import summarize
from geoseg.models import ResNetUNet, build_model
from geoseg.models.pretrained import read_state_dict
from geoseg.training.config import TrainConfig
from geoseg.training.data import LabelSource, PatchDataset, Split, band_statistics, loader_worker_init, split_scenes
from geoseg.training.losses import build_loss
from geoseg.training.split import TEST, write_role_map

IGNORE_INDEX = 255


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper (checkpoints must load without DDP)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, torch.nn.Module)
    return inner


def _distributed() -> bool:
    """More than one rank: one rank (a single GPU) makes no collective call, so no NCCL set-up is ever needed."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _replicas_identical(model: torch.nn.Module, device: torch.device) -> bool:
    """DDP keeps every rank's weights equal; check it instead of trusting it (cheap: one float per rank)."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1).to(device)
    if not _distributed():
        return True
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return bool(all(torch.equal(g, gathered[0]) for g in gathered))


def learning_rate(step: int, total_steps: int, peak: float, warmup: float = 0.05) -> float:
    """Linear warm-up then cosine decay to 1 % of ``peak``.

    A pure function of the step, so a resumed run (even one given more epochs) continues the schedule
    instead of replaying a scheduler object whose length was fixed at the start.
    """
    warmup_steps = max(1, int(warmup * total_steps))
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _load_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": 0, "history": [], "best_miou": -1.0, "best_state": None, "stale": 0}
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
        best = torch.load(Path(folder) / "best.pt", map_location="cpu", weights_only=True)
        history = json.loads((Path(folder) / "history.json").read_text())
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return {
        "epoch": int(state["epoch"]),
        "history": history,
        "best_miou": float(state["best_miou"]),
        "best_state": best,
        "stale": int(state["stale"]),
    }


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig.model_validate(loop_config["config"])
    spec = BundleSpec.model_validate(loop_config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not cfg.scaling.use_gpu:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.optim.seed + rank)  # augmentation draws differ per rank; weights are synced by DDP
    split = split_scenes(cfg)  # data.buffer was resolved by the driver
    train_scenes, val_scenes = split.train, split.val
    class_ids = [c.id for c in spec.classes]
    bands = [b.index for b in spec.bands]
    mean, std = [b.mean for b in spec.bands], [b.std for b in spec.bands]
    train_set = PatchDataset(
        train_scenes,
        class_ids,
        bands,
        mean,
        std,
        cfg.data.patch_size,
        count=cfg.data.patches_per_epoch,
        augment=cfg.data.augment,
        balance=cfg.data.balance_classes,
        seed=cfg.optim.seed,
        ignore_index=IGNORE_INDEX,
        nodata=cfg.data.nodata,
        pad_mode=cfg.pad_mode,
    )
    val_set = PatchDataset(
        val_scenes,
        class_ids,
        bands,
        mean,
        std,
        cfg.data.patch_size,
        stride=cfg.data.val_stride,
        ignore_index=IGNORE_INDEX,
        nodata=cfg.data.nodata,
        pad_mode=cfg.pad_mode,
    )
    # Patches are read, labelled and augmented in loader processes (persistent, prefetching, pinned on CUDA),
    # so the training process only steps the model: see data.loader_workers.
    workers = cfg.data.loader_workers
    loading: dict[str, Any] = {"num_workers": workers, "pin_memory": cfg.scaling.use_gpu}
    if workers:
        loading |= {"persistent_workers": True, "prefetch_factor": cfg.data.prefetch}
        loading |= {"worker_init_fn": loader_worker_init, "multiprocessing_context": "fork"}
    train_loader = ray.train.torch.prepare_data_loader(
        DataLoader(train_set, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True, **loading)
    )
    val_loader = ray.train.torch.prepare_data_loader(DataLoader(val_set, batch_size=cfg.optim.batch_size, **loading))

    # channels_last: 2.3x faster steps on CPU for a small U-Net (measured), and the layout tensor cores want.
    layout = torch.channels_last
    model = ray.train.torch.prepare_model(initial_model(cfg, spec)[0].to(memory_format=layout))
    device = ray.train.torch.get_device()
    loss_fn = build_loss(cfg.optim.loss, IGNORE_INDEX, cfg.optim.class_weights).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = cfg.optim.epochs * steps_per_epoch
    state = _load_checkpoint(model, optimizer)
    step = state["epoch"] * steps_per_epoch
    use_amp = device.type == "cuda"
    num_classes = len(class_ids)
    for epoch in range(state["epoch"], cfg.optim.epochs):
        started = time.perf_counter()
        train_set.set_epoch(epoch)
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        for x, y in train_loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x.to(device, non_blocking=True).contiguous(memory_format=layout))
            y = y.to(device, non_blocking=True)
            # The losses give 0 (not NaN) for a batch with no labelled pixel without the host checking (a sync
            # per step); every rank still steps, so DDP stays in lockstep.
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, cfg.optim.lr)
            optimizer.step()
            step += 1
            loss_sum[0] += loss.detach().double() * len(x)  # on the device: read once per epoch
            loss_sum[1] += len(x)
        model.eval()
        cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        with torch.inference_mode():
            for x, y in val_loader:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    pred = model(x.to(device)).argmax(dim=1)
                y = y.to(device)
                keep = y != IGNORE_INDEX
                cm += torch.bincount(y[keep] * num_classes + pred[keep], minlength=num_classes**2)
        _all_reduce(cm)
        _all_reduce(loss_sum)
        in_sync = _replicas_identical(model, device)
        names = {i: c.name for i, c in enumerate(spec.classes)}
        summary = summarize(cm.view(num_classes, num_classes).cpu().numpy(), names)
        miou = summary["miou"] or 0.0
        improved = miou > state["best_miou"]
        if improved:
            state["best_miou"], state["stale"] = miou, 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        else:
            state["stale"] += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum[0]) / max(float(loss_sum[1]), 1.0),
            "val_miou": miou,
            "val_pixel_accuracy": summary["pixel_accuracy"] or 0.0,
            "val_per_class_iou": {k: v["iou"] for k, v in summary["per_class"].items()},
            "val_per_class_f1": {k: v["f1"] for k, v in summary["per_class"].items()},
            "val_confusion_matrix": summary["confusion_matrix"],
            "seconds": round(time.perf_counter() - started, 2),
            "workers": world,
            "replicas_identical": in_sync,
        }
        state["history"].append(record)
        stop = bool(cfg.optim.early_stopping_patience and state["stale"] >= cfg.optim.early_stopping_patience)
        scalars = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}  # Ray Train reports scalars
        metrics = scalars | {"best_val_miou": state["best_miou"]}
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(
                    {
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "best_miou": state["best_miou"],
                        "stale": state["stale"],
                    },
                    Path(folder) / "state.pt",
                )
                torch.save(state["best_state"], Path(folder) / "best.pt")
                (Path(folder) / "history.json").write_text(json.dumps(state["history"]))
                (Path(folder) / "summary.json").write_text(json.dumps(summary if improved else {}))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        _crash_for_test(loop_config.get("fault"), epoch, rank)
        if stop:
            break


def _crash_for_test(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Fault injection for the recovery test: the last rank dies once, after the given epoch.

    Enabled only when the driver has GEOSEG_CRASH_MARKER set (a file path that records the crash, so
    the restarted worker does not crash again).
    """
    if not fault or rank != fault["rank"] or epoch + 1 != fault["after_epoch"]:
        return
    marker = Path(fault["marker"])
    if not marker.exists():
        marker.write_text("crashed")
        os._exit(1)


def _fault_injection(cfg: TrainConfig) -> dict[str, Any] | None:
    marker = os.environ.get("GEOSEG_CRASH_MARKER")
    if not marker:
        return None
    return {
        "marker": marker,
        "rank": cfg.scaling.workers - 1,
        "after_epoch": int(os.environ.get("GEOSEG_CRASH_AFTER_EPOCH", "1")),
    }


class _ProgressCallback(ray.train.UserCallback):
    """Runs in the Ray Train controller: forwards each epoch's metrics to the driver through a Ray queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.queue.put(metrics[0])


def _fit_with_progress(trainer: TorchTrainer, queue: Queue, epochs: int, console: Console) -> Any:
    """``trainer.fit()`` in a thread while this thread prints one line per finished epoch."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            m = queue.get(timeout=1.0)
        except Empty:
            continue
        console.print(
            f"epoch {m['epoch']}/{epochs}: loss {m['train_loss']:.3f}, val mIoU {m['val_miou']:.3f}, "
            f"pixel accuracy {m['val_pixel_accuracy']:.3f} ({m['seconds']:.1f} s)"
        )
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def bundle_spec(
    cfg: TrainConfig, mean: np.ndarray, std: np.ndarray, band_names: list[str], band_count: int
) -> BundleSpec:
    """The bundle's description of the model; bands a pretrained checkpoint knows keep its normalisation (its
    features expect it), the others the training scenes' statistics."""
    checkpoint = cfg.model.pretrained.normalisation() if cfg.model.pretrained else {}
    bands = []
    for i, (name, m, s) in enumerate(zip(band_names, mean, std, strict=True)):
        m, s = checkpoint.get(name.casefold(), (float(m), float(s)))
        bands.append(BandSpec(name=name, index=i + 1, mean=m, std=s))
    return BundleSpec(
        architecture=ArchitectureSpec(name=cfg.model.arch, kwargs=cfg.model.kwargs),
        bands=bands,
        input_band_count=band_count,
        classes=cfg.classes,
        input_nodata=cfg.data.nodata,
        ignore_index=IGNORE_INDEX,
    )


def initial_model(cfg: TrainConfig, spec: BundleSpec) -> tuple[torch.nn.Module, list[str]]:
    """The model every rank starts from (identical on all): seeded weights, the encoder from
    ``model.pretrained`` when given, its first convolution taken by band name; and the bands that got no
    pretrained kernel of their own."""
    torch.manual_seed(cfg.optim.seed)
    model = spec.build()
    if cfg.model.pretrained is None:
        return model, []
    path = Path(cfg.model.pretrained.weights)
    if not isinstance(model, ResNetUNet):  # the config allows pretrained only with resnet_unet
        raise GeoSegError(f"pretrained encoders are for resnet_unet, not {cfg.model.arch}")
    bands = [b.name for b in spec.bands] if cfg.model.pretrained.bands else None
    unknown = model.load_encoder(read_state_dict(path), path, bands, cfg.model.pretrained.bands)
    return model, unknown


def receptive_field(cfg: TrainConfig) -> int:
    """The configured model's receptive-field radius: the default buffer between the spatial sets. It is the
    architecture's geometry, the same for any band count, so it is known before a scene is opened."""
    model = build_model(cfg.model.arch, in_channels=1, num_classes=len(cfg.classes), **cfg.model.kwargs)
    return model_geometry(model).receptive_field


def _prepare(cfg: TrainConfig, output: Path, console: Console) -> tuple[TrainConfig, BundleSpec, Split]:
    """Everything checked before Ray starts: scenes, the split, bands, labels that give usable pixels, band
    statistics. The returned config has absolute paths and a resolved buffer, so every worker splits alike."""
    stacks = Path(cfg.data.stacks_dir).resolve() if cfg.data.stacks_dir else output / "stacks"
    root = gdal_path(cfg.data.root)
    data: dict[str, Any] = {"root": root if is_virtual(root) else str(Path(root).resolve()), "stacks_dir": str(stacks)}
    if cfg.data.buffer is None:
        data["buffer"] = receptive_field(cfg)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data)})
    split = split_scenes(cfg)
    train_scenes, val_scenes = split.train, split.val
    first = train_scenes[0].info
    for scene in train_scenes + val_scenes + split.test:
        if scene.info.count != first.count:
            raise GeoSegError(f"has {scene.info.count} bands, other scenes have {first.count}", scene.info.path)
    class_ids = [c.id for c in cfg.classes]
    for role, scenes in (("training", train_scenes), ("validation", val_scenes), ("test", split.test)):
        usable = 0
        for scene in scenes:
            try:
                unknown = LabelSource(scene, class_ids, IGNORE_INDEX).check(scene.region, role)
            except GeoSegError:
                if len(scenes) == 1:
                    raise
                continue  # another scene of this side may carry the labels
            usable += 1
            if unknown:
                ids = ", ".join(str(i) for i in sorted(unknown)[:8])
                console.print(
                    f"note: {scene.labels}: label ids {ids} are not among the classes; they are ignored", markup=False
                )
        if scenes and not usable:
            raise GeoSegError(f"no {role} scene has labels that give a usable pixel", scenes[0].labels)
    bands = list(range(1, first.count + 1))
    mean, std = band_statistics(train_scenes, bands, cfg.data.nodata)
    names = cfg.data.band_names
    if names is None:
        with rasterio.open(first.path) as src:
            names = [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
    elif len(names) != first.count:
        raise GeoSegError(f"data.band_names names {len(names)} bands; the scenes have {first.count}", first.path)
    spec = bundle_spec(cfg, mean, std, names, first.count)
    if cfg.model.pretrained is not None:
        weights = Path(cfg.model.pretrained.weights).resolve()  # workers run in their own folders
        pretrained = cfg.model.pretrained.model_copy(update={"weights": str(weights)})
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": pretrained})})
        _, initialised = initial_model(cfg, spec)  # a wrong file is refused here, before Ray starts
        known = [n for n in names if n not in initialised] if pretrained.bands else names
        spec.pretrained = {
            "weights": weights.name,
            "sha256": file_sha256(weights),
            "bands_from_checkpoint": known,
            "bands_initialised": initialised,
            "normalisation_from_checkpoint": [n for n in names if n.casefold() in pretrained.normalisation()],
        }
        note = f"; {', '.join(initialised)} start from the mean kernel" if initialised else ""
        console.print(
            f"encoder from {weights.name}: first-convolution kernels for {', '.join(known)}{note}", markup=False
        )
    return cfg, spec, split


def write_split_maps(split: Split, folder: Path) -> dict[str, Path]:
    """Each scene's role grid (train / validation / test / buffer) as ``folder/<scene>.tif``, by scene path."""
    maps: dict[str, Path] = {}
    for scene in split.train + split.val + split.test:
        if scene.info.path not in maps:
            taken = {p.name for p in maps.values()}
            name = Path(scene.info.path).stem
            if f"{name}.tif" in taken:  # two scenes of one name in different folders
                name = f"{name}-{len(maps)}"
            maps[scene.info.path] = write_role_map(folder / f"{name}.tif", scene.roles, scene.info)
    return maps


def score_test(
    bundle: Path, split: Split, maps: dict[str, Path], output: Path, console: Console
) -> dict[str, Any] | None:
    """The test set scored once, with the kept weights: each test scene predicted whole (``geoseg predict``,
    tiled, as users will run it) and scored on its test pixels through ``geoseg evaluate``'s counting; counts
    pooled over scenes. None when no test set is configured."""
    if not split.test:
        return None
    from geoseg.evaluate import confusion
    from geoseg.inference.job import predict_archive
    from geoseg.inference.options import PredictOptions
    from geoseg.inference.report import Status

    scenes = {s.info.path: s for s in split.test}
    reports = predict_archive(bundle, list(scenes), output / "test", PredictOptions(), console=console, in_process=True)
    spec = load_spec(bundle)
    ids = [c.id for c in spec.classes]
    names = {c.id: c.name for c in spec.classes}
    cm = np.zeros((len(ids), len(ids)), dtype=np.int64)
    for path, report in zip(scenes, reports, strict=True):
        if report.status == Status.FAILED or report.output is None:
            raise GeoSegError(f"the test prediction failed: {report.error}", path)
        scene = scenes[path]
        counts, _ = confusion(report.output, scene.labels, scene.label_field, region=maps[path], region_values={TEST})
        cm += counts.over(ids)
    if not cm.sum():
        raise GeoSegError("the test set has no pixel where prediction and labels are both valid", output / "test")
    return summarize(cm, names, ids) | {"scenes": len(scenes), "pixels": int(cm.sum())}


RUN_MODEL = "model.json"  # what a run folder's checkpoints are the weights of


def _model_identity(spec: BundleSpec) -> dict[str, Any]:
    """What a checkpoint's weights fit: the architecture and its arguments, the input bands and the classes."""
    return {
        "architecture": spec.architecture.model_dump(mode="json"),
        "bands": [b.name for b in spec.bands],
        "classes": [c.id for c in spec.classes],
    }


def _same_model_as_before(output: Path, spec: BundleSpec) -> None:
    """Rerunning a run resumes from its checkpoint; after the model was changed, that checkpoint's weights do
    not fit (it ended in a size-mismatch traceback inside a Ray worker). Refuse before anything starts."""
    if not (output / "ray_results").exists():
        return
    try:
        before = json.loads((output / RUN_MODEL).read_text())
    except (OSError, ValueError):
        return  # a run folder from before this record: nothing to compare with
    now = _model_identity(spec)
    changed = [key for key in now if before.get(key) != now[key]]
    if changed:
        raise GeoSegError(
            f"this run folder holds checkpoints of another model ({', '.join(changed)} changed: "
            f"{before.get(changed[0])} -> {now[changed[0]]}); resuming would load weights that do not fit: "
            "give a new --output to start afresh",
            output,
        )


def train(cfg: TrainConfig, output: str | Path, ray_address: str | None = None, console: Console | None = None) -> Path:
    """Train per ``cfg``; writes ``output/bundle``, ``output/metrics.json`` and ``output/curves.png``."""
    console = console or Console(stderr=True)
    # Workers run in their own working directories: hand them absolute paths.
    output = Path(output).resolve()
    created = [p for p in (output, *output.parents) if not p.exists()]  # folders this run makes
    try:
        cfg, spec, split = _prepare(cfg, output, console)
    except BaseException:
        if created:  # a run refused before training leaves nothing behind (stack VRTs included)
            shutil.rmtree(created[-1], ignore_errors=True)
        raise
    _same_model_as_before(output, spec)
    output.mkdir(parents=True, exist_ok=True)
    with job_lock(output):  # one run per folder: two would resume from and report into one checkpoint store
        write_json_atomic(output / RUN_MODEL, _model_identity(spec))
        maps = write_split_maps(split, output / "split")
        test_note = f", test set in {len(split.test)}" if split.test else ", no test set"
        console.print(
            f"training {cfg.model.arch} on {len(split.train)} scene(s), validating on {len(split.val)}{test_note} "
            f"({cfg.data.split} split, buffer {cfg.data.buffer} px; sets in {output / 'split'}), "
            f"{cfg.scaling.workers} Ray Train worker(s)",
            markup=False,
        )
        with ray_session(ray_address):
            queue = Queue()
            trainer = TorchTrainer(
                train_loop,
                train_loop_config={
                    "config": cfg.model_dump(mode="json"),
                    "spec": spec.model_dump(mode="json"),
                    "fault": _fault_injection(cfg),
                },
                scaling_config=ScalingConfig(
                    num_workers=cfg.scaling.workers,
                    use_gpu=cfg.scaling.use_gpu,
                    resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
                ),
                run_config=RunConfig(
                    name=cfg.name,
                    storage_path=str(output / "ray_results"),
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                    failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                    callbacks=[_ProgressCallback(queue)],  # type: ignore[list-item]
                ),
            )
            result = _fit_with_progress(trainer, queue, cfg.optim.epochs, console)
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint: {result.error}")
        with result.checkpoint.as_directory() as folder:
            best = torch.load(Path(folder) / "best.pt", map_location="cpu", weights_only=True)
            history = json.loads((Path(folder) / "history.json").read_text())
        best_epoch = max(history, key=lambda r: r["val_miou"])
        spec.metrics = {
            "best_epoch": best_epoch["epoch"],
            "val_miou": best_epoch["val_miou"],
            "val_pixel_accuracy": best_epoch["val_pixel_accuracy"],
            "val_per_class_iou": best_epoch["val_per_class_iou"],
            "epochs": len(history),
        }
        model = spec.build()
        model.load_state_dict(best)
        bundle = save_bundle(output / "bundle", spec, model)
        console.print(
            f"best epoch {best_epoch['epoch']}: val mIoU {best_epoch['val_miou']:.3f}, "
            f"pixel accuracy {best_epoch['val_pixel_accuracy']:.3f} -> {bundle}",
            markup=False,
        )
        test = score_test(bundle, split, maps, output, console)
        if test is not None:
            spec.metrics |= {
                "test_miou": test["miou"],
                "test_pixel_accuracy": test["pixel_accuracy"],
                "test_per_class_iou": {k: v["iou"] for k, v in test["per_class"].items()},
            }
            save_bundle(output / "bundle", spec, model)
            console.print(
                f"test set ({test['pixels']} px, scored once): mIoU {test['miou']:.3f}, "
                f"pixel accuracy {test['pixel_accuracy']:.3f}"
            )
        split_info = {
            "method": cfg.data.split,
            "buffer": cfg.data.buffer,
            "maps": sorted(str(p) for p in maps.values()),
        }
        record = {"best": spec.metrics, "test": test, "split": split_info, "history": history}
        write_json_atomic(output / "metrics.json", record)
        plot_curves(history, output / "curves.png")
        return bundle


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_iou.plot(epochs, [r["val_miou"] for r in history], marker="o", label="mIoU")
    ax_iou.plot(epochs, [r["val_pixel_accuracy"] for r in history], marker="s", label="pixel accuracy")
    ax_iou.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    ax_iou.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
