"""Cluster use: `ray job submit` to a real Ray head on 127.0.0.1, and a 3-node cluster that loses a node.

Both start their own Ray processes (never the session's Ray) and stop them by their own handles: the head
by its process group, the multi-node cluster by ``Cluster.shutdown`` in its own process. Never `ray stop`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_inputs import write_geotiff

from geoseg.bundle import init_bundle, load_bundle
from geoseg.cluster import LOOPBACK, local_object_store_bytes, ray_default_object_store_bytes, visible_gpus
from geoseg.inference.executor import LocalExecutor
from geoseg.inference.options import PredictOptions
from geoseg.inference.scene import predict_scene
from geoseg.inference.worker import ModelWorker
from geoseg.io import open_scene

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind((LOOPBACK, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _loopback_env(temp_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(temp_dir),
    }


@dataclass
class Head:
    dashboard: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """`ray start --head --block` on loopback with a private temp dir; killed through its process group."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-"))  # short: unix socket paths are limited to 107 bytes
    env = _loopback_env(temp_dir)
    gcs, dash, client, agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = _free_ports(9)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs}",
        "--include-dashboard=true",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--object-store-memory=268435456",
        "--disable-usage-stats",
    ]
    log = open(temp_dir / "head.log", "w")  # noqa: SIM115 - closed below, after the head is gone
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{LOOPBACK}:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if head.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray head did not start: {(temp_dir / 'head.log').read_text()[-2000:]}")
            time.sleep(1)
        yield Head(url, env)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head takes its GCS, raylet and workers down with it
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _scene(path: Path, seed: int, shape: tuple[int, int, int] = (3, 200, 180)) -> Path:
    write_geotiff(path, np.random.default_rng(seed).integers(1, 255, shape).astype(np.uint8))
    return path


def _submit(head: Head, job_config: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        f"--address={head.dashboard}",
        f"--working-dir={REPO}",
        "--",
        "python",
        "jobs/predict.py",
        "--config",
        str(job_config),
    ]
    return subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=600)


def test_ray_job_submit_runs_predict_on_a_real_head(ray_head: Head, tmp_path: Path) -> None:
    bundle = init_bundle(tmp_path / "bundle", "unet", 3, 3, base_channels=4, depth=2, seed=5)
    scenes = [_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    job = tmp_path / "job"
    config = tmp_path / "predict.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": str(bundle), "input": [str(s) for s in scenes], "output": str(job), "tile": 64, "halo": 8}
        )
    )
    ok = _submit(ray_head, config)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "succeeded" in (ok.stdout + ok.stderr).lower()
    report = json.loads((job / "report.json").read_text())
    assert report["summary"]["scenes_ok"] == 2 and report["options"]["tile"] == 64
    # The job ran on the head's Ray and produced what a local run produces.
    local = _predict_locally(bundle, scenes[0], tmp_path / "local.tif", PredictOptions(tile=64, halo=8))
    assert local.tiles_run == report["scenes"][0]["tiles_run"]
    assert (job / "s0.tif").read_bytes() == (tmp_path / "local.tif").read_bytes()

    # A job with a bad scene fails, and `ray job submit` says so with its exit status.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": str(bundle), "input": [str(tmp_path / "missing.tif")], "output": str(job)}))
    failed = _submit(ray_head, bad)
    assert failed.returncode != 0
    assert "failed" in (failed.stdout + failed.stderr).lower()
    assert "cannot open as a raster" in (failed.stdout + failed.stderr)


def _predict_locally(bundle: Path, scene: Path, out: Path, options: PredictOptions):
    spec, model = load_bundle(bundle)
    executor = LocalExecutor(ModelWorker(spec, model.state_dict()))
    return predict_scene(open_scene(scene), spec, executor, out, options)


