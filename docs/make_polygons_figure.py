"""Render docs/polygons.png: land-cover polygons over the Landsat image, as QGIS would draw them.

    .venv/bin/python docs/make_polygons_figure.py [--data ../shared/data]

Runs ``geoseg vectorize`` on the real NC land-cover raster with a 2 ha minimum mapping unit and hole filling
(a partition), then draws the polygons (fill from their ``color`` attribute, labels from ``class_name``) over a
Landsat 5-4-3 composite, from the output files alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.patches import Patch

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["developed", "agriculture", "herbaceous", "shrubland", "forest", "water", "sediment"]
COLORS = ["#d62728", "#e7ba52", "#bcbd22", "#8c6d31", "#2ca02c", "#1f77b4", "#c7c7c7"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "polygons.png")
    args = parser.parse_args()
    folder = args.data / "nc_landsat"
    with tempfile.TemporaryDirectory() as work:
        classes = Path(work) / "landcover.tif"
        with rasterio.open(folder / "strata.tif") as src:  # give the ids names and colours, as a bundle would
            profile = src.profile | {"dtype": "uint8", "nodata": 0}
            data = np.nan_to_num(src.read(1), nan=0).astype(np.uint8)
        with rasterio.open(classes, "w", **profile) as dst:
            dst.write(data, 1)
            dst.update_tags(**{f"class_{i}": name for i, name in enumerate(CLASSES, start=1)})
            dst.write_colormap(1, {i: (*bytes.fromhex(c[1:]), 255) for i, c in enumerate(COLORS, start=1)})
        polygons = Path(work) / "landcover.gpkg"
        cmd = [sys.executable, "-m", "geoseg", "vectorize", str(classes), "--output", str(polygons)]
        subprocess.run([*cmd, "--min-area", "20000", "--fill-holes", "20000", "--workers", "1"], check=True)
        frame = gpd.read_file(polygons, layer="landcover")
    with rasterio.open(folder / "landsat_multiband.tif") as src:
        rgb = src.read([5, 4, 3], masked=True).astype("float32")
        bounds = src.bounds
    low, high = np.percentile(rgb.compressed(), [2, 98])
    image = np.clip((rgb.filled(low) - low) / (high - low), 0, 1).transpose(1, 2, 0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6))
    extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
    for ax in (left, right):
        ax.imshow(image, extent=extent)
        ax.set_axis_off()
    frame.plot(ax=right, color=frame["color"], alpha=0.45, edgecolor="black", linewidth=0.25)
    left.set_title("Landsat 7, bands 5-4-3 (Raleigh NC, 28.5 m)")
    right.set_title(f"{len(frame)} land-cover polygons, 2 ha minimum mapping unit")
    right.legend(
        handles=[Patch(facecolor=c, edgecolor="black", label=n) for n, c in zip(CLASSES, COLORS, strict=True)],
        loc="lower left",
        fontsize=7,
        framealpha=0.85,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(args.out)


if __name__ == "__main__":
    main()
