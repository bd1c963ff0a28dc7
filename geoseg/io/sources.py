"""From what the user typed to scenes: files, folders, globs, list files, band stacks, GDAL virtual paths.

Two rules, each closing a class of defects that lost or mixed up data (output names are the third, in
:mod:`geoseg.inference.outputs`):

1. **Paths are taken as written.** An existing path is literal before any glob expansion (a file named
   ``a[1].tif`` is that file, not ``a1.tif``); GDAL virtual paths (``/vsizip/``, ``/vsis3/``, ``/vsicurl/``...) pass
   through unchanged (never normalised as local paths: ``//`` matters inside a URL), and ``s3://bucket/key``
   means ``/vsis3/bucket/key``; a bucket glob (``s3://bucket/scenes/*.tif``) or prefix
   (``s3://bucket/scenes/``) is one listing, like a local glob or folder; list files (``.txt``, ``.csv``) are
   read by CSV rules (quoted names may hold commas), first column, ``#`` comments and a ``path`` header skipped.
2. **A band stack is one scene.** ``a.tif+b.tif+c.tif`` (one file per band) is checked when its scene starts,
   not when the job does: a missing band, a band on another grid or of a type that cannot be stacked fails that
   scene alone, naming the band and the cause (:mod:`geoseg.io.stack`).
"""

from __future__ import annotations

import csv
import functools
import glob
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geoseg.errors import GeoSegError
from geoseg.io.paths import VIRTUAL_PREFIX, gdal_path, is_virtual  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from geoseg.io.stac import BandAsset, StacFilter

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img"}
LIST_SUFFIXES = {".txt", ".csv"}
STACK_SEPARATOR = "+"


@dataclass(frozen=True)
class SceneSource:
    """One scene as the user named it: a raster, or one file per band (a stack)."""

    text: str  # as written: for messages, the manifest and the name's hash
    bands: tuple[str, ...]  # what GDAL opens: one raster, or the band files of a stack
    name: str | None = None  # a STAC item's id: the output name's base
    assets: tuple[BandAsset, ...] = ()  # a STAC item's bands, with their scale, offset and nodata
    error: str | None = None  # why this scene cannot be read (a STAC item without a band): fails it alone
    acquired: str | None = None  # a STAC item's datetime (ISO 8601), carried to the result's STAC item
    item_assets: tuple[tuple[str, str], ...] = ()  # a STAC item's every asset (key, GDAL path): masks, QA

    @property
    def document(self) -> str | None:
        """The STAC document a STAC item's scene was read from (None for files)."""
        return self.text.rsplit("#", 1)[0] if self.name is not None else None

    @functools.cached_property  # resolving every band's path from the root, asked for several times a scene
    def key(self) -> str:
        """The scene's identity whatever the spelling: local files by their resolved path (``scenes/a.tif``,
        ``./scenes//a.tif`` and ``/data/scenes/a.tif`` are one scene), virtual paths and URLs as written; a STAC
        item by its resolved document and id. Reruns and duplicates are recognised by it."""

        def one(text: str) -> str:
            return text if is_virtual(text) or "://" in text else os.path.realpath(text)

        if self.name is not None and "#" in self.text:  # a STAC item: document#id[@n]
            document, _, item = self.text.partition("#")
            return f"{one(document)}#{item}"
        return STACK_SEPARATOR.join(one(b) for b in self.bands)

    @property
    def is_stack(self) -> bool:
        return len(self.bands) > 1 or bool(self.assets)

    def local_files(self) -> list[Path]:
        """The local files behind this scene (a VRT's own sources included): for identity and the input guard."""
        files = []
        for band in self.bands:
            if is_virtual(band):
                continue
            path = Path(band)
            files.append(path)
            if path.suffix.lower() == ".vrt" and path.is_file():
                files.extend(vrt_sources(path))
        return files


def vrt_sources(vrt: Path) -> list[Path]:
    """Local files a VRT reads (relative names resolved against the VRT's folder)."""
    try:
        text = vrt.read_text(errors="replace")
    except OSError:
        return []
    files = []
    for relative, name in re.findall(
        r'<SourceFilename(?:\s+relativeToVRT="(\d)")?[^>]*>([^<]+)</SourceFilename>', text
    ):
        if is_virtual(name):
            continue
        files.append(vrt.parent / name if relative == "1" else Path(name))
    return files


