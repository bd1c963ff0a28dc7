"""Connecting to Ray: an existing cluster (--ray-address / RAY_ADDRESS) or an embedded local one."""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from geoseg.stop import on_sigterm_interrupt

# Ray kills a task worker idle for 1 s when workers outnumber CPUs, which model actors always make true; the
# reader processes were then restarted at every scene, re-importing numpy, rasterio and geoseg (~0.5 s of CPU
# each, measured) on the cores the model needs. A minute covers the gap between scenes. The Docker images set
# the same variable, so cluster nodes started from them behave alike.
WORKER_KEEPALIVE_ENV = {"RAY_idle_worker_killing_time_threshold_ms": "60000"}

# glibc returns every allocation above 32 MiB to the kernel when it is freed, so each full-resolution activation
# of a large tile is mapped, page-faulted and zeroed again at every layer of every model call. Keeping freed
# memory in the process (no mmap, no trim) made a base-16 U-Net 1.5x faster per 1248-px tile on this CPU (2.6 ->
# 1.7 s, measured); memory then stays at the worker's peak, which a tile bounds. Read by glibc at process start,
# so it is given to the processes that run models (Ray actors, Ray Train workers, the images) as environment.
MODEL_PROCESS_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}


def release_free_memory() -> None:
    """Give the memory this process has freed back to the kernel (glibc's ``malloc_trim``).

    For processes that get :data:`MODEL_PROCESS_ENV` (the images set it for every process) but work only now and
    then, such as a job's publishing process: without it their heap stays at the largest scene's peak between
    scenes (100 MiB after an 8192² class raster, measured). A no-op without glibc.
    """
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def exit_without_final_collection() -> None:
    """Skip the garbage collection of this process's last moments: the command's work is over by then.

    :func:`gc.freeze` as an exit handler: the collections of the interpreter's shutdown then skip every object
    alive when it ran. With torch imported those collections walk its whole object graph: a ``geoseg`` command
    spent 0.5-0.6 s exiting, 0.15-0.2 s with this (the time from the last line of the program to the end of the
    process, five runs each, measured); a publishing process 0.08 s, 0.016 with this. Every exit handler still
    runs, before or after it (handlers run in reverse order of registration: Ray's, registered when a job
    imports it, runs first; logging's, registered at import, after): freezing changes what the collector scans,
    nothing else, and what becomes garbage later is still freed. What it gives up is the ``__del__`` of garbage
    left in reference cycles at exit, which nothing of a job relies on: outputs are closed and renamed before
    the command returns. Call it at a process's entry point only.
    """
    atexit.register(gc.freeze)


