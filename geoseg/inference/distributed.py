"""Ray orchestration of prediction: CPU reader tasks feed model actors, one per GPU (or CPU slice).

Readers are plain tasks, so decoding overlaps with the model and scales with cluster CPUs; their output
object refs go straight to an actor, which Ray resolves there (no detour through the driver). The driver
keeps a bounded number of batches in flight and feeds results to the scene's stitcher. Actors restart after
a crash and their tasks are retried (``max_restarts``/``max_task_retries``); the stitcher ignores duplicate
tiles, so a retried batch can never be counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ray

from geoseg.bundle import BundleSpec
from geoseg.inference.predictor import Predictor
from geoseg.inference.reader import Normalisation, read_tiles
from geoseg.inference.scene import BatchOutput, PredictOptions, predict_batch
from geoseg.io.raster import SceneInfo
from geoseg.tiling import Tile

READER_CPUS = 0.25  # readers mostly wait on I/O; small so they always fit beside CPU actors


@ray.remote(num_cpus=READER_CPUS)
def _read(
    scene: SceneInfo, tiles: Sequence[Tile], norm: Normalisation, options: PredictOptions, nodata: float | None
) -> Any:
    return read_tiles(scene, tiles, norm, options.pad_mode, nodata)


class _PredictActor:
    def __init__(self, spec_json: str, state_dict: dict[str, Any], threads: int) -> None:
        self.predictor = Predictor(BundleSpec.model_validate_json(spec_json), state_dict, threads=threads)

    def predict(self, batch: Any) -> BatchOutput:
        return predict_batch(self.predictor, batch)


class RayExecutor:
    """A pool of model actors sized to the cluster.

    An actor that dies (node lost, OOM kill) is replaced and its unfinished batches are resubmitted, up to
    ``max_restarts`` times in total; the stitcher drops duplicate tiles, so the output stays byte-identical.
    Recovery is done here rather than with Ray's ``max_restarts``/``max_task_retries`` so that the driver
    knows exactly which batches were lost, and restarts are bounded per job.

    Args:
        spec, state_dict: the bundle, shipped through the object store (workers need no access to its path).
        workers: number of actors; default one per GPU, else one per CPU (one torch thread each).
        max_in_flight: batches submitted but not yet stitched, per actor (bounds driver memory).
        threads_per_worker: torch threads per CPU actor; default the whole CPUs of its share.
    """

    def __init__(
        self,
        spec: BundleSpec,
        state_dict: dict[str, Any],
        options: PredictOptions,
        workers: int | None = None,
        max_in_flight: int = 2,
        max_restarts: int = 8,
        threads_per_worker: int | None = None,
    ) -> None:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        self.workers = workers or (gpus if gpus else max(1, int(cpus)))
        if gpus:
            self._actor_cls = ray.remote(num_gpus=1, num_cpus=1)(_PredictActor)
            self._threads = 1
        else:
            # Leave CPU for the reader tasks: actors holding every CPU starve them (deadlock). Threads are
            # whole CPUs; the small reader reserve does not cost an actor a thread.
            share = max(0.25, (cpus - 2 * READER_CPUS) / self.workers)
            self._actor_cls = ray.remote(num_cpus=share)(_PredictActor)
            self._threads = threads_per_worker or max(1, int(share + 2 * READER_CPUS / self.workers))
        self._spec_json = spec.model_dump_json()
        self._state_ref = ray.put({k: v.cpu() for k, v in state_dict.items()})
        self.actors = [self._start_actor() for _ in range(self.workers)]
        self.norm = Normalisation.from_spec(spec)
        self.nodata = spec.input_nodata
        self.options = options
        self.max_in_flight = max_in_flight * self.workers
        self.restarts_left = max_restarts
        self.restarts = 0

    def _start_actor(self) -> Any:
        return self._actor_cls.remote(self._spec_json, self._state_ref, self._threads)

    def _replace(self, slot: int) -> None:
        if self.restarts_left <= 0:
            raise RuntimeError("prediction actors kept dying; giving up (see the Ray logs)")
        self.restarts_left -= 1
        self.restarts += 1
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start_actor()

    def run(self, scene: SceneInfo, batches: Iterable[Sequence[Tile]]) -> Iterator[BatchOutput]:
        pending: dict[ray.ObjectRef, tuple[int, ray.ObjectRef]] = {}  # predict ref -> (actor slot, read ref)
        batch_iter = iter(batches)
        exhausted = False

        def submit(slot: int, read_ref: ray.ObjectRef) -> None:
            pending[self.actors[slot].predict.remote(read_ref)] = (slot, read_ref)

        while pending or not exhausted:
            while not exhausted and len(pending) < self.max_in_flight:
                tiles = next(batch_iter, None)
                if tiles is None:
                    exhausted = True
                    break
                load = [0] * len(self.actors)
                for slot, _ in pending.values():
                    load[slot] += 1
                submit(
                    min(range(len(load)), key=load.__getitem__),
                    _read.remote(scene, tiles, self.norm, self.options, self.nodata),
                )
            if not pending:
                break
            [ref], _ = ray.wait(list(pending), num_returns=1)
            slot, read_ref = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayActorError:
                lost = [(r, rr) for r, (s, rr) in pending.items() if s == slot]
                self._replace(slot)
                for r, _ in lost:
                    del pending[r]
                for rr in [read_ref, *(rr for _, rr in lost)]:
                    submit(slot, rr)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
