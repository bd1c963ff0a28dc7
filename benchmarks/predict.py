"""Prediction benchmark: overhead, memory scaling, worker scaling, and a tutorial-style naive loop.

    .venv/bin/python benchmarks/predict.py [--size 2048] [--base 16]

Prints one table of ratios measured in this run:
  P1  bare-model time on the same tiles / end-to-end time (halo + blending + read + write on), target >= 0.90;
      the bare model is the faster, per repeat, of one process with 2 threads and 2 processes with 1 thread;
      for one large scene, and for an archive of 512 x 512 chips with as many pixels run as a job (and, for
      comparison, scene by scene with the pool drained between scenes)
  P2  peak RSS for a 16x larger raster / peak RSS at the base size (tiny model, no Ray), target <= 1.15
  P3  end-to-end throughput with 2 workers / with 1 worker, target >= 1.7 (on 2 cores)
  H   host-side stages without a model (read; stitch + COG write), in Mpx/s on one core: how fast the CPUs
      beside a GPU must be to keep it fed
  and the naive loop (whole raster in RAM, no overlap, no blending) for comparison.
P1 and P3 are medians over --repeats interleaved repeats of per-repeat ratios (the machine this was written on
drifts by 10-30 % between minutes; interleaving compares configurations on the same minute).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
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
from geoseg.bundle import BundleSpec, init_bundle, load_bundle  # noqa: E402
from geoseg.inference.predictor import Predictor  # noqa: E402
from geoseg.inference.reader import Normalisation, read_tiles  # noqa: E402
from geoseg.inference.scene import LocalExecutor, PredictOptions, batched, predict_batch, predict_scene  # noqa: E402
from geoseg.io import SceneInfo, open_scene  # noqa: E402
from geoseg.io.writer import ClassRasterWriter  # noqa: E402
from geoseg.stitch import Stitcher  # noqa: E402

OPTIONS = PredictOptions(tile=256, halo=16, overlap=16, batch_size=4)


def make_scene(path: Path, size: int, bands: int = 4) -> Path:
    """A smooth random scene written block by block (the benchmark never holds it whole)."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500_000, 0, -10, 5_800_000),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "nodata": 0,
    }
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(rng.integers(500, 3000, (bands, h, size), dtype=np.uint16), window=Window(0, row, size, h))
    return path


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def end_to_end_seconds(
    spec: BundleSpec, model: torch.nn.Module, scene: SceneInfo, warm: SceneInfo, out: Path, workers: int, threads: int
) -> float:
    """One scene through Ray (readers + actors + stitcher + COG writer) on fresh actors warmed on ``warm``."""
    from geoseg.inference.distributed import RayExecutor

    executor = RayExecutor(spec, model.state_dict(), OPTIONS, workers=workers, threads_per_worker=threads)
    try:
        predict_scene(warm, spec, executor, out.with_name("warm_out.tif"), OPTIONS)
        return timed(partial(predict_scene, scene, spec, executor, out, OPTIONS))
    finally:
        executor.shutdown()


def archive_seconds(spec: BundleSpec, model: torch.nn.Module, bundle: Path, chips: list[Path], work: Path) -> dict:
    """An archive of small scenes on one warm 2-worker pool: the job (scenes streamed through the pool,
    publishing overlapped) and, for comparison, the scenes one after another, each drained before the next."""
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.job import predict_archive

    executor = RayExecutor(spec, model.state_dict(), OPTIONS, workers=2, threads_per_worker=1)
    quiet = Console(file=io.StringIO())
    scenes = [open_scene(chip) for chip in chips]
    try:
        predict_scene(scenes[0], spec, executor, work / "warm_chip.tif", OPTIONS)
        shutil.rmtree(work / "job", ignore_errors=True)
        job = timed(
            partial(
                predict_archive,
                bundle,
                [str(c) for c in chips],
                work / "job",
                OPTIONS,
                console=quiet,
                executor=executor,
            )
        )
        one_by_one = timed(
            lambda: [predict_scene(s, spec, executor, work / f"chip_{s.name}.tif", OPTIONS) for s in scenes]
        )
    finally:
        executor.shutdown()
    return {"archive job": job, "archive scene by scene": one_by_one}


