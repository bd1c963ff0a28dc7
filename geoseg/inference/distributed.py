"""Ray orchestration of prediction: reader actors decode blocks, model actors predict and blend them.

Where the pixels go. Every node that holds model actors also holds reader actors. A reader reads the blocks of
its stripes (runs of block rows) in raster order, keeping the file open and GDAL's block cache warm, so each
source block is decoded once; on GPU nodes GDAL's own threads decode one window's source blocks in parallel
(``GDAL_NUM_THREADS``), on CPU nodes, whose cores the model actors hold, one thread does. Its raw block goes
into the node's object store and straight to a model actor on the same node (no network hop, no detour through
the driver), which normalises, predicts, blends and reduces it to uint8 (:mod:`geoseg.inference.worker`). Which
block goes next, to which reader and which actor, is :mod:`geoseg.inference.placement`'s choice: the least
loaded node takes the next block of a stripe its readers own, looking ahead in the stream, so a full window
holds the same number of blocks on every model actor of the cluster and each stripe keeps one reader. The
driver receives 1 byte per pixel and writes it; a finished scene's COG is built off the driver by the pool's
publishing processes on its node (:mod:`geoseg.inference.publishing`), where the staging files are. Small
one-block scenes travel several to a call (:func:`geoseg.inference.executor.grouped`): Ray's fixed cost per
call would otherwise be a large part of theirs.

Recovery is done here rather than with Ray's ``max_restarts``/``max_task_retries``, so that the driver knows
exactly which blocks were lost, restarts are bounded per job, and a pool never waits on a replacement that no
node can hold: a dead model actor is replaced while the live nodes have room for it (else the pool shrinks);
a dead reader is replaced on its node if the node lives (else its stripes move to the other readers); every
block they held is read and predicted again. The driver drops duplicate blocks, so the output stays
byte-identical.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from geoseg.cluster import MODEL_PROCESS_ENV
from geoseg.errors import portable
from geoseg.inference.executor import WorkGroup, WorkItem, grouped
from geoseg.inference.options import PredictOptions
from geoseg.inference.placement import Placement
from geoseg.inference.publishing import PublishingProcess
from geoseg.inference.reader import BlockPixels, read_block
from geoseg.inference.result import BlockResult
from geoseg.inference.tiling import Block, BlockGrid
from geoseg.io.normalisation import Normalisation
from geoseg.io.raster import PadMode, SceneInfo

if TYPE_CHECKING:
    from geoseg.bundle import BundleSpec

READER_CPUS = 0.5  # the room every CPU node keeps beside its model actors: one reader (which waits on I/O a lot)
GPU_READER_CPUS = 4  # on GPU nodes, one reader per 4 free CPUs, each decoding with 4 GDAL threads
IN_FLIGHT_CPU, IN_FLIGHT_GPU = 2, 6  # blocks submitted per model actor: enough reads ahead to keep it busy
SHARED_SCENES = 64  # scenes whose header and grid are kept in the object store for the calls of a stream


Unit = WorkItem | WorkGroup  # what one read call and one predict call carry


def _items(unit: Unit) -> tuple[WorkItem, ...]:
    return unit.items if isinstance(unit, WorkGroup) else (unit,)


class _Reader:
    def __init__(self, norm: Normalisation, threads: int) -> None:
        os.environ["GDAL_NUM_THREADS"] = str(threads)  # GDAL decodes the source blocks of a window in parallel
        self.norm = norm

    def read(self, scene: SceneInfo, block: Block, pad_mode: PadMode) -> BlockPixels:
        return read_block(scene, block, self.norm, pad_mode)

    def read_group(self, blocks: list[tuple[SceneInfo, Block]], pad_mode: PadMode) -> list[BlockPixels | Exception]:
        out: list[BlockPixels | Exception] = []
        for scene, block in blocks:
            try:
                out.append(read_block(scene, block, self.norm, pad_mode))
            except Exception as exc:  # this scene's: the group's other scenes go on
                out.append(portable(exc))  # one scene's error must not break the group's reply
        return out

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def gdal_threads(self) -> str:
        return os.environ["GDAL_NUM_THREADS"]


class _Model:
    def __init__(self, spec_json: str, state_dict: dict[str, Any], threads: int, compile: bool) -> None:
        # Imported here, not at module level: reader processes import this module too, and a reader that Ray
        # (re)starts would otherwise spend seconds of CPU importing torch, on the cores the model needs.
        from geoseg.bundle import BundleSpec
        from geoseg.inference.worker import ModelWorker

        spec = BundleSpec.model_validate_json(spec_json)
        self.worker = ModelWorker(spec, state_dict, threads=threads, compile=compile)

    def run(self, blocks: BlockGrid, block: Block, pixels: BlockPixels, options: PredictOptions) -> BlockResult:
        return self.worker.run(blocks, block, pixels, options)

    def run_group(
        self, blocks: list[tuple[BlockGrid, Block]], pixels: list[BlockPixels | Exception], options: PredictOptions
    ) -> list[BlockResult | Exception]:
        out: list[BlockResult | Exception] = []
        for (grid, block), raw in zip(blocks, pixels, strict=True):
            if isinstance(raw, Exception):  # its read failed
                out.append(raw)
                continue
            try:
                out.append(self.worker.run(grid, block, raw, options))
            except Exception as exc:
                out.append(portable(exc))  # one scene's error must not break the group's reply
        return out

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def cpu_actor_share(node_cpus: Sequence[float], workers: int) -> float:
    """The largest CPU share per model actor that still places ``workers`` actors on these nodes.

    Every node keeps room for its reader beside its actors (actors holding every CPU starve the reader:
    deadlock), and no actor is sized to span nodes, which Ray could never place.
    """
    room = [c - READER_CPUS for c in node_cpus if c - READER_CPUS > 0]
    shares = sorted({r / k for r in room for k in range(1, workers + 1)}, reverse=True)
    for share in shares:
        if actor_capacity(node_cpus, share) >= workers:
            return share
    return READER_CPUS / 2  # more actors than the cluster holds: the smallest share; Ray queues the rest


def actor_capacity(node_cpus: Sequence[float], share: float) -> int:
    """How many actors of ``share`` CPUs fit on these nodes beside their reader room."""
    return sum(int((c - READER_CPUS) / share + 1e-9) for c in node_cpus if c - READER_CPUS > 0)


def _alive_nodes() -> dict[str, dict[str, float]]:
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n.get("Alive")}


def _on(node: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node, soft=True)


class RayExecutor:
    """A pool of model actors sized to the cluster, with reader actors on the same nodes.

    Args:
        spec, state_dict: the bundle, shipped through the object store (workers need no access to its path).
        workers: number of model actors; default one per GPU, else one per CPU (one torch thread each).
        max_restarts: actor deaths survived per job.
        threads_per_worker: torch threads per CPU actor; default the whole CPUs of its share.
        compile: ``torch.compile`` the model in each actor.
    """

    def __init__(
        self,
        spec: BundleSpec,
        state_dict: dict[str, Any],
        workers: int | None = None,
        max_restarts: int = 8,
        threads_per_worker: int | None = None,
        compile: bool = False,
    ) -> None:
        nodes = _alive_nodes()
        gpus = int(sum(r.get("GPU", 0) for r in nodes.values()))
        node_cpus = [r.get("CPU", 0.0) for r in nodes.values()]
        self.workers = workers or (gpus if gpus else max(1, int(sum(node_cpus))))
        self._gpu = bool(gpus)
        if gpus:
            self._share = 1.0
            self._actor_cls = ray.remote(num_gpus=1, num_cpus=1)(_Model)
            self._threads = 1
        else:
            self._share = cpu_actor_share(node_cpus, self.workers)
            self._actor_cls = ray.remote(num_cpus=self._share)(_Model)
            # Threads are whole CPUs; the reader's small reserve does not cost an actor a thread.
            self._threads = threads_per_worker or max(1, int(self._share + READER_CPUS / self.workers))
        self._compile = compile
        # The pool's publishing processes, on the driver's node where the staging files are; kept with the pool,
        # so a warm pool's jobs do not start them again (one-scene jobs: ~0.7 CPU-s of imports each)
        self.publishing = PublishingProcess()
        self._spec_json = spec.model_dump_json()
        self._state_ref = ray.put({k: v.cpu() for k, v in state_dict.items()})
        self.norm = spec.normalisation()
        self.actors: dict[int, Any] = {slot: self._start_actor() for slot in range(self.workers)}
        self._next_slot = self.workers
        self._actor_node = dict(
            zip(self.actors, ray.get([a.node_id.remote() for a in self.actors.values()]), strict=True)
        )
        self.reader_actors: dict[int, tuple[Any, str]] = {}
        self._next_reader = 0
        for node in sorted(set(self._actor_node.values())):
            for _ in range(self._readers_for(nodes.get(node, {}))):
                self._start_reader(node)
        self.max_in_flight = IN_FLIGHT_GPU if self._gpu else IN_FLIGHT_CPU
        self.restarts_left = max_restarts
        self.restarts = 0
        self.blocks_redone = 0  # blocks read and predicted again after an actor, a node or an object was lost
        self._pending: dict[ray.ObjectRef, tuple[int, int, Unit]] = {}  # the running stream's blocks in flight
        self._placement: Placement[Unit] = Placement(self.max_in_flight)
        self._sync_placement()

    # -- pool membership ---------------------------------------------------------------------------------
    def _start_actor(self) -> Any:
        env = {"env_vars": MODEL_PROCESS_ENV}
        return self._actor_cls.options(runtime_env=env).remote(
            self._spec_json, self._state_ref, self._threads, self._compile
        )

    def _readers_for(self, resources: dict[str, float]) -> int:
        if not self._gpu:
            return 1
        free = resources.get("CPU", 0.0) - resources.get("GPU", 0.0)  # each GPU actor holds one CPU
        return max(1, int(free // GPU_READER_CPUS))

    def _start_reader(self, node: str) -> None:
        cpus = GPU_READER_CPUS if self._gpu else READER_CPUS
        # A CPU node's model actors hold all of its cores, so a reader decodes on one thread there: GDAL's
        # threads would only take turns with the actors, and its thread pool cost +20 % of the decode's CPU
        # (8192² 4-band uint16 DEFLATE, 1.6 -> 2.0 CPU-s with 2 threads, measured). One thread decodes 40 Mpx/s
        # here, far more than a CPU node's model actors take.
        threads = GPU_READER_CPUS if self._gpu else 1
        actor = ray.remote(num_cpus=cpus)(_Reader).options(scheduling_strategy=_on(node)).remote(self.norm, threads)
        self.reader_actors[self._next_reader] = (actor, node)
        self._next_reader += 1

    def _capacity(self) -> int:
        nodes = _alive_nodes()
        if self._gpu:
            return int(sum(r.get("GPU", 0) for r in nodes.values()))
        return actor_capacity([r.get("CPU", 0.0) for r in nodes.values()], self._share)

    def _count_death(self) -> None:
        if self.restarts_left <= 0:
            raise RuntimeError("prediction actors kept dying; giving up (see the Ray logs)")
        self.restarts_left -= 1
        self.restarts += 1

    def _sync_placement(self) -> None:
        readers = {index: node for index, (_, node) in self.reader_actors.items()}
        self._placement.set_pool({s: self._actor_node[s] for s in self.actors if s in self._actor_node}, readers)

    def _lose_model(self, slot: int) -> None:
        """Drop a dead model actor; start a replacement when a live node can hold it (or when none is left)."""
        self._count_death()
        ray.kill(self.actors.pop(slot), no_restart=True)
        self._actor_node.pop(slot, None)
        if not self.actors or len(self.actors) < min(self.workers, self._capacity()):
            actor = self._start_actor()
            self.actors[self._next_slot] = actor
            self._actor_node[self._next_slot] = ray.get(actor.node_id.remote())
            self._next_slot += 1
            node = self._actor_node[self._next_slot - 1]
            if not any(n == node for _, n in self.reader_actors.values()):
                self._start_reader(node)
        self._sync_placement()

    def _lose_reader(self, index: int) -> None:
        """Drop a dead reader; replace it on its node if that node is alive, and keep at least one reader."""
        self._count_death()
        actor, node = self.reader_actors.pop(index)
        ray.kill(actor, no_restart=True)
        alive = _alive_nodes()
        if node in alive:
            self._start_reader(node)
        elif not self.reader_actors:
            target = next(iter(self._actor_node.values()), next(iter(alive)))
            self._start_reader(target)
        self._sync_placement()

    @property
    def parallelism(self) -> int:
        return len(self.actors)

    @property
    def readers(self) -> int:
        return len(self.reader_actors)

    @property
    def gpu(self) -> bool:
        return self._gpu

    def node_ids(self) -> set[str]:
        """The nodes the live model actors run on (for reports and tests)."""
        nodes = set()
        for actor in self.actors.values():
            try:
                nodes.add(ray.get(actor.node_id.remote()))
            except ray.exceptions.RayActorError:  # died since its last block; it holds no work
                continue
        return nodes

    def unfinished_by_node(self) -> Counter[str]:
        """Blocks submitted and not yet computed, per node of the model actor that holds them.

        What losing a node would cost right now: a finished block's classes are already with the driver (small
        results are returned inline), an unfinished one is read and predicted again elsewhere.
        """
        refs = list(self._pending)
        if not refs:
            return Counter()
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        finished = set(done)
        return Counter(
            self._actor_node.get(slot, "?") for ref, (slot, _, _) in self._pending.items() if ref not in finished
        )

    # -- the stream ----------------------------------------------------------------------------------------
    def run(
        self, work: Iterable[WorkItem], options: PredictOptions
    ) -> Iterator[tuple[WorkItem, BlockResult | Exception]]:
        pending: dict[ray.ObjectRef, tuple[int, int, Unit]] = {}  # predict ref -> (model slot, reader, unit)
        self._pending = pending
        self._placement = placement = Placement[Unit](self.max_in_flight)
        self._sync_placement()
        # A scene's header and grid, and the options, go to the object store once, not pickled into every call
        # (the CRS alone is a WKT string): the driver's CPU per block stays near Ray's own cost of two calls.
        shared: OrderedDict[str, tuple[ray.ObjectRef, ray.ObjectRef]] = OrderedDict()
        options_ref = ray.put(options)
        work_iter = grouped(work)  # an archive of small scenes: several scenes a call

        def refs(item: WorkItem) -> tuple[ray.ObjectRef | SceneInfo, ray.ObjectRef | BlockGrid]:
            if len(item.blocks) == 1:  # used by one read and one call: inline is one copy, not a store object
                return item.scene, item.blocks
            if item.key not in shared:
                shared[item.key] = (ray.put(item.scene), ray.put(item.blocks))
                while len(shared) > SHARED_SCENES:
                    shared.popitem(last=False)
            shared.move_to_end(item.key)
            return shared[item.key]

        def submit(unit: Unit, reader: int, slot: int) -> None:
            reader_actor, model_actor = self.reader_actors[reader][0], self.actors[slot]
            if isinstance(unit, WorkGroup):
                reads = [(i.scene, i.block) for i in unit.items]
                read_ref = reader_actor.read_group.remote(reads, options.pad_mode)
                blocks = [(i.blocks, i.block) for i in unit.items]
                ref = model_actor.run_group.remote(blocks, read_ref, options_ref)
            else:
                scene_ref, blocks_ref = refs(unit)
                read_ref = reader_actor.read.remote(scene_ref, unit.block, options.pad_mode)
                ref = model_actor.run.remote(blocks_ref, unit.block, read_ref, options_ref)
            pending[ref] = (slot, reader, unit)

        def take(ref: ray.ObjectRef) -> tuple[int, int, Unit]:
            slot, reader, unit = pending.pop(ref)
            placement.release(reader, slot)
            return slot, reader, unit

        def pull() -> Unit | None:
            return next(work_iter, None)

        try:
            while True:
                while len(pending) < self.max_in_flight * max(1, len(self.actors)):
                    choice = placement.next(pull)  # the next block, its reader and a model actor on that node
                    if choice is None:
                        break
                    submit(*choice)
                if not pending:
                    break
                [ref], _ = ray.wait(list(pending), num_returns=1, fetch_local=False)
                slot, _, unit = take(ref)
                items = _items(unit)
                try:
                    got = ray.get(ref)
                    outputs: list[BlockResult | Exception] = got if isinstance(unit, WorkGroup) else [got]
                except ray.exceptions.RayActorError as exc:
                    lost = [unit, *(take(r)[2] for r in self._recover(exc, slot, pending))]
                    self.blocks_redone += sum(len(_items(u)) for u in lost)
                    placement.requeue(lost)  # read again: the old read result may have lived on a lost node
                    continue
                except ray.exceptions.ObjectLostError:  # a read result lost with its node: read it again
                    self.blocks_redone += len(items)
                    placement.requeue([unit])
                    continue
                except ray.exceptions.RayError as exc:  # the reader or the model failed on this block
                    outputs = [exc] * len(items)
                    placement.drop(unit.key)  # its scene fails: send none of its queued blocks
                yield from zip(items, outputs, strict=True)
        finally:  # the consumer stopped early: drop the blocks still queued
            for ref in pending:
                ray.cancel(ref)
            self._pending = {}

    def _recover(
        self,
        exc: ray.exceptions.RayActorError,
        slot: int,
        pending: dict[ray.ObjectRef, tuple[int, int, Unit]],
    ) -> list[ray.ObjectRef]:
        """After an actor died on a block of model ``slot``: replace it and return the calls still in flight
        that it (or its node) took down, whose blocks are read and predicted again.

        When the actor's node is gone, every actor on that node is gone with it: they are all dropped now, with
        their blocks, instead of waiting for each to fail (a dead model actor that only ever got blocks from the
        dead node's reader would otherwise never be noticed and would stay in the pool).
        """
        dead = getattr(exc, "actor_id", None)
        reader_ids = {i: a._actor_id.hex() for i, (a, _) in self.reader_actors.items()}
        dead_reader = next((i for i, h in reader_ids.items() if h == dead), None) if dead is not None else None
        node = self.reader_actors[dead_reader][1] if dead_reader is not None else self._actor_node.get(slot)
        if node is not None and node not in _alive_nodes():  # models first: a lost reader is replaced near one
            models = [s for s, n in self._actor_node.items() if n == node and s in self.actors]
            readers = [i for i, (_, n) in self.reader_actors.items() if n == node]
        else:
            models = [] if dead_reader is not None or slot not in self.actors else [slot]
            readers = [] if dead_reader is None else [dead_reader]
        lost = [r for r, (s, rd, _) in pending.items() if s in models or rd in readers]
        for other in models:
            self._lose_model(other)
        for index in readers:
            self._lose_reader(index)
        return lost

    def shutdown(self) -> None:
        self.publishing.close()
        for actor in self.actors.values():
            ray.kill(actor)
        for actor, _ in self.reader_actors.values():
            ray.kill(actor)