def test_a_scene_split_across_nodes_survives_losing_a_node(tmp_path: Path) -> None:
    bundle = init_bundle(tmp_path / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=1)
    scene = _scene(tmp_path / "scene.tif", seed=3, shape=(3, 600, 500))
    temp_dir = Path(tempfile.mkdtemp(prefix="rm-"))
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "tests" / "multinode_job.py"), *map(str, (scene, bundle, tmp_path / "n.tif"))],
            env=_loopback_env(temp_dir),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    said = f"{outcome}; the job's log: {result.stderr[-2000:]}"  # what happened, when an assertion fails
    assert outcome["worker_nodes_used_before"] == 2, said  # the scene really was split across both worker nodes
    assert outcome["victim_removed"] and not outcome["victim_used_after"], said
    # The node was removed while it held blocks not yet computed; they went down with it, as dead actors or as
    # results lost with its object store (which of the two Ray reports first depends on timing), and were redone.
    assert outcome["unfinished_at_removal"] >= 2, said
    assert outcome["blocks_redone"] >= 1, said
    assert outcome["tiles_run"] == outcome["tiles"], said
    options = PredictOptions(tile=96, halo=8, overlap=8, block=64, batch_size=2)
    _predict_locally(bundle, scene, tmp_path / "clean.tif", options)
    assert (tmp_path / "n.tif").read_bytes() == (tmp_path / "clean.tif").read_bytes()


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _listening_addresses(pids: set[int]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses that the given processes' TCP sockets listen on, from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                # The kernel prints each 32-bit word of the address in host (little-endian) byte order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addresses.add(ipaddress.ip_address(words))
    return addresses


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only(ray_local) -> None:
    addresses = _listening_addresses(_descendants(os.getpid()))
    assert addresses, "found no listening sockets of this test session's Ray"
    mapped = {a: getattr(a, "ipv4_mapped", None) for a in addresses}  # ::ffff:127.0.0.1 is loopback too
    public = [a for a, v4 in mapped.items() if not (a.is_loopback or (v4 is not None and v4.is_loopback))]
    assert not public, f"Ray listens beyond loopback: {sorted(map(str, public))}"


def test_release_free_memory_hands_a_kept_heap_back_to_the_kernel() -> None:
    """With the model processes' allocator settings freed memory stays in the process; publishing processes release
    it after each scene."""
    from geoseg.cluster import MODEL_PROCESS_ENV

    script = """
import numpy as np
from geoseg.cluster import release_free_memory
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
start = rss()
chunks = [np.ones(2**20, np.uint8) for _ in range(300)]  # 300 MiB in 1 MiB blocks from the heap
del chunks
kept = rss()
release_free_memory()
print(start, kept, rss())
"""
    env = dict(os.environ, **MODEL_PROCESS_ENV)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    start, kept, released = map(int, done.stdout.split())
    assert kept - start > 250  # the allocator settings keep what was freed ...
    assert released - start < 50  # ... until it is released


def test_an_in_process_job_keeps_small_frees_and_returns_large_ones() -> None:
    """In-process jobs keep freed blocks under 4 MiB for the next scene (no page faults per small scene) and still
    hand large buffers back at once (a large scene's peak is unchanged)."""
    script = """
import numpy as np
from geoseg.cluster import IN_PROCESS_HEAP, keep_freed_heap
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
assert keep_freed_heap(**IN_PROCESS_HEAP)
start = rss()
chunks = [np.ones(2**20, np.uint8) for _ in range(40)]  # 40 MiB in 1 MiB blocks: the heap
del chunks
small = rss()
big = [np.ones(64 * 2**20, np.uint8) for _ in range(3)]  # 192 MiB in 64 MiB buffers: mapped, returned on free
del big
print(start, small, rss())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    start, small, after = map(int, done.stdout.split())
    assert small - start > 30  # the small frees stayed in the heap ...
    assert after - small < 20  # ... and the large buffers went back


def test_a_local_object_store_is_sized_to_what_a_job_keeps_in_flight() -> None:
    mib, gib = 2**20, 2**30
    assert local_object_store_bytes(2, 0, memory_bytes=24 * gib) == 256 * mib + 2 * 160 * mib
    assert local_object_store_bytes(16, 8, memory_bytes=1024 * gib) == 256 * mib + 16 * 160 * mib + 8 * 2 * gib
    assert local_object_store_bytes(64, 0, memory_bytes=4 * gib) == int(4 * gib * 0.3)  # never above Ray's own


@pytest.mark.parametrize(
    ("chosen", "count"), [("0,1", 2), ("-1", 0), ("", 0), ("0,-1,1", 1), ("GPU-8c2e,GPU-11aa", 2), ("3", 1)]
)
def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, chosen: str, count: int) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", chosen)
    assert visible_gpus() == count


def _in_a_local_ray_process(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter on loopback, with a short Ray temp folder of its own (removed after)."""
    env = _loopback_env(tmp_path) | {"RAY_TMPDIR": tempfile.mkdtemp(prefix="rs-")}
    try:
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_a_local_ray_starts_with_that_store(tmp_path: Path) -> None:
    """Ray's default would be 30 % of the machine's memory, touched page by page as blocks pass (see
    geoseg.cluster.STORE_BASE); the Ray that geoseg starts gets the sized store."""
    script = """
import ray
from geoseg.cluster import local_object_store_bytes, ray_session, visible_gpus
with ray_session(num_cpus=1):
    print(int(ray.cluster_resources()["object_store_memory"]), local_object_store_bytes(1, visible_gpus()))
"""
    done = _in_a_local_ray_process(tmp_path, script)
    assert done.returncode == 0, done.stderr[-2000:]
    started, wanted = map(int, done.stdout.split()[-2:])
    assert wanted < ray_default_object_store_bytes()  # smaller than Ray's default on this machine
    assert abs(started - wanted) <= 2**20, (started, wanted)


def test_a_local_ray_ends_its_autoscaler_monitor_first_and_keeps_working(tmp_path: Path) -> None:
    """The monitor is killed before ``ray.shutdown`` (which would give it a second after ending the GCS); Ray's
    scheduling does not need it: a task still runs afterwards."""
    script = """
import ray
from ray._private import ray_constants, worker
from geoseg.cluster import end_autoscaler_monitor, ray_session
with ray_session(num_cpus=1):
    monitor = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
    alive = monitor.poll() is None
    end_autoscaler_monitor()
    print(alive, monitor.poll() is not None, ray.get(ray.remote(lambda: 7).remote()))
"""
    done = _in_a_local_ray_process(tmp_path, script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["True", "True", "7"]
    assert "autoscaler failed" not in done.stdout + done.stderr


def test_a_command_exits_without_the_final_collection(tmp_path: Path) -> None:
    """``geoseg``'s entry point freezes the heap as its last exit handler: garbage left in a cycle is not
    collected at exit (the collections that cost 0.4 s with torch imported), while exit handlers still run."""
    script = """
import atexit, os, sys
class Cycle:
    def __del__(self):
        os.write(1, b"collected ")
atexit.register(lambda: os.write(1, b"handler-ran "))
sys.argv = ["geoseg", "--version"]
from geoseg.cli import main
cycle = Cycle()
cycle.itself = cycle
del cycle
main()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "handler-ran" in done.stdout
    assert "collected" not in done.stdout
    plain = subprocess.run(
        [sys.executable, "-c", script.replace("main()", "")], capture_output=True, text=True, timeout=120
    )
    assert "collected" in plain.stdout  # without it the interpreter's exit collects the cycle
