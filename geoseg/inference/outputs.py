"""Where a job's outputs go: names unique and stable across reruns, and never the path of an input.

**Names.** Each scene gets a name from its files (:func:`geoseg.io.sources.base_name`). A name claims
``<name>`` and ``<name>_probabilities`` (compared without case, as on macOS and Windows) whatever the options,
so that a scene named ``x_probabilities`` can never take scene ``x``'s probability raster, and names do not move
when options change. Scenes whose claims clash (``a/B02.tif`` and ``bb/B02.tif``; two stacks with the same
prefix) all take ``<name>-<8 hex of the source as written>``: deterministic, independent of input order, never
resolved by overwriting.

**Inputs are read-only.** Before anything is written, every path the job could write (each scene's products,
its stack VRT, the manifest and report) is compared with every local file the inputs read (band files and the
sources of input VRTs), by resolved path and by device and inode (symbolic and hard links included): an output
folder that holds inputs is allowed only when no output name is one of them. The job's temporary files
(``.<name>.<8 hex>.partial``, files or a COG's build folder) are never an input's name either, and only those
are removed at start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

from geoseg.errors import GeoSegError
from geoseg.io.sources import SceneSource, base_name
from geoseg.vector.formats import POLYGONS_SUFFIX, polygons_beside, vector_files

PROBABILITIES_SUFFIX = "_probabilities"
JOB_FILES = ("manifest.json", "manifest.jsonl", "report.json")
STACKS = "stacks"
# A temporary name (geoseg.io.writer.temp_sibling), or the overview scratch file GDAL's COG driver kept beside
# one when a mosaic's COG build was killed (before COGs were built in folders of their own).
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.ovr\.tmp)?$")


def _claims(name: str) -> tuple[str, str, str]:
    return name.casefold(), (name + PROBABILITIES_SUFFIX).casefold(), (name + POLYGONS_SUFFIX).casefold()


def scene_names(sources: list[SceneSource]) -> list[str]:
    """Output names for ``sources``: unique in the job, the same on every rerun with the same inputs."""
    bases = [base_name(s) for s in sources]
    names = list(bases)
    digits = 8
    while True:
        owners: defaultdict[str, set[int]] = defaultdict(set)
        for i, name in enumerate(names):
            for claim in _claims(name):
                owners[claim].add(i)
        clashing = sorted({i for group in owners.values() if len(group) > 1 for i in group})
        if not clashing:
            return names
        for i in clashing:
            names[i] = f"{bases[i]}-{hashlib.sha256(sources[i].text.encode()).hexdigest()[:digits]}"
        digits += 4  # two hashed names that still clash (a digest prefix shared): longer digests


def scene_outputs(out_dir: Path, name: str, vector_format: str | None) -> list[Path]:
    """Every path the job may write for scene ``name`` (whatever the options: they do not move names)."""
    paths = [out_dir / f"{name}.tif", out_dir / f"{name}{PROBABILITIES_SUFFIX}.tif", out_dir / STACKS / f"{name}.vrt"]
    paths += [out_dir / f"{name}.qml", out_dir / f"{name}.tif.aux.xml"]  # the class raster's style and categories
    paths.append(out_dir / f"{name}.png")  # its quicklook
    if vector_format:
        paths.extend(vector_files(polygons_beside(out_dir / f"{name}.tif", vector_format)))
    return paths


def own_products(out_dir: Path) -> set[str]:
    """Resolved paths of the products an earlier run of this job recorded (class rasters, probabilities, VRTs of
    stacks): an input glob that reaches into the job folder (``data/**/*.tif`` with the job in ``data/out``)
    must not take them for scenes, which also renamed the real scenes whose names they clashed with."""
    try:
        scenes = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8")).get("scenes", {})
    except (OSError, ValueError, AttributeError):
        return set()
    found = set()
    for entry in scenes.values() if isinstance(scenes, dict) else []:
        for key in ("output", "probabilities"):
            value = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(value, str) and not value.startswith("s3://"):
                found.add(os.path.realpath(value))
    if (out_dir / STACKS).is_dir():
        found |= {os.path.realpath(p) for p in (out_dir / STACKS).glob("*.vrt")}
    return found


def guard_inputs(out_dir: Path, plan: list[tuple[SceneSource, str]], vector_format: str | None) -> None:
    """Refuse the job (before it writes anything) if any path it may write is one of its inputs."""
    real: dict[str, Path] = {}
    inodes: dict[tuple[int, int], Path] = {}
    for source, _ in plan:
        for path in source.local_files():
            try:
                status = path.stat()
            except OSError:
                continue  # a missing input fails its own scene later
            real[os.path.realpath(path)] = path
            inodes[(status.st_dev, status.st_ino)] = path
    outputs = [out_dir / f for f in JOB_FILES]
    for _, name in plan:
        outputs.extend(scene_outputs(out_dir, name, vector_format))
    folders: dict[Path, str] = {}
    for output in outputs:
        hit = real.get(_resolved(output, folders))
        if hit is None:
            try:
                status = output.stat()
                hit = inodes.get((status.st_dev, status.st_ino))
            except OSError:
                continue
        if hit is not None:
            raise GeoSegError(
                f"the job would write over the input {hit}: choose an output folder that does not hold it", output
            )


def _resolved(path: Path, folders: dict[Path, str]) -> str:
    """``os.path.realpath(path)``, each folder resolved once (in ``folders``): a job's thousands of output paths
    share two folders, and resolving every one of them from the root cost 1.2 ms a scene (profiled)."""
    if path.is_symlink():
        return os.path.realpath(path)
    folder = folders.get(path.parent)
    if folder is None:
        folder = folders[path.parent] = os.path.realpath(path.parent)
    return os.path.join(folder, path.name)


def input_paths(plan: list[tuple[SceneSource, str]]) -> set[str]:
    """The resolved paths of every local file the job's inputs read (what it must never remove or replace)."""
    return {os.path.realpath(p) for source, _ in plan for p in source.local_files()}


def remove_stale_partials(out_dir: Path, inputs: set[str], subfolders: tuple[str, ...] = (STACKS,)) -> None:
    """Remove the temporary files a killed run of this job left in ``out_dir`` and its ``subfolders`` (never one
    of ``inputs``, never anything else). ``predict``, ``mosaic`` and ``change`` call it under their job lock."""
    for folder in (out_dir, *(out_dir / name for name in subfolders)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not _PARTIAL.match(entry.name):
                continue
            if entry.is_file() and os.path.realpath(entry) not in inputs:
                entry.unlink(missing_ok=True)
            elif entry.is_dir() and not entry.is_symlink():  # a COG's build folder (geoseg.io.writer.publish_cog)
                inside = os.path.realpath(entry) + os.sep
                if not any(path.startswith(inside) for path in inputs):
                    shutil.rmtree(entry, ignore_errors=True)
