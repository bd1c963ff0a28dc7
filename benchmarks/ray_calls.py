"""What a block costs in Ray's calls alone: the reader -> model actor -> driver chain of the Ray executor, with
Ray's core calls (what geoseg runs) and with a Ray Compiled Graph (what it could run), same payloads.

    .venv/bin/python benchmarks/ray_calls.py [--blocks 200] [--sides 960 2112] [--repeats 3]
    .venv/bin/python benchmarks/ray_calls.py --store [--blocks 100] [--repeats 2]

Why: H1' (benchmarks/predict.py --h1) charges every block ~16 ms of CPU across the driver, Ray's processes, the
reader and the model actor, beside the decode and the model. This isolates that part: a reader actor returns a
fresh ``BlockPixels`` of a block's read window (4-band uint16, ``side``² px: 960 = a CPU block of 896 px plus its
halo, 2112 = a GPU node's 2048-px block), a model actor takes it and returns the block's uint8 classes, the
driver keeps two blocks in flight (as the executor does per CPU model actor). No decode and no model: what is
left is Ray's per-call work, the object store's copy of the pixels and the (de)serialisation. Printed per block:
the CPU of this process's whole tree (driver, raylet, GCS, actors) per block, minus what the tree burns idle over
the same wall time (Ray's polling, measured first), and the ratio compiled / core, interleaved repeats.

With ``--store``: the same chain (core calls, 2112² blocks) in a fresh local Ray with Ray's default object store
(30 % of this machine's memory) and with the one geoseg starts (:func:`geoseg.cluster.local_object_store_bytes`),
alternating: the whole tree's PSS after ``--blocks`` blocks (the store's pages a process touched stay resident)
and the reader's page faults and system CPU per block.

A Compiled Graph runs the same actors' methods over pre-allocated shared-memory channels instead of one task
submission, one object and its reference counting per call (Ray's docs: ~1 ms of system overhead per call vs
< 50 us). Its limits are why geoseg does not run one yet: the graph is static (each execution runs every branch,
so unequal blocks wait on one another across actors), an actor takes part in one graph at a time, and a dead
actor or node tears the graph down rather than being restarted and its blocks redone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.predict import _tree_cpu  # noqa: E402
from benchmarks.report import print_table  # noqa: E402
from geoseg.cluster import ray_session  # noqa: E402
from geoseg.inference.reader import BlockPixels  # noqa: E402

IN_FLIGHT = 2  # blocks in flight, as for one CPU model actor (distributed.IN_FLIGHT_CPU)
HALO = 32


class _Reader:
    def __init__(self, side: int) -> None:
        self.raw = np.random.default_rng(0).integers(1, 3000, (4, side, side), dtype=np.uint16)

    def read(self, index: int) -> BlockPixels:
        return BlockPixels(self.raw.copy(), None)  # a new array per block, as a decode makes


class _Model:
    def run(self, pixels: BlockPixels) -> np.ndarray:
        return (pixels.data[0, HALO:-HALO, HALO:-HALO] & 3).astype(np.uint8)


def tree_cpu() -> float:
    return sum(cpu for cpu, _ in _tree_cpu().values())


def stream(run_one: Callable[[int], Any], blocks: int) -> None:
    """``blocks`` blocks through ``run_one`` (a call of the chain), :data:`IN_FLIGHT` at a time."""
    import ray

    pending = []
    for index in range(blocks):
        pending.append(run_one(index))
        if len(pending) >= IN_FLIGHT:
            ray.get(pending.pop(0))
    ray.get(pending)


def core_chain(reader: Any, model: Any) -> Callable[[int], Any]:
    return lambda index: model.run.remote(reader.read.remote(index))


def per_block(run_one: Callable[[int], Any], blocks: int, idle_rate: float) -> float:
    """ms of the tree's CPU per block beyond its idle burn, over ``blocks`` blocks with two in flight."""
    started_cpu, started = tree_cpu(), time.perf_counter()
    stream(run_one, blocks)
    wall = time.perf_counter() - started
    return (tree_cpu() - started_cpu - idle_rate * wall) / blocks * 1e3


