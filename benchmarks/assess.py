"""Speed and memory of ``geoseg sample`` and ``geoseg change`` on large maps, against the plain tools.

    .venv/bin/python benchmarks/assess.py [--side 40000] [--repeats 2] [--workdir DIR]

Two class maps of ``side`` x ``side`` uint8 pixels (6 classes in 16-px patches with 3 % per-pixel speckle, so
they compress about as much as real classifier output; tiled 512, DEFLATE), B being A with 5 % of its patches
changed, are written once (kept in ``--workdir`` for reruns). Then, interleaved, each
command as a whole process (Python start-up included on both sides):

* Q1: ``geoseg sample A --size 1000`` / a Python loop reading A once block by block with rasterio (target <= 2),
  and ``sample``'s peak RSS (target <= 300 MB);
* Q2: ``geoseg change A B`` (a COG with overviews, the transition matrix) / ``gdal_calc.py --calc "A*16+B"``
  writing a tiled DEFLATE GeoTIFF (target <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_table  # noqa: E402

GEOSEG = [sys.executable, "-m", "geoseg"]
READ_ONCE = """
import sys, rasterio
with rasterio.open(sys.argv[1]) as src:
    for _, window in src.block_windows(1):
        src.read(1, window=window)
"""


def _maps(folder: Path, side: int) -> tuple[Path, Path]:
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from geoseg.io.writer import class_tags

    a_path, b_path = folder / f"a_{side}_speckle.tif", folder / f"b_{side}_speckle.tif"
    if a_path.exists() and b_path.exists():
        return a_path, b_path
    names = ["developed", "agriculture", "grass", "shrub", "forest", "water"]
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 1, "dtype": "uint8", "crs": "EPSG:32617"}
    profile |= {"transform": Affine(10, 0, 600_000, 0, -10, 4_000_000), "tiled": True, "blockxsize": 512}
    profile |= {"blockysize": 512, "compress": "deflate", "nodata": 255, "BIGTIFF": "YES"}
    rng = np.random.default_rng(0)
    with rasterio.open(a_path, "w", **profile) as a, rasterio.open(b_path, "w", **profile) as b:
        for dst in (a, b):
            dst.update_tags(**class_tags(list(range(6)), names))
            dst.write_colormap(1, {i: (40 * i, 255 - 40 * i, 100, 255) for i in range(6)})
        for row in range(0, side, 2048):
            for col in range(0, side, 2048):
                h, w = min(2048, side - row), min(2048, side - col)
                coarse = rng.choice(6, size=(h // 16 + 1, w // 16 + 1), p=[0.1, 0.25, 0.1, 0.05, 0.4, 0.1])
                later = np.where(rng.random(coarse.shape) < 0.05, rng.integers(0, 6, coarse.shape), coarse)
                window = Window(col, row, w, h)
                noise = rng.random((h, w)) < 0.03  # a per-pixel classifier's speckle: ~10x DEFLATE, as real maps
                speckle = rng.integers(0, 6, (h, w), dtype=np.uint8)
                for dst, patches in ((a, coarse), (b, later)):
                    block = np.kron(patches.astype(np.uint8), np.ones((16, 16), np.uint8))[:h, :w]
                    dst.write(np.where(noise, speckle, block), 1, window=window)
    return a_path, b_path


def _run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{command[:4]} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-q2", action="store_true", help="Only Q1 (gdal_calc takes ~75 s at 40000²).")
    parser.add_argument("--workdir", type=Path, help="Keep the maps here between runs (default: a temporary folder).")
    args = parser.parse_args()
    if shutil.which("gdal_calc.py") is None:
        raise SystemExit("gdal_calc.py (Debian gdal-bin) is the Q2 reference")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        a, b = _maps(work, args.side)
        print(
            f"maps {args.side}x{args.side}: {a.stat().st_size / 2**20:.0f} + {b.stat().st_size / 2**20:.0f} MiB "
            f"({time.perf_counter() - started:.0f} s to write or find)",
            flush=True,
        )
        read, sample, sample_rss, calc, change, change_rss = [], [], [], [], [], []
        calc_args = ["gdal_calc.py", "--quiet", "-A", str(a), "-B", str(b), "--calc", "A*16+B", "--type", "Byte"]
        calc_args += ["--NoDataValue", "255", "--co", "TILED=YES", "--co", "COMPRESS=DEFLATE", "--co", "BIGTIFF=YES"]
        for k in range(args.repeats):
            out = Path(scratch) / f"run{k}"
            out.mkdir()
            read.append(_run([sys.executable, "-c", READ_ONCE, str(a)])[0])
            wall, rss = _run([*GEOSEG, "sample", str(a), "--output", str(out / "sheet.gpkg"), "--size", "1000"])
            sample.append(wall)
            sample_rss.append(rss)
            line = f"round {k}: read {read[-1]:.1f} s, sample {wall:.1f} s ({rss:.0f} MB)"
            if not args.skip_q2:
                calc.append(_run([*calc_args, "--outfile", str(out / "calc.tif")])[0])
                wall, rss = _run([*GEOSEG, "change", str(a), str(b), "--output", str(out / "change")])
                change.append(wall)
                change_rss.append(rss)
                line += f", gdal_calc {calc[-1]:.1f} s, change {wall:.1f} s ({rss:.0f} MB)"
            print(line, flush=True)
            shutil.rmtree(out)
    q1 = [s / r for s, r in zip(sample, read, strict=True)]
    q2 = [c / g for c, g in zip(change, calc, strict=True)]
    rows = [
        ("Q1 sample / read once", statistics.median(q1), "<= 2", f"rounds {', '.join(f'{v:.2f}' for v in q1)}"),
        ("Q1 sample peak RSS MB", max(sample_rss), "<= 300", f"rounds {', '.join(f'{v:.0f}' for v in sample_rss)}"),
    ]
    if q2:
        rows += [
            ("Q2 change / gdal_calc", statistics.median(q2), "<= 1.5", f"rounds {', '.join(f'{v:.2f}' for v in q2)}"),
            ("change peak RSS MB", max(change_rss), "info", f"rounds {', '.join(f'{v:.0f}' for v in change_rss)}"),
        ]
    print_table(rows)


if __name__ == "__main__":
    main()
