"""Prediction benchmark: the host path (H1, H2), overhead (P1), memory (P2) and worker scaling (P3).

    .venv/bin/python benchmarks/predict.py [--size 2048] [--host-size 8192] [--base 16] [--repeats 3] [--json F]

Prints one table of ratios measured in this run (medians of per-repeat ratios; the configurations of a repeat
run back to back, because this machine's speed drifts by 10-30 % between minutes):
  H1  end-to-end Mpx/s of a 163-parameter U-Net (base 1, depth 1) on a host-size^2 x 4-band uint16 DEFLATE
      GeoTIFF with 512-px blocks, 2 workers, over single-process rasterio decode Mpx/s of the same file x 2
      cores; target >= 0.30. Also: the ceiling of that ratio with this model (the bare model's CPU plus the
      decode CPU, packed perfectly on two cores).
  H2  driver-process CPU-seconds per Mpx, start-up excluded (the host-size job minus a 256^2 job), target
      <= 0.005
  P1  bare-model time on the pipeline's own tiles / end-to-end time (U-Net --base, depth 4, size^2 scene, 2
      workers), target >= 0.90; and the same for an archive of 16 chips of 512^2, run as a job
  P2  peak PSS of the whole job's process tree (driver, Ray's processes, readers, workers) for a 16x larger
      raster / the base raster (a small U-Net), target <= 1.15; workers warmed on each raster as for the timed
      rows, and (info) on a small scene only
  P3  end-to-end throughput with 2 workers / 1 worker, target >= 1.7 (on 2 cores)

    .venv/bin/python benchmarks/predict.py --h1 [--host-size 8192] [--repeats 3] [--h1-block 2048]

  H1' host CPU per pixel over single-process decode CPU per pixel, target <= 2.0: the CPU of the whole job's
      process tree (driver, Ray's own processes, readers, model actors, the publishing process), minus the bare
      model's CPU with its argmax on the same tiles (one thread, in this process), for an 8192^2 4-band uint16
      DEFLATE scene, a 163-parameter U-Net, --tile 512 --halo 32, 2 workers on a warm pool; split per stage
      (each process's CPU by its role; the model actors' own share is theirs minus the bare model). The
      CPU default block (1024 px: 2 x 2 tile strides of 448) unless --h1-block (2048: GPU nodes' default).

    .venv/bin/python benchmarks/predict.py --p7 [--p7-scenes 1000 10000] [--repeats 2]

  P7  an archive of small scenes (256^2, 4-band uint16 DEFLATE, a 163-parameter U-Net): scenes/s of the
      whole ``geoseg predict`` command (in process, and on a private Ray with its start-up) over a plain
      one-process loop (read, normalise, the same model on one thread, argmax, write a DEFLATE GeoTIFF), each a
      fresh process, interleaved; target >= 0.8. With a second archive size, the in-process scenes/s of the
      larger over the smaller (the per-scene cost must not grow with the archive: >= 0.9). Also each command's
      CPU (its whole process tree: Ray's daemons and workers, the publishing processes) per scene, and the
      ceiling this machine puts on each ratio: a run of C CPU-seconds takes at least C / cores seconds, so no
      schedule reaches more than (plain loop's seconds x cores) / C.
Every end-to-end run is a real job (`predict_archive`: reader and model actors, manifest, COG published by
the job's publishing process) on fresh actors warmed on a small scene, so actor start-up is excluded.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_table  # noqa: E402
from geoseg.bundle import init_bundle, load_bundle  # noqa: E402
from geoseg.inference.options import PredictOptions  # noqa: E402
from geoseg.io import open_scene  # noqa: E402
from geoseg.io.raster import read_tile  # noqa: E402

OPTIONS = PredictOptions()  # the defaults: tiles, halo and blocks from each model's receptive field
CHIPS = 16


def make_scene(path: Path, size: int, bands: int = 4, block: int = 512) -> Path:
    """A random uint16 scene with ``block``-px DEFLATE blocks, written band of rows by band of rows (never held
    whole) with GDAL's threads; also the GPU check's scene (benchmarks/gpu/bench.py)."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500_000, 0, -10, 5_800_000),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "nodata": 0,
        "num_threads": "ALL_CPUS",
        "BIGTIFF": "IF_SAFER",  # the GPU check's 16384^2 x 4 scene is over 2 GB raw
    }
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(rng.integers(500, 3000, (bands, h, size), dtype=np.uint16), window=Window(0, row, size, h))
    return path


