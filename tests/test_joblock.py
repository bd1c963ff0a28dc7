"""One job per output folder: the lock every folder-writing command takes, and what a dead holder leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from class_maps import write_class_map
from mosaic_jobs import FakeScene, random_probabilities, write_job
from test_cli import _init_bundle, _one_line_error, run

from geoseg.errors import GeoSegError
from geoseg.io.joblock import LOCK, job_lock


def test_a_second_holder_is_refused_and_the_lock_is_gone_after(tmp_path: Path) -> None:
    with job_lock(tmp_path):
        assert (tmp_path / LOCK).exists()
        refused = pytest.raises(GeoSegError, match=rf"another geoseg job is writing here \(pid {os.getpid()} on ")
        with refused, job_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK).exists()
    with job_lock(tmp_path):  # free again
        pass


def test_every_folder_command_meets_a_running_job(make_geotiff, tmp_path: Path) -> None:
    """predict and change into a folder another job holds: one line naming the holder, nothing written."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="s.tif")
    maps = [write_class_map(tmp_path / f"{n}.tif", np.zeros((20, 20), np.uint8), {0: "a"}) for n in "ab"]
    job, change = tmp_path / "job", tmp_path / "change"
    for folder in (job, change):
        folder.mkdir()
    with job_lock(job), job_lock(change):
        busy = run("predict", "--model", str(bundle), "--output", str(job), "--tile", "64", str(scene))
        _one_line_error(busy, str(job), f"another geoseg job is writing here (pid {os.getpid()}")
        busy = run("change", str(maps[0]), str(maps[1]), "--output", str(change))
        _one_line_error(busy, str(change), "another geoseg job is writing here")
        assert sorted(p.name for p in job.iterdir()) == [LOCK] and sorted(p.name for p in change.iterdir()) == [LOCK]
    assert run("predict", "--model", str(bundle), "--output", str(job), "--tile", "64", str(scene)).returncode == 0
    assert not (job / LOCK).exists()


def test_a_killed_holder_keeps_nothing_locked(tmp_path: Path) -> None:
    """The kernel drops the lock of a process that dies, however it dies: no stale lock to clean by hand."""
    script = (
        "import os, signal, sys; from pathlib import Path; from geoseg.io.joblock import job_lock\n"
        "with job_lock(Path(sys.argv[1])):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60)
    assert died.returncode == -9 and (tmp_path / LOCK).exists()  # its file is left; its lock is not
    with job_lock(tmp_path):
        pass


def test_every_folder_command_clears_what_a_killed_run_left(make_geotiff, tmp_path: Path) -> None:
    """predict, mosaic and change start by removing a killed run's temporary files (a staging file, a COG's
    build folder, the overview scratch file a COG build beside its name used to leave), and nothing else."""
    bundle = tmp_path / "bundle"
    _init_bundle(bundle, bands=2, classes=2, base=4, depth=2)
    scene = make_geotiff(np.random.default_rng(0).random((2, 40, 50)).astype(np.float32), name="s.tif")
    maps = [write_class_map(tmp_path / f"{n}.tif", np.zeros((20, 20), np.uint8), {0: "a"}) for n in "ab"]
    finished = write_job(
        tmp_path / "finished",
        [
            FakeScene(
                "f", random_probabilities(np.random.default_rng(1), 40, 30), Affine(30, 0, 600_000, 0, -30, 4_000_000)
            )
        ],
    )
    commands = {
        "predict": ["predict", "--model", str(bundle), "--tile", "64", str(scene), "--output"],
        "mosaic": ["mosaic", str(finished), "--tile-size", "64", "--cog", "--in-process", "--output"],
        "change": ["change", str(maps[0]), str(maps[1]), "--output"],
    }
    for name, command in commands.items():
        folder = tmp_path / name
        left = [
            folder / ".s.tif.0123abcd.partial",  # a staging file
            folder / ".mosaic.tif.4567cdef.partial" / "mosaic.tif",  # a COG's build folder
            folder / ".mosaic.tif.89abcdef.partial.ovr.tmp",  # GDAL's overview scratch beside an old build
        ]
        if name == "mosaic":
            left.append(folder / "tiles" / ".t.tif.fedc4567.partial")
        kept = [folder / ".notes.partial", folder / "notes.txt"]  # not ours
        for path in left + kept:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        done = run(*command, str(folder))
        assert done.returncode == 0, (name, done.stderr[-2000:])
        assert not [p for p in left if p.exists()], name
        assert all(p.read_bytes() == b"x" for p in kept), name
        assert not [p for p in folder.rglob("*") if ".partial" in p.name and p not in kept], name