def interleaved_seconds(
    bundle: Path, scene_path: Path, chips: list[Path], work: Path, repeats: int
) -> dict[str, list[float]]:
    """Per repeat, back to back: the bare model (2 threads in this process; 2 processes x 1 thread), 2 workers
    x 1 thread, 1 worker, and the archive of chips (bare model both ways, job, scene by scene); then one run of
    1 worker x 2 threads.

    The bare model runs on exactly the tiles the pipeline runs, pre-read; P1 compares with the faster of its
    two runs (two single-thread processes is how the pipeline runs it on CPU). Each end-to-end run starts
    fresh actors and warms them (and the readers) on a small scene first, so actor start-up is excluded.
    Interleaving puts the runs on the same minute of the machine: its speed drifts by 10-30 % between
    minutes, which separate blocks of runs would turn into a ratio error.
    """
    spec, model = load_bundle(bundle)
    scene = open_scene(scene_path)
    warm = open_scene(make_scene(work / "warm.tif", 512))
    predictor = Predictor(spec, model.state_dict(), threads=2)
    batches, chip_batches = tiles_of(spec, [scene_path]), tiles_of(spec, chips)
    predictor.predict(batches[0])  # warm-up (oneDNN primitive cache)
    two_processes = TwoProcessModel(bundle, {"scene": [scene_path], "chips": chips})

    def bare(data: list[np.ndarray]) -> float:
        return timed(lambda: [predictor.predict(batch) for batch in data])

    times: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(repeats):
            times["bare, 2 threads"].append(bare(batches))
            times["bare, 2 processes"].append(two_processes.seconds("scene"))
            for key, workers in (("2 workers", 2), ("1 worker", 1)):
                times[key].append(end_to_end_seconds(spec, model, scene, warm, work / "e2e.tif", workers, threads=1))
            times["archive bare, 2 threads"].append(bare(chip_batches))
            times["archive bare, 2 processes"].append(two_processes.seconds("chips"))
            for key, seconds in archive_seconds(spec, model, bundle, chips, work).items():
                times[key].append(seconds)
    finally:
        two_processes.close()
    times["1 worker x 2 threads"] = [end_to_end_seconds(spec, model, scene, warm, work / "e2e.tif", 1, threads=2)]
    for prefix in ("", "archive "):  # the faster way to run the bare model on two cores, per repeat
        pairs = zip(times[f"{prefix}bare, 2 threads"], times[f"{prefix}bare, 2 processes"], strict=True)
        times[f"{prefix}bare"] = [min(pair) for pair in pairs]
    return times


def tiles_of(spec: BundleSpec, paths: list[Path]) -> list[np.ndarray]:
    """The model input of every batch the 2-worker pipeline runs for these scenes, read in advance: the same
    batches (CPU time per tile depends on batch size), so with the last scene's tail cut finer."""
    norm = Normalisation.from_spec(spec)
    scenes = [open_scene(path) for path in paths]
    return [
        read_tiles(scene, tiles, norm).data
        for i, scene in enumerate(scenes)
        for tiles in batched(OPTIONS.grid(scene), OPTIONS.batch_size, 2 if i == len(scenes) - 1 else 1)
    ]


class TwoProcessModel:
    """The bare model run as the pipeline runs it on CPU: two processes of one thread, each taking every other
    batch of pre-read tiles. The processes start (torch import, tile reads, warm-up) before any timing."""

    def __init__(self, bundle: Path, datasets: dict[str, list[Path]], processes: int = 2) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        for part in range(processes):
            parent, child = context.Pipe()
            context.Process(target=_model_process, args=(child, bundle, datasets, part, processes), daemon=True).start()
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