def decode_seconds(path: Path) -> float:
    """Single-process rasterio decode of the whole file, source block by source block."""
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(path) as src:
        started = time.perf_counter()
        for _, window in src.block_windows(1):
            src.read(window=window)
        return time.perf_counter() - started


def job_seconds(bundle: Path, scene: Path, warm: Path, work: Path, workers: int) -> tuple[float, float]:
    """One job on fresh actors warmed on ``warm`` and on the scene itself (so that oneDNN's kernels for its tile
    shape exist and each worker's heap has grown to its peak: first-call costs, not the pipeline's):
    (wall seconds, CPU-seconds of this, the driver, process)."""
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive

    spec, model = load_bundle(bundle)
    executor = RayExecutor(spec, model.state_dict(), workers=workers, threads_per_worker=1)
    quiet = Console(file=io.StringIO())
    try:
        for first in (warm, scene):
            shutil.rmtree(work / "warm_job", ignore_errors=True)
            predict_archive(bundle, [str(first)], work / "warm_job", OPTIONS, console=quiet, executor=executor)
        shutil.rmtree(work / "job", ignore_errors=True)
        cpu, started = _cpu(), time.perf_counter()
        [report] = predict_archive(bundle, [str(scene)], work / "job", OPTIONS, console=quiet, executor=executor)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        assert report.status == "ok", report.error
        return seconds, cpu
    finally:
        executor.shutdown()


def archive_seconds(bundle: Path, chips: list[Path], warm: Path, work: Path) -> float:
    """An archive of small scenes as one job on a warm 2-worker pool (scenes streamed, publishing overlapped)."""
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive

    spec, model = load_bundle(bundle)
    executor = RayExecutor(spec, model.state_dict(), workers=2, threads_per_worker=1)
    quiet = Console(file=io.StringIO())
    try:
        predict_archive(bundle, [str(warm)], work / "warm_job", OPTIONS, console=quiet, executor=executor)
        shutil.rmtree(work / "chips_job", ignore_errors=True)
        started = time.perf_counter()
        predict_archive(bundle, [str(c) for c in chips], work / "chips_job", OPTIONS, console=quiet, executor=executor)
        return time.perf_counter() - started
    finally:
        executor.shutdown()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pipeline_batches(bundle: Path, paths: list[Path], options: PredictOptions = OPTIONS) -> list[np.ndarray]:
    """The model input of every batch the pipeline runs for these scenes (its tiles, per block, batched as the
    worker batches them), read and normalised in advance."""
    spec, _ = load_bundle(bundle)
    options, norm = options.resolved(spec.geometry()), spec.normalisation()
    batches = []
    for path in paths:
        scene = open_scene(path)
        blocks = options.blocks(scene)
        with rasterio.open(path) as src:
            for block in blocks:
                tiles = []
                for tile in blocks.tiles(block):
                    raw, valid = read_tile(src, tile.read, list(norm.band_indexes))
                    if valid.any():
                        tiles.append(norm.apply(raw, valid))
                for i in range(0, len(tiles), options.batch_size or 1):
                    batches.append(np.stack(tiles[i : i + (options.batch_size or 1)]))
    return batches


class TwoProcessModel:
    """The bare model run as the pipeline runs it on CPU: two processes of one thread, each taking every other
    batch of pre-read tiles. The processes start (torch import, tile reads, warm-up) before any timing."""

    def __init__(self, datasets: dict[str, tuple[Path, list[Path]]], processes: int = 2) -> None:
        from geoseg.cluster import MODEL_PROCESS_ENV

        os.environ.update(MODEL_PROCESS_ENV)  # as the pipeline's model workers get it (spawned children inherit)
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        for part in range(processes):
            parent, child = context.Pipe()
            context.Process(target=_model_process, args=(child, datasets, part, processes), daemon=True).start()
            self.pipes.append(parent)
        for pipe in self.pipes:
            pipe.recv()  # ready

    def seconds(self, dataset: str) -> float:
        """Wall time of both processes running their share of ``dataset`` at once."""
        for pipe in self.pipes:
            pipe.send(dataset)
        return max(pipe.recv() for pipe in self.pipes)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)