def expand_inputs(
    inputs: Iterable[str], band_names: list[str] | None = None, stac_filter: StacFilter | None = None
) -> list[SceneSource]:
    """Every scene the inputs name, in order, each once (see the module's rules). STAC documents give one scene
    per Item passing ``stac_filter``, with the bands ``band_names`` (see :mod:`geoseg.io.stac`)."""
    from geoseg.io.stac import is_stac

    sources: list[SceneSource] = []
    for raw in inputs:
        item = gdal_path(raw.strip())
        if not item:
            continue
        if is_stac(raw.strip()):
            sources.extend(stac_scenes(raw.strip(), band_names, stac_filter))
            continue
        if item.startswith("/vsis3/") and (glob.has_magic(item) or item.endswith("/")):
            from geoseg.io import objectstore

            sources.extend(SceneSource(p, (p,)) for p in objectstore.rasters(item, RASTER_SUFFIXES))
            continue
        if is_virtual(item):
            sources.append(SceneSource(item, (item,)))
            continue
        path = Path(item)
        if path.is_dir():
            rasters = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
            sources.extend(SceneSource(str(p), (str(p),)) for p in rasters)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            sources.extend(expand_inputs(read_list(path), band_names, stac_filter))
        elif path.exists():
            sources.append(SceneSource(item, (item,)))
        elif STACK_SEPARATOR in item:
            sources.append(parse_stack(item))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            sources.extend(SceneSource(m, (m,)) for m in matches if Path(m).is_file())
        else:  # missing: the scene fails with the file's own error, the others go on
            sources.append(SceneSource(item, (item,)))
    return list({s.key: s for s in sources}.values())  # one file in two spellings is one scene


def stac_scenes(href: str, band_names: list[str] | None, stac_filter: StacFilter | None) -> list[SceneSource]:
    """One scene per Item of a STAC document; an Item without a band is a scene that fails alone."""
    from geoseg.io.objectstore import stac_io
    from geoseg.io.stac import BadItem, StacFilter, item_assets, item_bands, read_items

    if band_names is None:
        raise GeoSegError("STAC inputs need a model bundle that names its bands", href)
    keep = stac_filter or StacFilter()
    scenes = []
    seen: dict[str, int] = {}
    for item in read_items(href, stac_io()):
        if isinstance(item, BadItem):
            scenes.append(SceneSource(f"{href}#{item.id}", (href,), name=item.id, error=item.error))
            continue
        if not keep.accepts(item):
            continue
        seen[item.id] = seen.get(item.id, 0) + 1
        # two items of one id (a collection merged from two) are two scenes, each under its own unique name
        text = f"{href}#{item.id}" + (f"@{seen[item.id]}" if seen[item.id] > 1 else "")
        when = item.datetime or item.common_metadata.start_datetime
        acquired = when.isoformat() if when else None
        others = item_assets(item)
        try:
            assets = tuple(item_bands(item, band_names))
        except GeoSegError as exc:
            scenes.append(SceneSource(text, (href,), name=item.id, error=str(exc), acquired=acquired))
            continue
        bands = tuple(a.href for a in assets)
        scenes.append(SceneSource(text, bands, name=item.id, assets=assets, acquired=acquired, item_assets=others))
    return scenes


def read_list(path: Path) -> list[str]:
    """Scene paths in a list file: a ``.txt`` holds one path per line (the whole line: a path may hold commas),
    a ``.csv`` its first column by CSV rules; ``#`` comments and a ``path`` header are skipped. UTF-8, with or
    without the byte-order mark Windows editors write; CRLF line ends are read as line ends."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeoSegError(f"cannot read the list of scenes: not UTF-8 text (byte {exc.start})", path) from exc
    except OSError as exc:
        raise GeoSegError(f"cannot read the list of scenes ({exc.strerror or exc})", path) from exc
    rows = csv.reader(io.StringIO(text)) if path.suffix.lower() == ".csv" else ([line] for line in text.splitlines())
    entries: list[str] = []
    for row in rows:
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        first = row[0].strip()
        if not entries and first.lower() == "path":
            continue
        entries.append(first if is_virtual(first) or Path(first).is_absolute() else str(path.parent / first))
    return entries


def _stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def _clean(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "scene"


def base_name(source: SceneSource) -> str:
    """A scene's name from its files: the file stem; a stack's common stem prefix (``lsat7_2000`` for Landsat);
    characters other than ASCII letters, digits and ``._-`` become ``_`` (``scène`` -> ``sc_ne``: names that
    every file system, bucket and shapefile reader takes), and no name starts with a dot."""
    if source.name is not None:
        return _clean(source.name)
    stems = [_stem(b) for b in source.bands]
    if len(stems) == 1:
        return _clean(stems[0])
    prefix = os.path.commonprefix(stems).rstrip("_-. ")  # noqa: RUF071 (a character prefix is wanted)
    return _clean(prefix or stems[0])


def parse_stack(text: str, root: Path | None = None) -> SceneSource:
    """``a.tif+b.tif+...`` (one file per band) as one scene; relative band paths are taken from ``root``."""
    parts = [gdal_path(part.strip()) for part in text.split(STACK_SEPARATOR)]
    if root is not None:
        parts = [p if is_virtual(p) or Path(p).is_absolute() else str(root / p) for p in parts]
    return SceneSource(text, tuple(parts))
