"""Ray orchestration of prediction: CPU reader tasks feed model actors, one per GPU (or CPU slice).

Readers are plain tasks, so decoding overlaps with the model and scales with cluster CPUs; their output
object refs go straight to an actor, which Ray resolves there (no detour through the driver). The driver
keeps a bounded number of batches in flight and feeds results to the scene's stitcher. Actors restart after
a crash and their tasks are retried (``max_restarts``/``max_task_retries``); the stitcher ignores duplicate
tiles, so a retried batch can never be counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray

from geoseg.inference.reader import Normalisation, read_tiles
from geoseg.inference.scene import BatchOutput, PredictOptions, WorkItem, predict_batch
from geoseg.io.raster import SceneInfo
from geoseg.tiling import Tile

if TYPE_CHECKING:
    from geoseg.bundle import BundleSpec

READER_CPUS = 0.25  # readers mostly wait on I/O; small so they always fit beside CPU actors


@ray.remote(num_cpus=READER_CPUS)
def _read(
    scene: SceneInfo, tiles: Sequence[Tile], norm: Normalisation, options: PredictOptions, nodata: float | None
) -> Any:
    return read_tiles(scene, tiles, norm, options.pad_mode, nodata)


def cpu_actor_share(node_cpus: Sequence[float], workers: int) -> float:
    """The largest CPU share per model actor that still places ``workers`` actors on these nodes.

    Every node keeps room for two reader tasks beside its actors (actors holding every CPU starve the readers:
    deadlock), and no actor is sized to span nodes, which Ray could never place.
    """
    room = [c - 2 * READER_CPUS for c in node_cpus if c - 2 * READER_CPUS > 0]
    shares = sorted({r / k for r in room for k in range(1, workers + 1)}, reverse=True)
    for share in shares:
        if actor_capacity(node_cpus, share) >= workers:
            return share
    return READER_CPUS  # more actors than the cluster holds: the smallest share; Ray queues the rest


def actor_capacity(node_cpus: Sequence[float], share: float) -> int:
    """How many actors of ``share`` CPUs fit on these nodes beside their reader room."""
    return sum(int((c - 2 * READER_CPUS) / share + 1e-9) for c in node_cpus if c - 2 * READER_CPUS > 0)


def _alive_node_resources(key: str) -> list[float]:
    return [float(n["Resources"].get(key, 0)) for n in ray.nodes() if n.get("Alive")]


class _PredictActor:
    def __init__(self, spec_json: str, state_dict: dict[str, Any], threads: int) -> None:
        # Imported here, not at module level: reader tasks import this module too, and a reader process that
        # Ray (re)starts would otherwise spend seconds of CPU importing torch, on the cores the model needs.
        from geoseg.bundle import BundleSpec
        from geoseg.inference.predictor import Predictor

        self.predictor = Predictor(BundleSpec.model_validate_json(spec_json), state_dict, threads=threads)

    def predict(self, batch: Any) -> BatchOutput:
        return predict_batch(self.predictor, batch)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


class RayExecutor:
    """A pool of model actors sized to the cluster.

    An actor that dies (node lost, OOM kill) is replaced while the live cluster has room for it, else its
    slot is dropped and the pool shrinks; either way its unfinished batches are read again and resubmitted,
    up to ``max_restarts`` deaths per job. The stitcher drops duplicate tiles, so the output stays
    byte-identical. Recovery is done here rather than with Ray's ``max_restarts``/``max_task_retries`` so
    that the driver knows exactly which batches were lost, restarts are bounded per job, and a pool never
    waits on a replacement that no node can hold.

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
        gpus = int(sum(_alive_node_resources("GPU")))
        node_cpus = _alive_node_resources("CPU")
        self.workers = workers or (gpus if gpus else max(1, int(sum(node_cpus))))
        self._gpu = bool(gpus)
        if gpus:
            self._share = 1.0
            self._actor_cls = ray.remote(num_gpus=1, num_cpus=1)(_PredictActor)
            self._threads = 1
        else:
            self._share = cpu_actor_share(node_cpus, self.workers)
            self._actor_cls = ray.remote(num_cpus=self._share)(_PredictActor)
            # Threads are whole CPUs; the small reader reserve does not cost an actor a thread.
            self._threads = threads_per_worker or max(1, int(self._share + 2 * READER_CPUS / self.workers))
        self._spec_json = spec.model_dump_json()
        self._state_ref = ray.put({k: v.cpu() for k, v in state_dict.items()})
        self.actors: dict[int, Any] = {slot: self._start_actor() for slot in range(self.workers)}
        self._next_slot = self.workers
        self.norm = Normalisation.from_spec(spec)
        self.nodata = spec.input_nodata
        self.options = options
        self.max_in_flight = max_in_flight
        self.restarts_left = max_restarts
        self.restarts = 0

    def _start_actor(self) -> Any:
        return self._actor_cls.remote(self._spec_json, self._state_ref, self._threads)

    def _capacity(self) -> int:
        if self._gpu:
            return int(sum(_alive_node_resources("GPU")))
        return actor_capacity(_alive_node_resources("CPU"), self._share)

    def _lose(self, slot: int) -> None:
        """Drop a dead actor; start a replacement when a live node can hold it (or when none is left)."""
        if self.restarts_left <= 0:
            raise RuntimeError("prediction actors kept dying; giving up (see the Ray logs)")
        self.restarts_left -= 1
        self.restarts += 1
        ray.kill(self.actors.pop(slot), no_restart=True)
        if not self.actors or len(self.actors) < min(self.workers, self._capacity()):
            self.actors[self._next_slot] = self._start_actor()
            self._next_slot += 1

    @property
    def parallelism(self) -> int:
        return len(self.actors)

    def node_ids(self) -> set[str]:
        """The nodes the live actors run on (for reports and tests)."""
        return set(ray.get([actor.node_id.remote() for actor in self.actors.values()]))

    def run(self, work: Iterable[WorkItem]) -> Iterator[tuple[WorkItem, BatchOutput | Exception]]:
        pending: dict[ray.ObjectRef, tuple[int, WorkItem]] = {}  # predict ref -> (actor slot, item)
        work_iter = iter(work)

        def submit(item: WorkItem) -> None:
            load = dict.fromkeys(self.actors, 0)
            for slot, _ in pending.values():
                load[slot] += 1
            slot = min(load, key=load.__getitem__)
            read_ref = _read.remote(item.scene, item.tiles, self.norm, self.options, self.nodata)
            pending[self.actors[slot].predict.remote(read_ref)] = (slot, item)

        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < self.max_in_flight * len(self.actors):
                    item = next(work_iter, None)
                    if item is None:
                        exhausted = True
                        break
                    submit(item)
                if not pending:
                    break
                [ref], _ = ray.wait(list(pending), num_returns=1)
                slot, item = pending.pop(ref)
                try:
                    output: BatchOutput | Exception = ray.get(ref)
                except ray.exceptions.RayActorError:
                    lost = [item, *(pending.pop(r)[1] for r in [r for r, (s, _) in pending.items() if s == slot])]
                    self._lose(slot)
                    for batch in lost:  # read again: the old read result may have lived on a lost node
                        submit(batch)
                    continue
                except ray.exceptions.ObjectLostError:  # a read result lost with its node: read it again
                    submit(item)
                    continue
                except ray.exceptions.RayError as exc:  # the reader or the model failed on this batch
                    output = exc
                yield item, output
        finally:  # the consumer stopped early: drop the batches still queued on the actors
            for ref in pending:
                ray.cancel(ref)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor)