def _model_process(pipe: Connection, datasets: dict[str, tuple[Path, list[Path]]], part: int, parts: int) -> None:
    from geoseg.inference.worker import ModelWorker

    workers, shares = {}, {}
    for name, (bundle, paths) in datasets.items():
        spec, model = load_bundle(bundle)
        workers[name] = ModelWorker(spec, model.state_dict(), threads=1)
        shares[name] = [
            torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
            for b in pipeline_batches(bundle, paths)[part::parts]
        ]
        if shares[name]:
            workers[name].logits(shares[name][0])  # warm-up (oneDNN primitive cache)
    pipe.send("ready")
    while (name := pipe.recv()) is not None:
        started = time.perf_counter()
        for batch in shares[name]:
            workers[name].logits(batch)  # the model alone: what a class-only job runs
        pipe.send(time.perf_counter() - started)


class TreePss:
    """Peak proportional set size (PSS, MiB) of a process (this one by default) and all its descendants,
    sampled every 0.1 s."""

    def __init__(self, root: int | None = None) -> None:
        self.root = root or os.getpid()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreePss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss(pid) for pid in _descendants(self.root)))
            self._stop.wait(0.1)


def _pss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def peak_pss(bundle: Path, scene: Path, warm: Path, work: Path, warm_on_scene: bool) -> float:
    """Peak PSS (MiB) of the job's process tree while it predicts ``scene`` on 2 fresh workers warmed on a small
    scene and, with ``warm_on_scene``, on ``scene`` itself (as every timed row is: a worker's heap then holds
    its largest tile's peak in both jobs; without it a 4-block job may leave one worker below that peak)."""
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive

    spec, model = load_bundle(bundle)
    executor = RayExecutor(spec, model.state_dict(), workers=2, threads_per_worker=1)
    quiet = Console(file=io.StringIO())
    try:
        for first in (warm, scene) if warm_on_scene else (warm,):
            shutil.rmtree(work / "warm_job", ignore_errors=True)
            predict_archive(bundle, [str(first)], work / "warm_job", OPTIONS, console=quiet, executor=executor)
        shutil.rmtree(work / "pss_job", ignore_errors=True)
        with TreePss() as tree:
            predict_archive(bundle, [str(scene)], work / "pss_job", OPTIONS, console=quiet, executor=executor)
        return tree.peak
    finally:
        executor.shutdown()


def in_process_pss(bundle: Path, scene: Path, work: Path) -> tuple[float, float]:
    """Peak PSS (MiB, sampled every 0.1 s) and peak RSS (MiB, the kernel's own high-water mark, exact) of
    ``geoseg predict --in-process`` on ``scene``: a fresh process as a user runs it (its imports, model, reader,
    blending, COG build and publishing threads all in it; a one-scene job starts no publishing process)."""
    import subprocess

    out = work / "in_process_job"
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "geoseg", "predict", "--model", str(bundle), "--in-process"]
    process = subprocess.Popen([*args, "--output", str(out), str(scene)], stderr=subprocess.PIPE, cwd=ROOT)
    with TreePss(process.pid) as tree:
        assert process.stderr is not None
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return tree.peak, usage.ru_maxrss / 1024


