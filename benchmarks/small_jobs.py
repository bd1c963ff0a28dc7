"""Where small jobs should run: in this process or on a private Ray, for predict and vectorize.

    .venv/bin/python benchmarks/small_jobs.py [--sizes 1 4 16]

For each size (Mpx, one square scene, 4-band uint16; U-Net base 16) times ``geoseg predict --in-process`` and
``--ray`` (a private local Ray, as a job on no cluster gets), then ``geoseg vectorize`` of the class raster with
``--workers 1`` (in-process) and ``--workers 2`` (Ray), interleaved, wall clock of the whole command. The sizes
where Ray starts to win are the thresholds (``SMALL_JOB_MPX``, ``PARALLEL_MIN_MPX``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import print_table  # noqa: E402

GEOSEG = [sys.executable, "-m", "geoseg"]


def _timed(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([*GEOSEG, *args], check=True, capture_output=True)
    return time.perf_counter() - started


def _scene(path: Path, megapixels: float) -> Path:
    import numpy as np
    import rasterio
    from affine import Affine

    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16", "crs": "EPSG:32633"}
    profile |= {"transform": Affine(10, 0, 500_000, 0, -10, 5_800_000), "tiled": True, "compress": "deflate"}
    coarse = rng.integers(0, 4000, (4, side // 64 + 1, side // 64 + 1)).astype("uint16")
    data = np.kron(coarse, np.ones((64, 64), "uint16"))[:, :side, :side]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = work / "bundle"
        subprocess.run(
            [
                *GEOSEG,
                *[
                    "bundle",
                    "init",
                    "--arch",
                    "unet",
                    "--in-channels",
                    "4",
                    "--num-classes",
                    "6",
                    "--base-channels",
                    "16",
                ],
                "--out",
                str(bundle),
            ],
            check=True,
            capture_output=True,
        )
        for size in args.sizes:
            scene = _scene(work / f"s{size:g}.tif", size)
            common = ["predict", "--model", str(bundle), str(scene)]
            local = _timed(*common, "--output", str(work / f"local{size:g}"), "--in-process")
            pool = _timed(*common, "--output", str(work / f"ray{size:g}"), "--ray")
            classes = work / f"local{size:g}" / scene.name
            one = _timed("vectorize", str(classes), "--output", str(work / f"v1_{size:g}.gpkg"), "--workers", "1")
            two = _timed("vectorize", str(classes), "--output", str(work / f"v2_{size:g}.gpkg"), "--workers", "2")
            rows.append(
                (
                    f"predict {size:g} Mpx: Ray / in-process wall",
                    pool / local,
                    "report",
                    f"{pool:.1f} s / {local:.1f} s",
                )
            )
            rows.append(
                (f"vectorize {size:g} Mpx: Ray / in-process wall", two / one, "report", f"{two:.1f} s / {one:.1f} s")
            )
    print("\nratios above 1: the in-process path wins at that size")
    print_table(rows)


if __name__ == "__main__":
    main()