def _model_process(pipe: Connection, bundle: Path, datasets: dict[str, list[Path]], part: int, parts: int) -> None:
    spec, model = load_bundle(bundle)
    predictor = Predictor(spec, model.state_dict(), threads=1)
    shares = {name: tiles_of(spec, paths)[part::parts] for name, paths in datasets.items()}
    predictor.predict(shares["scene"][0])
    pipe.send("ready")
    while (name := pipe.recv()) is not None:
        pipe.send(timed(lambda: [predictor.predict(batch) for batch in shares[name]]))


def naive_seconds(bundle: Path, scene_path: Path, out: Path) -> tuple[float, float]:
    """Tutorial-style: read the whole raster, cut non-overlapping tiles, predict, write the whole array."""
    torch.set_num_threads(2)
    spec, model = load_bundle(bundle)
    norm = Normalisation.from_spec(spec)
    started = time.perf_counter()
    with rasterio.open(scene_path) as src:
        image = (src.read().astype(np.float32) - norm.mean) / norm.std
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 255}
    classes = np.zeros(image.shape[1:], dtype=np.uint8)
    t = OPTIONS.tile
    with torch.inference_mode():
        for r in range(0, image.shape[1], t):
            for c in range(0, image.shape[2], t):
                x = torch.from_numpy(np.ascontiguousarray(image[None, :, r : r + t, c : c + t]))
                classes[r : r + t, c : c + t] = model(x)[0].argmax(0).numpy()
    with rasterio.open(out / "naive.tif", "w", **profile) as dst:
        dst.write(classes, 1)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_child(bundle: Path, scene_path: Path, out: Path) -> float:
    """Peak RSS (MiB) of a fresh process predicting one scene in-process (no Ray, tiny model)."""
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[4]);"
        "from pathlib import Path;"
        "from benchmarks.predict import peak_rss_run;"
        "peak_rss_run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bundle), str(scene_path), str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def peak_rss_run(bundle: Path, scene_path: Path, out: Path) -> None:
    spec, model = load_bundle(bundle)
    executor = LocalExecutor(Predictor(spec, model.state_dict(), threads=2), Normalisation.from_spec(spec), OPTIONS)
    predict_scene(open_scene(scene_path), spec, executor, out, OPTIONS)


