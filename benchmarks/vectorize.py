"""Vectorizer benchmark: geoseg (chunked, parallel, exact) against gdal_polygonize and a whole-array polygonize.

    .venv/bin/python benchmarks/vectorize.py [--size 10000] [--chunk 2048]

Makes a size x size, 6-class mask of ragged blobs, then prints one table measured in this run:
  V1  geoseg time (Ray, all CPUs, -> GPKG) / gdal_polygonize.py -> GPKG time, target <= 0.5
  V2  geoseg peak RSS (in-process, one chunk at a time) / whole-array rasterio.features.shapes peak RSS,
      target <= 0.5
  and the polygon counts of geoseg and GDAL, which must be equal.

With --mmu AREA (m2, 1 m pixels) it measures the partition-keeping minimum mapping unit instead:
  V3  geoseg vectorize --min-area AREA time / gdal_sieve.py -st AREA + gdal_polygonize.py time
  V4  their peak RSS (geoseg in one process, --workers 1; GDAL: the larger of its two steps)
  and the polygon counts, which must be equal (the same sieve, then an exact polygonize).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_table  # noqa: E402

GEOSEG = [sys.executable, "-m", "geoseg"]
WHOLE_ARRAY = """
import resource, sys
import rasterio
from rasterio import features
from shapely.geometry import shape
with rasterio.open(sys.argv[1]) as src:
    data = src.read(1)
    polygons = [(shape(g), v) for g, v in features.shapes(data, connectivity=4, transform=src.transform)]
print(len(polygons), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_mask(path: Path, size: int, seed: int = 0) -> Path:
    """Six classes of ragged blobs: smooth noise cut at quantiles, with pixel noise on the edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((size // 64 + 2, size // 64 + 2)).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(1, 0, 500_000, 0, -1, 5_800_000),
        "tiled": True,
        "compress": "deflate",
    }
    edges = np.quantile(coarse, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            y = (np.arange(row, row + h) / 64.0)[:, None]
            x = (np.arange(size) / 64.0)[None, :]
            y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
            fy, fx = y - y0, x - x0
            field = (
                coarse[y0, x0] * (1 - fy) * (1 - fx)
                + coarse[y0 + 1, x0] * fy * (1 - fx)
                + coarse[y0, x0 + 1] * (1 - fy) * fx
                + coarse[y0 + 1, x0 + 1] * fy * fx
            )
            field += rng.normal(0, 0.03, field.shape).astype(np.float32)  # ragged edges, a few specks
            dst.write(np.searchsorted(edges, field).astype(np.uint8), 1, window=Window(0, row, size, h))
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of the command's process (GNU time's maximum resident set size)."""
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=True)
    return int(result.stderr.strip().splitlines()[-1]) / 1024


def count_features(path: Path) -> int:
    import pyogrio

    return int(pyogrio.read_info(path)["features"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--mmu", type=float, help="minimum mapping unit in m2: run V3/V4 instead of V1/V2")
    args = parser.parse_args()
    if shutil.which("gdal_polygonize.py") is None:
        sys.exit("gdal_polygonize.py not found: apt-get install gdal-bin")
    if args.mmu:
        return mmu(args)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mask = make_mask(work / "mask.tif", args.size)
        ours, _ = timed(
            [*GEOSEG, "vectorize", str(mask), "--output", str(work / "geoseg.gpkg"), "--chunk", str(args.chunk)]
        )
        gdal, _ = timed(
            ["gdal_polygonize.py", "-q", str(mask), "-f", "GPKG", str(work / "gdal.gpkg"), "out", "class_id"]
        )
        ours_rss = peak_rss_mib(
            [
                *GEOSEG,
                "vectorize",
                str(mask),
                "--output",
                str(work / "rss.gpkg"),
                "--chunk",
                str(args.chunk),
                "--workers",
                "1",
            ]
        )
        whole_rss = peak_rss_mib([sys.executable, "-c", WHOLE_ARRAY, str(mask)])
        n_ours, n_gdal = count_features(work / "geoseg.gpkg"), count_features(work / "gdal.gpkg")
    rows = [
        ("V1 geoseg -> GPKG / gdal_polygonize -> GPKG time", ours / gdal, "<= 0.5", f"{ours:.1f} s / {gdal:.1f} s"),
        (
            "V2 geoseg peak RSS / whole-array shapes peak RSS",
            ours_rss / whole_rss,
            "<= 0.5",
            f"{ours_rss:.0f} MiB / {whole_rss:.0f} MiB",
        ),
        ("polygon count geoseg / gdal", n_ours / n_gdal, "== 1", f"{n_ours} / {n_gdal}"),
    ]
    print(f"\nmask {args.size} x {args.size}, 6 classes, chunk {args.chunk}")
    print_table(rows, args.json)


def mmu(args: argparse.Namespace) -> None:
    """V3/V4: sieve + polygonize, geoseg against GDAL's two tools, interleaved (GDAL, geoseg, GDAL, geoseg)."""
    pixels = str(int(np.ceil(args.mmu)))  # 1 m2 pixels
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mask = make_mask(work / "mask.tif", args.size)
        ours_cmd = [*GEOSEG, "vectorize", str(mask), "--output", str(work / "geoseg.gpkg"), "--chunk", str(args.chunk)]
        ours_cmd += ["--min-area", str(args.mmu), "--workers", "1"]
        sieve_cmd = ["gdal_sieve.py", "-q", "-st", pixels, "-4", str(mask), "-of", "GTiff", str(work / "sieved.tif")]
        poly_cmd = ["gdal_polygonize.py", "-q", str(work / "sieved.tif"), "-f", "GPKG", str(work / "gdal.gpkg")]
        poly_cmd += ["out", "class_id"]
        times: dict[str, list[float]] = {"ours": [], "gdal": []}
        rss: dict[str, list[float]] = {"ours": [], "gdal": []}
        for _ in range(2):
            for target in (work / "sieved.tif", work / "gdal.gpkg", work / "geoseg.gpkg"):
                target.unlink(missing_ok=True)
            sieve_s, _ = timed(sieve_cmd)
            poly_s, _ = timed(poly_cmd)
            times["gdal"].append(sieve_s + poly_s)
            (work / "gdal.gpkg").unlink()
            rss["gdal"].append(max(peak_rss_mib(sieve_cmd), peak_rss_mib(poly_cmd)))
            ours_s, _ = timed(ours_cmd)
            times["ours"].append(ours_s)
            (work / "geoseg.gpkg").unlink()
            rss["ours"].append(peak_rss_mib(ours_cmd))
        n_ours, n_gdal = count_features(work / "geoseg.gpkg"), count_features(work / "gdal.gpkg")
    ratios = [o / g for o, g in zip(times["ours"], times["gdal"], strict=True)]
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    rows = [
        (
            "V3 geoseg --min-area / gdal_sieve + gdal_polygonize time",
            min(ratios),
            "<= 1",
            f"{min(times['ours']):.1f} s / {min(times['gdal']):.1f} s (ratios {spread})",
        ),
        (
            "V4 geoseg --min-area / GDAL peak RSS",
            min(rss["ours"]) / min(rss["gdal"]),
            "report",
            f"{min(rss['ours']):.0f} MiB / {min(rss['gdal']):.0f} MiB",
        ),
        ("polygon count geoseg / gdal", n_ours / n_gdal, "== 1", f"{n_ours} / {n_gdal}"),
    ]
    print(f"\nmask {args.size} x {args.size}, 6 classes, chunk {args.chunk}, minimum mapping unit {args.mmu} m2")
    print_table(rows, args.json)


if __name__ == "__main__":
    main()