def p2b(args: argparse.Namespace) -> None:
    """P2b alone: the in-process path's whole-job peak memory at 16x the pixels, interleaved repeats."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tiny = init_bundle(work / "tiny", "unet", 4, 6, base_channels=4, depth=2)
        big = make_scene(work / "big.tif", args.host_size)
        base = make_scene(work / "base.tif", args.host_size // 4)
        runs: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.repeats):
            for name, scene in (("base", base), ("big", big)):
                pss, rss = in_process_pss(tiny, scene, work)
                runs[f"{name} pss"].append(pss)
                runs[f"{name} rss"].append(rss)
    rows = []
    for kind, how in (("rss", "peak RSS (exact)"), ("pss", "peak PSS (sampled)")):
        ratios = [b / a for a, b in zip(runs[f"base {kind}"], runs[f"big {kind}"], strict=True)]
        rows.append(
            (
                f"P2b in-process {how}, {args.host_size}^2 / {args.host_size // 4}^2",
                statistics.median(ratios),
                "<= 1.15",
                f"{statistics.median(runs[f'big {kind}']):.0f} MiB / "
                f"{statistics.median(runs[f'base {kind}']):.0f} MiB; ratios {min(ratios):.2f}-{max(ratios):.2f}",
            )
        )
    print_table(rows, args.json)
    for name, values in runs.items():
        print(f"  {name}: " + ", ".join(f"{v:.0f}" for v in values))


H1_OPTIONS = PredictOptions(tile=512, halo=32)
TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("readers", "model actors", "publishing", "driver", "Ray's processes")


def _tree_cpu(root: int | None = None) -> dict[int, tuple[float, str]]:
    """CPU-seconds and command line of every process in the tree of ``root`` (default: this process)."""
    found = {}
    for pid in _descendants(root or os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[pid] = ((int(fields[11]) + int(fields[12])) / TICK, command)
    return found


def _role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "driver"
    if command.startswith("ray::_Reader"):
        return "readers"
    if command.startswith("ray::_Model"):
        return "model actors"
    if "geoseg.inference.publishing" in command:
        return "publishing"
    return "Ray's processes"  # raylet, GCS, dashboard and its agents, log monitor


def tree_split(run: Callable[[], object]) -> dict[str, float]:
    """CPU-seconds per role of this process tree while ``run`` runs.

    The job's publishing processes end with it: what they used comes back as this process's reaped children's
    CPU (the only children it reaps while a pool is up), counted as publishing."""
    before, reaped = _tree_cpu(), _reaped_cpu()
    run()
    after = _tree_cpu()
    split: dict[str, float] = defaultdict(float)
    split["publishing"] += _reaped_cpu() - reaped
    for pid, (cpu, command) in after.items():
        role = _role(pid, before[pid][1] if pid in before else command)
        split[role] += cpu - (before[pid][0] if pid in before else 0.0)
    return split


def _reaped_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_model_cpu(bundle: Path, scene: Path, options: PredictOptions = H1_OPTIONS) -> float:
    """CPU-seconds of the model and its argmax alone, one thread, on the pipeline's batches of ``scene``."""
    from geoseg.inference.blend import first_argmax
    from geoseg.inference.worker import ModelWorker

    spec, model = load_bundle(bundle)
    worker = ModelWorker(spec, model.state_dict(), threads=1)
    batches = [
        torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
        for b in pipeline_batches(bundle, [scene], options)
    ]
    worker.logits(batches[0])  # warm-up
    started = time.process_time()
    for batch in batches:
        for scores in worker.logits(batch):
            first_argmax(scores.contiguous())
    return time.process_time() - started


def decode_cpu(path: Path) -> float:
    started = time.process_time()
    decode_seconds(path)
    return time.process_time() - started