def host_stage_seconds(bundle: Path, scene_path: Path, out: Path) -> tuple[float, float]:
    """Read, then stitch + write, of the P1 scene in this process, with a model that costs nothing.

    The "model" returns fixed random probabilities (a noisy class map, the slowest to compress), so these
    are the CPU costs the pipeline adds to any model.
    """
    spec, _ = load_bundle(bundle)
    scene, norm = open_scene(scene_path), Normalisation.from_spec(spec)
    grid = OPTIONS.grid(scene)
    started = time.perf_counter()
    batches = [read_tiles(scene, tiles, norm) for tiles in batched(grid, OPTIONS.batch_size)]
    read = time.perf_counter() - started

    noise = np.random.default_rng(0).random((len(spec.classes), *batches[0].data.shape[2:]), dtype=np.float32)

    class FixedNoise:
        def predict(self, data: np.ndarray) -> np.ndarray:
            return np.broadcast_to(noise / noise.sum(axis=0), (len(data), *noise.shape))

    outputs = [predict_batch(FixedNoise(), batch) for batch in batches]  # type: ignore[arg-type]
    ids, names, colors = ([getattr(c, f) for c in spec.classes] for f in ("id", "name", "color"))
    started = time.perf_counter()
    with ClassRasterWriter(out, scene, ids, names, colors) as writer:
        stitcher = Stitcher(grid, np.array(ids), writer)
        for output in outputs:
            for result in output.results:
                stitcher.add(result)
    return read, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="side of the P1/P3 scene in pixels")
    parser.add_argument("--base", type=int, default=16, help="U-Net width for P1/P3")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from geoseg.cluster import ray_session

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = init_bundle(work / "bundle", "unet", 4, 6, base_channels=args.base, depth=4)
        tiny = init_bundle(work / "tiny", "unet", 4, 6, base_channels=4, depth=2)
        scene = make_scene(work / "scene.tif", args.size)
        # As many pixels as the P1 scene, in chips of 512 x 512 (an archive of SpaceNet-like scenes).
        chips = [make_scene(work / f"chip{i:02d}.tif", 512) for i in range(max(1, args.size**2 // 512**2))]
        small, large = make_scene(work / "small.tif", 1024), make_scene(work / "large.tif", 4096)
        rss_small = peak_rss_child(tiny, small, work / "small_out.tif")
        rss_large = peak_rss_child(tiny, large, work / "large_out.tif")
        read_s, stitch_write_s = host_stage_seconds(bundle, scene, work / "host.tif")
        naive, naive_rss = naive_seconds(bundle, scene, work)
        with ray_session(num_cpus=os.cpu_count()):
            times = interleaved_seconds(bundle, scene, chips, work, args.repeats)
    bare, e2e_2, e2e_1, e2e_1x2 = (
        statistics.median(times[k]) for k in ("bare", "2 workers", "1 worker", "1 worker x 2 threads")
    )
    p1 = statistics.median(b / e for b, e in zip(times["bare"], times["2 workers"], strict=True))
    p1_job, p1_by_scene = (
        statistics.median(b / e for b, e in zip(times["archive bare"], times[key], strict=True))
        for key in ("archive job", "archive scene by scene")
    )
    p3 = statistics.median(one / two for one, two in zip(times["1 worker"], times["2 workers"], strict=True))
    mpx = args.size**2 / 1e6
    rows = [
        ("P1 bare model / end-to-end (2 workers)", p1, ">= 0.90", f"{bare:.1f} s / {e2e_2:.1f} s"),
        (
            f"P1 archive of {len(chips)} x 512^2: bare / job (scenes streamed)",
            p1_job,
            ">= 0.90",
            f"{statistics.median(times['archive bare']):.1f} s / {statistics.median(times['archive job']):.1f} s",
        ),
        (
            "   the same, scene by scene (drained between scenes)",
            p1_by_scene,
            "(info)",
            f"{statistics.median(times['archive scene by scene']):.1f} s",
        ),
        (
            "P2 peak RSS 4096^2 / 1024^2 (16x pixels)",
            rss_large / rss_small,
            "<= 1.15",
            f"{rss_large:.0f} MiB / {rss_small:.0f} MiB",
        ),
        ("P3 2 workers / 1 worker throughput (1 CPU each)", p3, ">= 1.7", f"{e2e_1:.1f} s / {e2e_2:.1f} s"),
        ("   1 worker with 2 threads / 2 workers", e2e_2 / e2e_1x2, "(info)", f"{e2e_1x2:.1f} s"),
        ("H  read + normalise, Mpx/s on one core", mpx / read_s, "(info)", f"{read_s:.2f} s"),
        ("H  stitch + COG write, Mpx/s (the driver)", mpx / stitch_write_s, "(info)", f"{stitch_write_s:.2f} s"),
        (
            "naive loop / geoseg end-to-end time",
            naive / e2e_2,
            "(info)",
            f"{naive:.1f} s, peak RSS {naive_rss:.0f} MiB, no overlap/blend",
        ),
    ]
    print(
        f"\nscene {args.size}x{args.size} x 4 bands ({mpx:.1f} Mpx), U-Net base {args.base} depth 4, "
        f"tile {OPTIONS.tile} halo {OPTIONS.halo} overlap {OPTIONS.effective_overlap()}, {os.cpu_count()} CPUs, "
        f"{args.repeats} interleaved repeats (ratios: median of the per-repeat ratios)"
    )
    print(f"geoseg end-to-end: {mpx / e2e_2:.3f} Mpx/s with 2 workers, {mpx / e2e_1:.3f} Mpx/s with 1\n")
    print_table(rows, args.json)
    for name, runs in times.items():
        print(f"  {name}: " + ", ".join(f"{t:.2f}" for t in runs) + " s")


if __name__ == "__main__":
    main()
