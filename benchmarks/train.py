"""Training throughput on this machine: the input pipeline, the step loop, and Ray Train with 2 workers vs 1.

    .venv/bin/python benchmarks/train.py [--epochs 4] [--patches 512] [--pipeline-only]

T1  patches/s of the input pipeline alone (256-px patches of 4-band uint16 scenes, augmentation on): DataLoader
    with 2 loader processes / with 1; target >= 1.7. Rounds interleaved (1, 2, 1, 2, ...); the best of each.
T2  training steps of the 163-parameter U-Net (base_channels 1, depth 1) fed by the same 2-process loader,
    against the loader alone: the time the loop adds; target <= 15 % (so the model, not the loop, sets the pace).
P5  Ray Train (DDP, gloo on CPU) with 2 workers / 1, samples/s from the per-epoch times (first epoch left out);
    target >= 1.6.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_table  # noqa: E402
from geoseg.cluster import ray_session  # noqa: E402
from geoseg.synth import make_archive  # noqa: E402
from geoseg.training.config import load_config  # noqa: E402
from geoseg.training.loop import train  # noqa: E402

PIPELINE_PATCHES = 480  # 60 batches: start-up of an epoch's iterator is a small share


def samples_per_second(work: Path, workers: int, epochs: int, patches: int) -> float:
    overrides = [
        f"data.root={work}",
        f"optim.epochs={epochs}",
        f"data.patches_per_epoch={patches}",
        f"scaling.workers={workers}",
        f"name=bench{workers}",
    ]
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", overrides)
    train(cfg, work / f"run{workers}")
    history = json.loads((work / f"run{workers}" / "metrics.json").read_text())["history"][1:]
    return patches * len(history) / sum(r["seconds"] for r in history)


def _pipeline(work: Path, loader_workers: int, model: object | None = None) -> float:
    """Seconds to draw PIPELINE_PATCHES training patches through a DataLoader (and step ``model`` on them)."""
    import time

    import torch
    from torch.utils.data import DataLoader

    from geoseg.training.data import PatchDataset, loader_worker_init, split_scenes
    from geoseg.training.losses import build_loss

    cfg = load_config(ROOT / "configs" / "synthetic.yaml", [f"data.root={work}", "data.patch_size=256"])
    scenes = split_scenes(cfg).train
    dataset = PatchDataset(
        scenes,
        [c.id for c in cfg.classes],
        [1, 2, 3, 4],
        [0.0] * 4,
        [1.0] * 4,
        256,
        count=PIPELINE_PATCHES,
        augment=True,
        seed=0,
    )
    extra = {"persistent_workers": True, "worker_init_fn": loader_worker_init, "multiprocessing_context": "fork"}
    loader = DataLoader(dataset, batch_size=8, num_workers=loader_workers, **extra)
    loss_fn, optimizer = build_loss("ce_dice"), None
    if model is not None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # type: ignore[attr-defined]
    for _ in loader:  # warm: processes started, files opened
        break
    started = time.perf_counter()
    for x, y in loader:
        if model is not None and optimizer is not None:  # as geoseg.training.loop steps: channels_last, loss on device
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)  # type: ignore[operator]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def pipeline_rows(work: Path, rounds: int = 3) -> list[tuple[str, float, str, str]]:
    import torch

    from geoseg.models import build_model

    torch.set_num_threads(1)
    model = build_model("unet", in_channels=4, num_classes=6, base_channels=1, depth=1)
    model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    times: dict[str, list[float]] = {"one": [], "two": [], "loop": []}
    for _ in range(rounds):
        times["one"].append(_pipeline(work, 1))
        times["two"].append(_pipeline(work, 2))
        times["loop"].append(_pipeline(work, 2, model))
    one, two, loop = (min(times[k]) for k in ("one", "two", "loop"))
    ceiling = _two_process_ceiling()
    compute = _compute_only(model)
    spread = ", ".join(f"{a / b:.2f}" for a, b in zip(times["one"], times["two"], strict=True))
    return [
        (
            "T1 loader 2 processes / 1, patches/s",
            one / two,
            ">= 1.7",
            f"{PIPELINE_PATCHES / two:.1f} / {PIPELINE_PATCHES / one:.1f} patches/s (rounds {spread})",
        ),
        (
            "T1 ceiling: the same numpy work in 2 processes / 1 (what 2 cores of this machine give)",
            ceiling,
            "report",
            "pure compute, no I/O and no transfer: T1 cannot exceed it",
        ),
        (
            f"T2 steps of the {params}-parameter U-Net / loader alone, time added",
            loop / two - 1,
            "<= 0.15",
            f"{loop:.2f} s / {two:.2f} s for {PIPELINE_PATCHES} patches",
        ),
        (
            "T2' loop time beyond max(loader, model compute) / that max",
            loop / max(two, compute) - 1,
            "report",
            f"{loop:.2f} s / max({two:.2f} s loader, {compute:.2f} s model fwd+bwd on held batches)",
        ),
    ]


def _busy(_: int) -> float:
    """A fixed amount of single-threaded numpy work (elementwise, as augmentation and normalisation are)."""
    import time

    import numpy as np

    started = time.perf_counter()
    data = np.random.default_rng(0).random((4, 256, 256), dtype=np.float32)
    for _ in range(400):
        data = np.sqrt(data * data + 1.0) - 0.5
    return time.perf_counter() - started


def _two_process_ceiling(rounds: int = 3) -> float:
    """How much faster 2 processes do a fixed amount of work than 1, on this machine, best of ``rounds``."""
    import multiprocessing
    import time

    ratios = []
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        pool.map(_busy, range(2))  # warm
        for _ in range(rounds):
            started = time.perf_counter()
            pool.map(_busy, range(4), chunksize=4)  # all four on one process
            one = time.perf_counter() - started
            started = time.perf_counter()
            pool.map(_busy, range(4), chunksize=2)  # two each
            two = time.perf_counter() - started
            ratios.append(one / two)
    return max(ratios)


def _compute_only(model: object) -> float:
    """Seconds of the model's own forward + backward + AdamW over PIPELINE_PATCHES held patches (no loader)."""
    import time

    import torch

    from geoseg.training.losses import build_loss

    x = torch.randn(8, 4, 256, 256).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (8, 256, 256))
    loss_fn = build_loss("ce_dice")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(PIPELINE_PATCHES // 8):
        loss = loss_fn(model(x), y)  # type: ignore[operator]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches", type=int, default=512)
    parser.add_argument("--pipeline-only", action="store_true", help="T1 and T2 only (no Ray Train)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_archive(work / "synthetic", scenes=4, size=512, seed=0)
        rows = pipeline_rows(work)
        if not args.pipeline_only:
            with ray_session(num_cpus=2):
                one = samples_per_second(work, 1, args.epochs, args.patches)
                two = samples_per_second(work, 2, args.epochs, args.patches)
            detail = f"{two:.1f} / {one:.1f} samples/s"
            rows.append(("P5 Ray Train 2 workers / 1, samples/s", two / one, ">= 1.6", detail))
    print(f"\nT1/T2: 256-px patches, 4 bands, augmentation on, batch 8; P5: {args.patches} patches/epoch")
    print_table(rows)


if __name__ == "__main__":
    main()
