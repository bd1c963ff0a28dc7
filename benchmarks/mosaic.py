"""Speed of ``geoseg mosaic --method mean`` against ``gdalwarp`` of the same probability rasters (M1), and
2 Ray workers against 1 (M3).

    .venv/bin/python benchmarks/mosaic.py [--scenes 16] [--side 4096] [--repeats 3] [--workdir DIR]

``scenes`` overlapping scenes of ``side``² pixels, half in UTM 17 and half in UTM 18 either side of 78 W, each a
finished predict job's products (a class COG, a 6-class probability COG, the manifest record), are written
once (kept in ``--workdir``). Then, interleaved ``repeats`` times, as whole processes:

* M1: ``geoseg mosaic JOB --method mean --in-process`` into the CRS most scenes use / ``gdalwarp -multi -wo
  NUM_THREADS=ALL_CPUS -wm 512`` of every probability raster onto the same grid (last wins: gdalwarp only
  warps, geoseg also aggregates). Target <= 1.0.
* M3: ``geoseg mosaic --workers 1 --ray`` / ``--workers 2 --ray`` (Ray start-up included). Target >= 1.7x.
* M2 (``--m2``): peak PSS of the whole ``geoseg mosaic`` process tree over an archive 16x the area / over the
  1x archive (``k x k`` scenes of ``--m2-side`` px on a regular overlapping layout, k = 2 and 8, 512-px tiles,
  in process). Target <= 1.15: memory is per tile, not per archive.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

CLASSES = {i: f"class{i}" for i in range(1, 7)}


def make_archive(folder: Path, scenes: int, side: int) -> Path:
    import numpy as np
    from affine import Affine
    from mosaic_jobs import FakeScene, random_probabilities, write_job

    job = folder / "job"
    if (job / "manifest.json").exists():
        return job
    rng = np.random.default_rng(0)
    made = []
    for i in range(scenes):
        zone17 = i % 2 == 0
        dx, dy = (i // 2) * side * 7.5, (i % 4) * side * 5.0  # overlapping by about three quarters
        origin = (735_000 - side * 30 + dx, 3_900_000 - dy) if zone17 else (196_000 + dx, 3_901_000 - dy)
        p = random_probabilities(rng, side, side, n=len(CLASSES), smooth=16)
        transform = Affine(30, 0, origin[0], 0, -30, origin[1])
        crs = "EPSG:32617" if zone17 else "EPSG:32618"
        made.append(FakeScene(f"s{i:02d}", p, transform, crs, f"2024-{1 + i % 12:02d}-15"))
    return write_job(job, made, names=CLASSES)


def make_layout(folder: Path, k: int, side: int) -> Path:
    """``k x k`` scenes of ``side`` px (UTM 17, 30 m), each overlapping its neighbours by a quarter."""
    import numpy as np
    from affine import Affine
    from mosaic_jobs import FakeScene, random_probabilities, write_job

    job = folder / f"layout{k}"
    if (job / "manifest.json").exists():
        return job
    rng = np.random.default_rng(k)
    step = side * 3 // 4 * 30
    made = [
        FakeScene(
            f"s{i:02d}_{j:02d}",
            random_probabilities(rng, side, side, n=len(CLASSES), smooth=16),
            Affine(30, 0, 600_000 + j * step, 0, -30, 4_000_000 - i * step),
            "EPSG:32617",
            f"2024-{1 + (i + j) % 12:02d}-15",
        )
        for i in range(k)
        for j in range(k)
    ]
    return write_job(job, made, names=CLASSES)


def peak_pss(command: list[str]) -> float:
    """Peak PSS (MiB) of ``command``'s process and all its descendants, sampled every 0.1 s."""
    from predict import _descendants, _pss

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, sum(_pss(pid) for pid in _descendants(process.pid)))
        time.sleep(0.1)
    if process.returncode:
        raise RuntimeError(f"{command} failed ({process.returncode})")
    return peak


def m2(work: Path, side: int, repeats: int) -> None:
    small, large = make_layout(work, 2, side), make_layout(work, 8, side)
    ratios = []
    for repeat in range(repeats):
        base = [sys.executable, "-m", "geoseg", "mosaic", "--method", "mean", "--tile-size", "512", "--in-process"]
        one = peak_pss([*base, str(small), "--output", str(work / f"m2_small_{repeat}")])
        sixteen = peak_pss([*base, str(large), "--output", str(work / f"m2_large_{repeat}")])
        ratios.append(sixteen / one)
        print(f"repeat {repeat}: peak PSS 1x {one:.0f} MiB, 16x {sixteen:.0f} MiB")
    spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
    print(f"M2 peak PSS 16x area / 1x: median {statistics.median(ratios):.2f} ({spread}), target <= 1.15")


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--m2", action="store_true", help="run M2 (memory at 16x the area) instead of M1 and M3")
    parser.add_argument("--m2-side", type=int, default=1024)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-mosaic-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.m2:
        m2(work, args.m2_side, args.repeats)
        return
    job = make_archive(work, args.scenes, args.side)
    geoseg = [sys.executable, "-m", "geoseg", "mosaic", str(job), "--method", "mean", "--tile-size", "2048"]
    subprocess.run([*geoseg, "--output", str(work / "probe"), "--in-process"], check=True, capture_output=True)
    import rasterio

    with rasterio.open(work / "probe" / "mosaic.vrt") as grid:
        bounds, (h, w), crs = grid.bounds, grid.shape, grid.crs.to_string()
    probabilities = sorted(str(p) for p in job.glob("*_probabilities.tif"))
    gdalwarp = ["gdalwarp", "-q", "-overwrite", "-multi", "-wo", "NUM_THREADS=ALL_CPUS", "-wm", "512", "-t_srs", crs,
                "-te", *map(repr, bounds), "-ts", str(w), str(h), "-r", "bilinear", "-srcnodata", "255",
                "-dstnodata", "255", "-co", "TILED=YES", "-co", "COMPRESS=DEFLATE", "-co", "ZLEVEL=1", "-co",
                "BIGTIFF=IF_SAFER", *probabilities, str(work / "gdalwarp.tif")]  # fmt: skip
    m1, m3 = [], []
    for repeat in range(args.repeats):
        ours = timed([*geoseg, "--output", str(work / f"m1_{repeat}"), "--in-process"])
        theirs = timed(gdalwarp)
        one = timed([*geoseg, "--output", str(work / f"w1_{repeat}"), "--workers", "1", "--ray"])
        two = timed([*geoseg, "--output", str(work / f"w2_{repeat}"), "--workers", "2", "--ray"])
        m1.append(ours / theirs)
        m3.append(one / two)
        print(f"repeat {repeat}: geoseg {ours:.1f} s, gdalwarp {theirs:.1f} s; 1 worker {one:.1f} s, 2 {two:.1f} s")
    mpx = w * h / 1e6
    print(f"grid {w} x {h} ({mpx:.0f} Mpx), {args.scenes} scenes of {args.side}^2, 6 classes")
    for name, ratios, target in (
        ("M1 geoseg mean / gdalwarp", m1, "<= 1.0"),
        ("M3 1 worker / 2 workers", m3, ">= 1.7"),
    ):
        spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name}: median {statistics.median(ratios):.2f} ({spread}), target {target}")


if __name__ == "__main__":
    main()