def h1(args: argparse.Namespace) -> None:
    """H1': host CPU per pixel, split per stage, interleaved repeats."""
    from geoseg.cluster import ray_session
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive

    quiet = Console(file=io.StringIO())
    options = replace(H1_OPTIONS, block=args.h1_block) if args.h1_block else H1_OPTIONS
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = init_bundle(work / "h163", "unet", 4, 6, base_channels=1, depth=1)
        big, small = make_scene(work / "big.tif", args.host_size), make_scene(work / "small.tif", 256)
        runs: dict[str, list[float]] = defaultdict(list)
        with ray_session(num_cpus=os.cpu_count()):
            spec, model = load_bundle(bundle)
            executor = RayExecutor(spec, model.state_dict(), workers=2, threads_per_worker=1)
            try:

                def job(scene: Path) -> None:
                    shutil.rmtree(work / "job", ignore_errors=True)
                    [report] = predict_archive(
                        bundle, [str(scene)], work / "job", options, console=quiet, executor=executor
                    )
                    assert report.status == "ok", report.error

                job(small)
                job(big)  # warm: first-call costs, not the pipeline's
                for _ in range(args.repeats):
                    runs["decode"].append(decode_cpu(big))
                    runs["bare"].append(bare_model_cpu(bundle, big, options))
                    split = tree_split(lambda: job(big))
                    for role in ROLES:
                        runs[role].append(split.get(role, 0.0))
                    runs["small driver"].append(tree_split(lambda: job(small)).get("driver", 0.0))
            finally:
                executor.shutdown()
    report_h1(args, runs)


def report_h1(args: argparse.Namespace, runs: dict[str, list[float]]) -> None:
    pixels = args.host_size**2
    repeats = range(len(runs["decode"]))
    tree = [sum(runs[role][i] for role in ROLES) for i in repeats]
    host = [tree[i] - runs["bare"][i] for i in repeats]
    ratios = [host[i] / runs["decode"][i] for i in repeats]
    med = statistics.median
    ns = lambda cpu: cpu / pixels * 1e9  # noqa: E731
    rows = [
        (
            f"H1' host CPU per px / decode CPU per px, {args.host_size}^2"
            + (f", block {args.h1_block}" if args.h1_block else ""),
            med(ratios),
            "<= 2.0",
            f"host {med(host):.2f} CPU-s ({ns(med(host)):.0f} ns/px) = tree {med(tree):.2f} "
            f"- model {med(runs['bare']):.2f}; decode {med(runs['decode']):.2f}; "
            f"ratios {min(ratios):.2f}-{max(ratios):.2f}",
        ),
        (
            "H2 driver CPU-s per Mpx (minus a 256^2 job's)",
            med([(runs["driver"][i] - runs["small driver"][i]) / (pixels / 1e6 - 0.0655) for i in repeats]),
            "<= 0.005",
            f"{med(runs['driver']):.2f} CPU-s",
        ),
    ]
    model_host = [runs["model actors"][i] - runs["bare"][i] for i in repeats]
    for role, values in [(r, runs[r]) for r in ROLES if r != "model actors"] + [
        ("model actors minus the model", model_host)
    ]:
        rows.append(
            (
                f"   {role}",
                med(values) / med(runs["decode"]),
                "(x decode)",
                f"{med(values):.2f} CPU-s, {ns(med(values)):.0f} ns/px",
            )
        )
    print_table(rows, args.json)
    for name, values in runs.items():
        print(f"  {name}: " + ", ".join(f"{v:.2f}" for v in values))


