"""Training throughput: Ray Train with 2 workers vs 1 on this machine (DDP, gloo on CPU).

    .venv/bin/python benchmarks/train.py [--epochs 4] [--patches 512]

Trains the synthetic demo model twice, with 1 and with 2 workers (one CPU and one torch thread each), and
prints samples/s measured from the per-epoch times (the first epoch, which warms up, is left out).
Target: 2 workers / 1 worker >= 1.6.
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
from geoseg.config import load_config  # noqa: E402
from geoseg.synth import make_archive  # noqa: E402
from geoseg.train import train  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_archive(work / "synthetic", scenes=4, size=512, seed=0)
        with ray_session(num_cpus=2):
            one = samples_per_second(work, 1, args.epochs, args.patches)
            two = samples_per_second(work, 2, args.epochs, args.patches)
    print(f"\nU-Net base 12 depth 3, patches of 128 px, batch 8 per worker, {args.patches} patches/epoch")
    print_table([("T1 2 workers / 1 worker samples/s", two / one, ">= 1.6", f"{two:.1f} / {one:.1f} samples/s")])


if __name__ == "__main__":
    main()
