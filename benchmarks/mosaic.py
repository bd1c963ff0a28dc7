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
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoseg-mosaic-bench-"))
    work.mkdir(parents=True, exist_ok=True)
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