def make_chips(folder: Path, count: int, side: int = 256) -> Path:
    """``count`` random 4-band uint16 DEFLATE scenes of ``side``^2 side by side on one grid (P7's archive)."""
    if folder.exists() and len(list(folder.glob("*.tif"))) == count:
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16", "nodata": 0}
    profile |= {"crs": "EPSG:32633", "tiled": True, "blockxsize": side, "blockysize": side, "compress": "deflate"}
    for i in range(count):
        origin = (500_000 + side * 10 * (i % 100), 5_800_000 - side * 10 * (i // 100))
        with rasterio.open(
            staging / f"c{i:05d}.tif", "w", transform=Affine(10, 0, origin[0], 0, -10, origin[1]), **profile
        ) as dst:
            dst.write(rng.integers(500, 3000, (4, side, side), dtype=np.uint16))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def plain_loop(scenes: Path, out: Path, bundle: Path) -> None:
    """P7's reference: each scene read whole, normalised, through the model on one thread, argmax, written as a
    DEFLATE GeoTIFF; nothing else (no tiles, no halo, no manifest, COG, styles or quicklook)."""
    from geoseg.inference.blend import first_argmax

    torch.set_num_threads(1)
    spec, model = load_bundle(bundle)
    model = model.eval().to(memory_format=torch.channels_last)
    norm = spec.normalisation()
    out.mkdir(parents=True)
    with torch.inference_mode():
        for path in sorted(scenes.glob("*.tif")):
            with rasterio.open(path) as src:
                raw, profile = src.read(), src.profile
            x = torch.from_numpy(norm.apply(raw, np.ones(raw.shape[1:], bool)))[None]
            classes = first_argmax(model(x.contiguous(memory_format=torch.channels_last))[0]).numpy()
            profile.update(count=1, dtype="uint8", nodata=255, compress="deflate")
            with rasterio.open(out / path.name, "w", **profile) as dst:
                dst.write(classes, 1)


def _command_seconds(*args: str) -> tuple[float, float]:
    """Wall seconds of a fresh ``python *args`` and the CPU-seconds of its whole process tree.

    The tree's CPU is the larger of two lower bounds: each descendant's last sampled CPU (every 0.1 s, from
    /proc: Ray's daemons and workers, which their parents may not reap) and what this process got back from
    reaping the command (its own CPU and every descendant reaped in turn). Any tree's run takes at least its
    CPU over the machine's cores, which bounds what a ratio of wall times can reach on this machine."""
    import subprocess

    reaped = _reaped_cpu()
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    seen: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid, (cpu, _) in _tree_cpu(child.pid).items():
                seen[pid] = max(cpu, seen.get(pid, 0.0))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = child.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    assert child.returncode == 0, stderr[-2000:].decode(errors="replace")
    return seconds, max(sum(seen.values()), _reaped_cpu() - reaped)


def p7(args: argparse.Namespace) -> None:
    """P7: archives of small scenes, whole commands in fresh processes, interleaved repeats."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = init_bundle(work / "free", "unet", 4, 6, base_channels=1, depth=1)
        rates: dict[tuple[int, str], list[float]] = defaultdict(list)
        cpus: dict[tuple[int, str], list[float]] = defaultdict(list)  # the command tree's CPU-seconds
        walls: dict[tuple[int, str], list[float]] = defaultdict(list)
        for count in args.p7_scenes:
            scenes = make_chips(work / f"chips{count}", count)
            paths = ("plain", "in-process", "ray") if count == args.p7_scenes[0] else ("in-process",)
            for repeat in range(args.repeats):
                for path in paths:
                    # A fresh folder each run, all removed at the end: ext4 skips inodes freed in the last minutes
                    # when it allocates new ones, so a run writing right after the previous run's 4000 files were
                    # deleted spent 5.8 s of system CPU instead of 2.7 (measured; the plain loop less so, with a
                    # quarter of the files). Users do not delete an archive's outputs before each job.
                    out = work / f"out_{count}_{path}_{repeat}"
                    if path == "plain":
                        seconds, cpu = _command_seconds(__file__, "--plain-loop", str(scenes), str(out), str(bundle))
                    else:
                        predict = ["-m", "geoseg", "predict", "--model", str(bundle), "--output", str(out)]
                        seconds, cpu = _command_seconds(*predict, str(scenes), f"--{path}")
                    rates[(count, path)].append(count / seconds)
                    cpus[(count, path)].append(cpu)
                    walls[(count, path)].append(seconds)
            shutil.rmtree(scenes)
        first = args.p7_scenes[0]
        cores = os.cpu_count() or 1
        for path in ("in-process", "ray"):
            ratios = [a / b for a, b in zip(rates[(first, path)], rates[(first, "plain")], strict=True)]
            rows.append(
                (
                    f"P7 {first} x 256^2: geoseg {path} / plain loop, scenes/s",
                    statistics.median(ratios),
                    ">= 0.8",
                    f"{statistics.median(rates[(first, path)]):.1f} vs "
                    f"{statistics.median(rates[(first, 'plain')]):.1f} scenes/s; "
                    f"ratios {min(ratios):.2f}-{max(ratios):.2f}",
                )
            )
        for path in ("plain", "in-process", "ray"):
            # A run of C CPU-seconds takes at least C / cores seconds here: the best ratio this machine allows.
            ceilings = [
                plain * cores / cpu for plain, cpu in zip(walls[(first, "plain")], cpus[(first, path)], strict=True)
            ]
            rows.append(
                (
                    f"   {path}: CPU ms per scene (whole tree); ceiling of the ratio on {cores} cores",
                    statistics.median(ceilings),
                    "(info)",
                    f"{statistics.median(cpus[(first, path)]) / first * 1000:.1f} ms a scene, "
                    f"{statistics.median(cpus[(first, path)]) / statistics.median(walls[(first, path)]):.2f} "
                    f"cores busy on average",
                )
            )
        for count in args.p7_scenes[1:]:
            growth = statistics.median(rates[(count, "in-process")]) / statistics.median(rates[(first, "in-process")])
            rows.append(
                (
                    f"P7 in-process scenes/s, {count} / {first} scenes",
                    growth,
                    ">= 0.9",
                    f"{statistics.median(rates[(count, 'in-process')]):.1f} vs "
                    f"{statistics.median(rates[(first, 'in-process')]):.1f} scenes/s",
                )
            )
    print_table(rows, args.json)
    for (count, path), values in rates.items():
        cpu = ", ".join(f"{c:.1f}" for c in cpus[(count, path)])
        print(f"  {count} {path}: " + ", ".join(f"{v:.1f}" for v in values) + f" scenes/s; tree CPU-s {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="side of the P1/P3 scene in pixels")
    parser.add_argument("--host-size", type=int, default=8192, help="side of the H1/H2 raster (and P2's large one)")
    parser.add_argument("--base", type=int, default=16, help="U-Net width for P1/P3")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--p2b", action="store_true", help="only P2b: the in-process path's memory")
    parser.add_argument("--p7", action="store_true", help="only P7: archives of small scenes")
    parser.add_argument("--h1", action="store_true", help="only H1' (and H2): host CPU per pixel, split per stage")
    parser.add_argument(
        "--h1-block", type=int, help="H1' with this block size (2048: what GPU nodes run) instead of the CPU default"
    )
    parser.add_argument("--p7-scenes", type=int, nargs="+", default=[1000], help="archive sizes for P7")
    parser.add_argument("--plain-loop", type=Path, nargs=3, help=argparse.SUPPRESS)  # P7's reference, run alone
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(*args.plain_loop)
        return
    if args.p2b:
        p2b(args)
        return
    if args.p7:
        p7(args)
        return
    if args.h1:
        h1(args)
        return
    from geoseg.cluster import ray_session

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = init_bundle(work / "bundle", "unet", 4, 6, base_channels=args.base, depth=4)
        tiny = init_bundle(work / "tiny", "unet", 4, 6, base_channels=4, depth=2)
        host_model = init_bundle(work / "h163", "unet", 4, 6, base_channels=1, depth=1)
        scene = make_scene(work / "scene.tif", args.size)
        big = make_scene(work / "big.tif", args.host_size)
        base = make_scene(work / "base.tif", args.host_size // 4)
        small = make_scene(work / "small.tif", 256)
        warm = make_scene(work / "warm.tif", 512)
        chips = [make_scene(work / f"chip{i:02d}.tif", 512) for i in range(CHIPS)]
        times: dict[str, list[float]] = defaultdict(list)
        with ray_session(num_cpus=os.cpu_count()):
            # Before the bare-model processes exist: they are children of this process too.
            pss = {
                f"{size} {state}": peak_pss(tiny, scene_, warm, work, state == "warm")
                for state in ("cold", "warm")
                for size, scene_ in (("base", base), ("big", big))
            }
            model = TwoProcessModel({"scene": (bundle, [scene]), "chips": (bundle, chips), "host": (host_model, [big])})
            try:
                for _ in range(args.repeats):
                    times["decode"].append(decode_seconds(big))
                    seconds, cpu = job_seconds(host_model, big, warm, work, 2)
                    times["host job"].append(seconds)
                    times["host driver cpu"].append(cpu)
                    times["small driver cpu"].append(job_seconds(host_model, small, warm, work, 2)[1])
                    times["host bare"].append(model.seconds("host"))
                    times["bare"].append(model.seconds("scene"))
                    times["2 workers"].append(job_seconds(bundle, scene, warm, work, 2)[0])
                    times["1 worker"].append(job_seconds(bundle, scene, warm, work, 1)[0])
                    times["archive bare"].append(model.seconds("chips"))
                    times["archive job"].append(archive_seconds(bundle, chips, warm, work))
            finally:
                model.close()
    report(args, times, pss)


def report(args: argparse.Namespace, times: dict[str, list[float]], pss: dict[str, float]) -> None:
    host_mpx, mpx = args.host_size**2 / 1e6, args.size**2 / 1e6
    med: Callable[[str], float] = lambda key: statistics.median(times[key])  # noqa: E731
    per_repeat: Callable[[Callable[[int], float]], float] = lambda f: statistics.median(  # noqa: E731
        f(i) for i in range(len(times["decode"]))
    )
    h1 = per_repeat(lambda i: (host_mpx / times["host job"][i]) / (2 * host_mpx / times["decode"][i]))
    # The best any pipeline could do on two cores with this model: its CPU (2 processes x wall) plus decode CPU.
    ceiling = per_repeat(
        lambda i: (
            (2 * host_mpx / (2 * times["host bare"][i] + times["decode"][i])) / (2 * host_mpx / times["decode"][i])
        )
    )
    small_mpx = 256**2 / 1e6
    h2 = per_repeat(lambda i: (times["host driver cpu"][i] - times["small driver cpu"][i]) / (host_mpx - small_mpx))
    p1 = per_repeat(lambda i: times["bare"][i] / times["2 workers"][i])
    p1_archive = per_repeat(lambda i: times["archive bare"][i] / times["archive job"][i])
    p3 = per_repeat(lambda i: times["1 worker"][i] / times["2 workers"][i])
    rows = [
        (
            f"H1 e2e / (decode x 2 cores), 163-param U-Net, {args.host_size}^2",
            h1,
            ">= 0.30",
            f"{host_mpx / med('host job'):.1f} Mpx/s vs decode {host_mpx / med('decode'):.1f} Mpx/s per core",
        ),
        ("   ceiling with this model (its CPU + decode, packed)", ceiling, "(info)", f"bare {med('host bare'):.2f} s"),
        ("H2 driver CPU-s per Mpx (start-up excluded)", h2, "<= 0.005", f"{med('host driver cpu'):.2f} CPU-s"),
        (
            f"P1 bare / e2e, U-Net base {args.base}, {args.size}^2, 2 workers",
            p1,
            ">= 0.90",
            f"{med('bare'):.1f} s / {med('2 workers'):.1f} s",
        ),
        (
            f"P1 archive of {CHIPS} x 512^2 chips as a job",
            p1_archive,
            "(info)",
            f"{med('archive bare'):.1f} s / {med('archive job'):.1f} s",
        ),
        (
            f"P2 peak PSS, process tree, {args.host_size}^2 / {args.host_size // 4}^2",
            pss["big warm"] / pss["base warm"],
            "<= 1.15",
            f"{pss['big warm']:.0f} MiB / {pss['base warm']:.0f} MiB",
        ),
        (
            "   the same, workers warmed on a 512^2 scene only",
            pss["big cold"] / pss["base cold"],
            "(info)",
            f"{pss['big cold']:.0f} MiB / {pss['base cold']:.0f} MiB",
        ),
        ("P3 2 workers / 1 worker", p3, ">= 1.7", f"{med('1 worker'):.1f} s / {med('2 workers'):.1f} s"),
    ]
    print(
        f"\n{os.cpu_count()} CPUs, {args.repeats} interleaved repeats (ratios: median of the per-repeat ratios); "
        f"end-to-end base {args.base}: {mpx / med('2 workers'):.3f} Mpx/s with 2 workers, "
        f"{mpx / med('1 worker'):.3f} with 1\n"
    )
    print_table(rows, args.json)
    for name, runs in times.items():
        print(f"  {name}: " + ", ".join(f"{t:.2f}" for t in runs))


if __name__ == "__main__":
    main()
