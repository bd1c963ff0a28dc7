"""Run by tests/test_cluster.py in its own process: one scene predicted across a 3-node Ray cluster on this
machine (``ray.cluster_utils.Cluster``: head + 2 worker nodes), with a worker node removed mid-scene.

Usage: python tests/multinode_job.py SCENE BUNDLE OUT_TIF -> prints a JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Before Ray is imported: with it, Ray resolves 127.0.0.1 to itself instead of the host's public address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from geoseg.cluster import LOOPBACK, configure_ray_env


def main(scene_path: Path, bundle: Path, out_path: Path) -> None:
    configure_ray_env()
    Path(os.environ["RAY_TMPDIR"], "ray").mkdir(parents=True, exist_ok=True)
    import ray
    from ray.cluster_utils import Cluster

    from geoseg.bundle import load_bundle
    from geoseg.inference.distributed import RayExecutor
    from geoseg.inference.options import PredictOptions
    from geoseg.inference.scene import run_scenes
    from geoseg.io import open_scene

    # Fast failure detection: a removed node is declared dead within ~1 s instead of the default ~30 s.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200, "health_check_failure_threshold": 3}
    small = {"object_store_memory": 96 * 2**20, "node_ip_address": LOOPBACK}  # loopback only
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": health, **small},
    )
    workers = [cluster.add_node(num_cpus=2, **small) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        spec, model = load_bundle(bundle)
        scene = open_scene(scene_path)
        executor = RayExecutor(spec, model.state_dict())
        options = PredictOptions(tile=96, halo=8, overlap=8, block=64, batch_size=2).resolved(spec.geometry())
        nodes_before = executor.node_ids()
        worker_ids = {w.node_id for w in workers}
        total = scene.width * scene.height
        done = 0
        victim = None
        unfinished_at_removal = 0

        def remove_a_worker_node_part_way(n: int) -> None:
            """From a third of the scene on, remove the worker node with the most blocks still being computed.

            Chosen when it holds unfinished blocks, not at a fixed moment: with this tiny model a node's blocks are
            often all computed (their classes already with the driver) and its loss would then redo nothing, which
            is how a fixed-moment removal made this test fail now and then.
            """
            nonlocal done, victim, unfinished_at_removal
            done += n
            if victim is not None or done < total // 3:
                return
            unfinished = {node: k for node, k in executor.unfinished_by_node().items() if node in worker_ids}
            node = max(unfinished, key=unfinished.__getitem__, default=None)
            if node is not None and unfinished[node] >= 2:  # more than one: a block may finish as the node goes
                unfinished_at_removal = unfinished[node]
                victim = next(w for w in workers if w.node_id == node)
                cluster.remove_node(victim, allow_graceful=False)

        try:
            [(_, outcome)] = list(
                run_scenes([("n", scene, out_path)], spec, executor, options, progress=remove_a_worker_node_part_way)
            )
            if isinstance(outcome, Exception):
                raise outcome
            report = outcome.finish()
            nodes_after = executor.node_ids()
        finally:
            executor.shutdown()
        result = {
            "tiles": report.tiles,
            "tiles_run": report.tiles_run,
            "actors": executor.workers,
            "worker_nodes_used_before": len(nodes_before & worker_ids),
            "victim_removed": victim is not None
            and victim.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]},
            "victim_used_after": victim is not None and victim.node_id in nodes_after,
            "actor_deaths": executor.restarts,
            "blocks_redone": executor.blocks_redone,
            "unfinished_at_removal": unfinished_at_removal,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