def _reader_faults(pids: set[int]) -> tuple[int, float]:
    """The reader actor's page faults and system CPU-s so far (``minflt`` and ``stime`` of /proc/PID/stat)."""
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if command.startswith(b"ray::_Reader"):
            return int(fields[7]), int(fields[12]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError("no reader actor in this process's tree")


def store_growth(blocks: int, store_bytes: int) -> tuple[float, float, float]:
    """PSS of the whole tree after ``blocks`` 2112² blocks, and the reader's page faults and system ms per block,
    in a fresh local Ray with ``store_bytes`` of object store."""
    import ray

    from benchmarks.predict import _descendants, _pss

    side = 2112
    with ray_session(num_cpus=2, object_store_memory=store_bytes):
        reader = ray.remote(num_cpus=0)(_Reader).remote(side)
        model = ray.remote(num_cpus=0)(_Model).remote()
        ray.get(model.run.remote(reader.read.remote(0)))
        before = _reader_faults(_descendants(os.getpid()))
        stream(core_chain(reader, model), blocks)
        tree = _descendants(os.getpid())
        pss, after = sum(_pss(pid) for pid in tree), _reader_faults(tree)
    return pss, (after[0] - before[0]) / blocks, (after[1] - before[1]) / blocks * 1e3


def store_table(args: argparse.Namespace) -> None:
    from geoseg.cluster import local_object_store_bytes, ray_default_object_store_bytes

    ours, rays = local_object_store_bytes(2, 0), ray_default_object_store_bytes()
    stores = {"Ray's default": rays, "geoseg's": ours}
    runs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for _ in range(args.repeats):
        for name, size in stores.items():
            runs[name].append(store_growth(args.blocks, size))
    med = statistics.median
    default, sized = runs["Ray's default"], runs["geoseg's"]
    ratios = [s[0] / d[0] for s, d in zip(sized, default, strict=True)]
    rows = [
        (
            f"tree PSS after {args.blocks} blocks of 2112^2 x 4 uint16: geoseg's store / Ray's default",
            med(ratios),
            "(info)",
            f"{med(s[0] for s in sized):.0f} vs {med(d[0] for d in default):.0f} MiB "
            f"(stores of {ours >> 20} and {rays >> 20} MiB); "
            f"reader faults a block {med(s[1] for s in sized):.0f} vs {med(d[1] for d in default):.0f}, "
            f"system CPU {med(s[2] for s in sized):.1f} vs {med(d[2] for d in default):.1f} ms a block",
        )
    ]
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--sides", type=int, nargs="+", default=[960, 2112])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", action="store_true", help="the object store's growth instead (see above)")
    args = parser.parse_args()
    if args.store:
        store_table(args)
        return

    import ray
    from ray.dag import InputNode

    ms: dict[tuple[int, str], list[float]] = defaultdict(list)
    with ray_session(num_cpus=2):
        started_cpu, started = tree_cpu(), time.perf_counter()
        time.sleep(3)
        idle_rate = (tree_cpu() - started_cpu) / (time.perf_counter() - started)
        for side in args.sides:
            reader = ray.remote(num_cpus=0)(_Reader).remote(side)
            model = ray.remote(num_cpus=0)(_Model).remote()
            ray.get(model.run.remote(reader.read.remote(0)))  # both started, first-call costs paid
            with InputNode() as block:
                graph = model.run.bind(reader.read.bind(block))
            compiled = graph.experimental_compile(
                _buffer_size_bytes=4 * side * side * 2 + 2**20, _max_inflight_executions=IN_FLIGHT + 1
            )
            try:
                ray.get(compiled.execute(0))
                for _ in range(args.repeats):
                    ms[(side, "core")].append(per_block(core_chain(reader, model), args.blocks, idle_rate))
                    ms[(side, "compiled")].append(per_block(compiled.execute, args.blocks, idle_rate))
            finally:
                compiled.teardown(kill_actors=True)  # a plain teardown can wait on the actors' loops forever
    rows = []
    for side in args.sides:
        core, graph_ms = ms[(side, "core")], ms[(side, "compiled")]
        ratios = [g / c for g, c in zip(graph_ms, core, strict=True)]
        rows.append(
            (
                f"Ray calls per block, {side}^2 x 4 uint16: compiled graph / core calls",
                statistics.median(ratios),
                "(info)",
                f"{statistics.median(graph_ms):.1f} vs {statistics.median(core):.1f} ms of CPU a block "
                f"(core {min(core):.1f}-{max(core):.1f}, compiled {min(graph_ms):.1f}-{max(graph_ms):.1f}); "
                f"ratios {min(ratios):.2f}-{max(ratios):.2f}; idle burn {idle_rate:.3f} CPU-s/s subtracted",
            )
        )
    print_table(rows)


if __name__ == "__main__":
    main()