# An in-process job's own heap: blocks under 4 MiB (activations, tiles and results of small scenes) stay in the
# heap, and up to 64 MiB of freed heap is kept for the next scene instead of being returned and faulted in again.
# glibc's defaults trimmed the heap after nearly every small scene: 0.6-1.4 M page faults and 1-1.5 s of system
# CPU in an archive of 1000 scenes of 256² (measured), ~5 % of its time. Larger buffers are still returned at
# once, so a large scene's peak is unchanged (benchmarks/predict.py --p2b). Set for the rest of the process: a
# notebook that ran an in-process job keeps them.
IN_PROCESS_HEAP = {"mmap_threshold": 4 << 20, "trim_threshold": 64 << 20}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_heap(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` in this process (see :data:`IN_PROCESS_HEAP`);
    False where there is no glibc or it refused."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):
        return False


# Safe defaults for an embedded Ray on a workstation: loopback only, no telemetry, short socket paths
# (unix sockets are limited to 107 bytes, deep temp dirs break them). Ray binds to loopback only when the
# variable below is in its processes' environment *and* the node address is 127.0.0.1 (LOOPBACK); neither
# alone is enough (measured with `ss -ltn`).
_LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180",
    "RAY_TRAIN_V2_ENABLED": "1",
    **WORKER_KEEPALIVE_ENV,
    **MODEL_PROCESS_ENV,  # for every process the local Ray starts (Ray Train workers too); read at their start
}
LOOPBACK = "127.0.0.1"

# The object store of a Ray that geoseg starts itself. Ray's default is 30 % of the machine's memory, allocated
# lazily: its allocator walks through pages never touched before rather than reusing the ones just freed, and
# every page a process touches stays resident shared memory. So a job's memory grew with the pixels that had
# passed through it, up to that 30 %: after 100 blocks of 36 MB, the whole tree's PSS was 3071 MiB with Ray's
# default store (7.2 GB here) and 2014 MiB with this one (576 MiB), and the reader took 4038 page faults and
# 11.5 ms of system CPU a block instead of 1384 and 4.9 (medians of 3: benchmarks/ray_calls.py --store).
# Sized to the most a job keeps in flight: per CPU, two blocks read ahead of a model actor (2 x (1024 + 64)² px
# x 16 bands x 4 bytes: 152 MB); per GPU, six 2048-px blocks of them (1.7 GB); and a base for the scenes'
# headers, a training run's model and its reports. Beyond that Ray spills to disk (slower, never lost). A
# cluster that geoseg joins keeps its own size (`ray start --object-store-memory`, see the README).
STORE_BASE, STORE_PER_CPU, STORE_PER_GPU = 256 << 20, 160 << 20, 2 << 30
STORE_MEMORY_SHARE = 0.3  # Ray's own default, the ceiling


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the driver's list in /proc
    (without importing torch or asking Ray, neither of which has started yet)."""
    chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None:  # CUDA stops at the first entry that is not a device ("-1": none at all)
        devices = [d.strip() for d in chosen.split(",")]
        return next((i for i, d in enumerate(devices) if not d or d.startswith("-")), len(devices))
    with suppress(OSError):
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    return 0


def ray_default_object_store_bytes(memory_bytes: int | None = None) -> int:
    """Ray's own default store: its share of ``memory_bytes`` (this machine's memory by default)."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(memory_bytes * STORE_MEMORY_SHARE)


def local_object_store_bytes(cpus: int, gpus: int, memory_bytes: int | None = None) -> int:
    """The object store of a local Ray with ``cpus`` CPUs and ``gpus`` GPUs (see :data:`STORE_BASE`), never more
    than Ray's own default (:func:`ray_default_object_store_bytes` of ``memory_bytes``)."""
    wanted = STORE_BASE + STORE_PER_CPU * cpus + STORE_PER_GPU * gpus
    return min(wanted, ray_default_object_store_bytes(memory_bytes))


def configure_ray_env() -> None:
    """Set the environment defaults above unless the user already chose otherwise."""
    for key, value in _LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"rt-{os.getpid()}"))


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None
) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect to ``address``, else start one locally.

    Only a Ray started here is shut down on exit; a user's cluster is never stopped. Ray is imported here, not
    with this module: a job run in this process never loads it (0.25 s of every command's start, measured). A
    local Ray's object store is sized by :func:`local_object_store_bytes` unless ``object_store_memory`` is given.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        yield
        return
    # A failed scene is reported once by the job; without this Ray also prints the tracebacks of its other
    # in-flight batches when their results are dropped.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    if address:  # the cluster's own settings apply; the loopback defaults would break a multi-host cluster
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        configure_ray_env()
        # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when imported, and this process imported Ray before
        # it knew whether the job runs locally. The processes Ray starts read the variable set just above; this
        # one needs the constant itself, or Ray "resolves" 127.0.0.1 to the host's public address and every
        # Ray process listens on all interfaces (seen with `ss -ltn`; tests/test_cluster.py checks it).
        chosen = os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR]
        ray_constants.ENABLE_RAY_CLUSTER = chosen.lower() in ("1", "true")
        if object_store_memory is None:
            object_store_memory = local_object_store_bytes(num_cpus or os.cpu_count() or 1, visible_gpus())
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            _temp_dir=os.environ["RAY_TMPDIR"],
            _node_ip_address=LOOPBACK,
        )
    on_sigterm_interrupt()  # ray.init installed its own SIGTERM handler (sys.exit mid-flight): see geoseg.stop
    try:
        yield
    finally:
        if not address:
            end_autoscaler_monitor()
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def end_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the Ray this process started, before ``ray.shutdown``.

    ``ray.shutdown`` ends a local Ray's processes one after another, each given a second to exit after SIGTERM
    before SIGKILL. It ends the GCS before the monitor, and the monitor's SIGTERM handler then waits on the GCS
    for its whole second: a local Ray's shutdown took 1.2-1.5 s, 0.23 s with the monitor killed first (measured,
    `Node._kill_process_type` timed). The monitor only scales a cluster, which a local Ray of fixed size never
    does, and SIGKILL is what Ray sends it after that second anyway; a monitor told to stop by SIGTERM instead
    took 0.7 s and printed "The autoscaler failed" through the raylet. Ray's process table is internal: if it
    moves, the shutdown is only slower.
    """
    from ray._private import ray_constants, worker

    node = getattr(worker, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    for info in processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
        with suppress(AttributeError, OSError, subprocess.TimeoutExpired):
            info.process.kill()
            info.process.wait(timeout=5)
