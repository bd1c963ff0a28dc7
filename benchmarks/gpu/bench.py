"""The GPU check: bare model, real `geoseg predict` end to end, GPU busy fraction, 2 epochs of `geoseg train`.

    python3 benchmarks/gpu/bench.py [--cpu] [--out record.json]

Runs in at most ~8 minutes on one H100/H200 and prints one JSON record (also written to --out):
  bare_model      Mpx/s of the U-Net alone (base 16 and base 64, depth 4, bf16 + channels_last, batch of default
                  tiles), eager and with torch.compile
  predict         the real `predict_archive` job on a 16384^2 x 4-band uint16 DEFLATE GeoTIFF (512-px blocks):
                  one GPU model actor and as many reader actors as the node's CPUs allow; Mpx/s of the warm
                  job, and the GPU's busy fraction while it ran (NVML utilisation sampled every 0.1 s); the
                  CPU of every process of the job by role, H1' (that CPU per pixel over single-process decode
                  CPU per pixel of the file) and the host cores it takes per GPU at the job's pace
  train           2 epochs of `geoseg train` on the synthetic archive with scaling.use_gpu: true, one worker
--cpu runs the same code on small sizes without a GPU (to test the script anywhere; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.predict import ROLES, decode_cpu, make_scene, tree_split  # noqa: E402


def bare_model(base: int, tile: int, batch: int, device: torch.device, compile: bool, seconds: float) -> float:
    """Mpx/s of one U-Net (depth 4) on random normalised tiles, as the prediction worker runs it."""
    from geoseg.bundle import ArchitectureSpec, BandSpec, BundleSpec, default_classes
    from geoseg.inference.worker import ModelWorker

    spec = BundleSpec(
        architecture=ArchitectureSpec(name="unet", kwargs={"base_channels": base, "depth": 4}),
        bands=[BandSpec(name=f"b{i}", index=i + 1, mean=0.0, std=1.0) for i in range(4)],
        input_band_count=4,
        classes=default_classes(6),
    )
    torch.manual_seed(0)
    worker = ModelWorker(spec, spec.build().state_dict(), device=device, compile=compile)
    x = torch.randn(batch, 4, tile, tile, device=device).contiguous(memory_format=torch.channels_last)
    for _ in range(3):  # warm-up: cuDNN autotuning, compilation
        worker.logits(x)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        worker.logits(x)
        calls += 1
    sync()
    return round(calls * batch * tile * tile / 1e6 / (time.perf_counter() - started), 2)


class GpuBusy:
    """Fraction of samples (every 0.1 s) in which NVML reports the GPU busy, while the context is open."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml: Any = pynvml
        except Exception:  # no GPU (--cpu) or no NVML: no samples
            self._nvml = None

    def __enter__(self) -> GpuBusy:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self._nvml is not None and not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100)
            self._stop.wait(0.1)

    @property
    def fraction(self) -> float | None:
        return round(float(np.mean(self.samples)), 3) if self.samples else None


def predict(work: Path, size: int, base: int, gpu: bool) -> dict[str, Any]:
    """The real job on one warm pool: a first run (warm-up: kernels, heaps), then the timed one."""
    from rich.console import Console

    from geoseg.bundle import init_bundle, load_bundle
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive
    from geoseg.inference.options import PredictOptions

    bundle = init_bundle(work / f"bundle{base}", "unet", 4, 6, base_channels=base, depth=4)
    scene = work / "scene.tif"
    spec, model = load_bundle(bundle)
    executor = RayExecutor(spec, model.state_dict(), workers=1 if gpu else 2)
    quiet = Console(file=io.StringIO())
    try:
        reports: list[Any] = []

        def job(folder: Path) -> None:
            options = PredictOptions()
            reports.append(predict_archive(bundle, [str(scene)], folder, options, console=quiet, executor=executor)[0])

        for run in ("warm", "timed"):
            shutil.rmtree(work / run, ignore_errors=True)
            reports.clear()
            with GpuBusy() as busy:
                started = time.perf_counter()
                # The CPU of every process of the job, by role: the host path per GPU.
                split = tree_split(functools.partial(job, work / run))
                seconds = time.perf_counter() - started
            [report] = reports
            assert report.status == "ok", report.error
        host = sum(split.get(role, 0.0) for role in ROLES)  # on a GPU the model actors' CPU is host work too
        decode = decode_cpu(scene)
        return {
            "u_net_base": base,
            "raster": f"{size}x{size}x4 uint16 deflate, 512-px blocks",
            "model_actors": executor.parallelism,
            "reader_actors": executor.readers,
            "seconds": round(seconds, 2),
            "megapixels_per_second": round(size * size / 1e6 / seconds, 1),
            "gpu_busy_fraction": busy.fraction,
            "stage_seconds": report.stage_seconds,
            "blocks": report.blocks,
            "tile": json.loads((work / "timed" / "report.json").read_text())["options"]["auto_core"],
            # H1' per GPU: host CPU per pixel over single-process decode CPU per pixel of the same file (on a GPU
            # node nothing is subtracted: the model runs on the device), and the cores that host path needs.
            "host_cpu_seconds": {role: round(split.get(role, 0.0), 2) for role in ROLES},
            "h1_prime": round(host / decode, 2) if decode else None,
            "host_cores_per_gpu": round(host / seconds, 2),
        }
    finally:
        executor.shutdown()


def train(work: Path, gpu: bool, epochs: int) -> dict[str, Any]:
    from geoseg.synth import make_archive
    from geoseg.training.config import load_config
    from geoseg.training.loop import train as run_train

    make_archive(work / "synthetic", scenes=4, size=1024 if gpu else 256, seed=0)
    overrides = [
        f"data.root={work}",
        f"optim.epochs={epochs}",
        "scaling.workers=1",
        f"scaling.use_gpu={'true' if gpu else 'false'}",
        "name=gpucheck",
    ]
    if not gpu:
        overrides += ["data.patches_per_epoch=32", "data.val_stride=128"]
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", overrides)
    started = time.perf_counter()
    run_train(cfg, work / "train")
    seconds = time.perf_counter() - started
    history = json.loads((work / "train" / "metrics.json").read_text())["history"]
    return {
        "epochs": len(history),
        "seconds_with_ray_start": round(seconds, 1),
        "epoch_seconds": [r["seconds"] for r in history],
        "samples_per_second_last_epoch": round(cfg.data.patches_per_epoch / history[-1]["seconds"], 1),
        "val_miou": [round(r["val_miou"], 4) for r in history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="small sizes, no GPU: test the script")
    parser.add_argument("--out", type=Path, help="also write the JSON record here")
    args = parser.parse_args()
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu to test the script")
    from geoseg.cluster import ray_session

    device = torch.device("cuda" if gpu else "cpu")
    record: dict[str, Any] = {
        "machine": torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    tile, batch, seconds = (1248, 4, 8.0) if gpu else (320, 1, 1.0)
    record["bare_model"] = {
        f"base{base}": {
            mode: bare_model(base, tile, batch, device, mode == "compiled", seconds)
            for mode in (("eager", "compiled") if gpu else ("eager",))
        }
        for base in ((16, 64) if gpu else (4,))
    }
    print(json.dumps(record), flush=True)
    size = 16384 if gpu else 1024
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_scene(work / "scene.tif", size)
        with ray_session():
            record["predict"] = [predict(work, size, base, gpu) for base in ((16, 64) if gpu else (4,))]
            print(json.dumps(record), flush=True)
            record["train"] = train(work, gpu, epochs=2 if gpu else 1)
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
