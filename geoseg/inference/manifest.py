"""The job manifest: which scenes are finished, by which model and options, from which source bytes.

``manifest.json`` holds one entry per scene (its report, the fingerprint of the model + options that produced
it, the identity of its source files, and its outputs' sizes); while a job runs, entries since the last
snapshot are appended to the journal ``manifest.jsonl``. A rerun skips a scene only if all of that still holds:
same fingerprint, same source identity (a replaced input is redone), and outputs of the recorded sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from geoseg import __version__
from geoseg.errors import GeoSegError
from geoseg.inference.report import FINISHED, SceneReport, Status
from geoseg.io.paths import is_virtual
from geoseg.io.stamps import remote_stamp
from geoseg.io.writer import temp_sibling

MANIFEST = "manifest.json"
JOURNAL = "manifest.jsonl"
_PROBE = 64 * 1024


def write_json_atomic(path: Path, payload: object) -> None:
    staging = temp_sibling(path)
    staging.write_text(json_text(payload))
    os.replace(staging, path)


def json_text(payload: object, depth: int = 0) -> str:
    """``payload`` as JSON, its outline indented and each record two levels down (a scene of a manifest or a
    report) on one line of its own.

    ``json.dumps`` with ``indent`` runs Python's pure-Python encoder, which cost a 1000-scene job ~2 s of CPU
    for its manifest and report, after its last scene (profiled); one line per record is the C encoder's work,
    and a scene's record is one line to grep.
    """
    pad = "  " * (depth + 1)
    if depth < 2 and isinstance(payload, dict) and payload and all(isinstance(k, str) for k in payload):
        items = (f"{pad}{json.dumps(k)}: {json_text(v, depth + 1)}" for k, v in payload.items())
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if depth < 2 and isinstance(payload, list) and payload:
        return "[\n" + ",\n".join(pad + json_text(v, depth + 1) for v in payload) + "\n" + "  " * depth + "]"
    return json.dumps(payload)


def source_identity(paths: Sequence[str | Path], extra: str = "") -> str:
    """A cheap key of the bytes a scene is read from: per local file its size, modification time and a hash of
    its first and last 64 KiB (a header rewritten in place changes it even when size and time are kept); per
    remote object (``/vsis3/``, ``/vsicurl/``) the ETag, size and last-modified time its store answers
    (:func:`geoseg.io.stamps.remote_stamp`: an object replaced in place is redone). ``extra`` is what else the
    scene was read by (a STAC item's asset hrefs, scales, offsets and nodata).
    """
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        text = str(path)
        if is_virtual(text) or "://" in text:
            digest.update(text.encode())
            digest.update((remote_stamp(text) or "").encode())
            continue
        digest.update(os.path.realpath(text).encode())  # resolved: another spelling of the same file is one source
        try:
            stat = os.stat(text)
        except OSError:
            continue
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        with contextlib.suppress(OSError), open(text, "rb") as f:
            digest.update(f.read(_PROBE))
            if stat.st_size > _PROBE:
                f.seek(max(_PROBE, stat.st_size - _PROBE))
                digest.update(f.read(_PROBE))
    return digest.hexdigest()[:16]


class Store(Protocol):
    """Where a job's products and records live: the job folder itself, or a bucket it mirrors to
    (:class:`geoseg.inference.remote.RemoteFolder`)."""

    def size(self, output: str) -> int | None:
        """Bytes of a recorded output (a path or a URL); None when it is gone."""

    def saved(self, path: Path, replaces: Path | None = None) -> None:
        """``path`` (manifest or journal) was just written; ``replaces``, if given, is gone now."""


def file_size(path: str | Path) -> int | None:
    """Bytes of a local file; None when it is gone."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


class LocalStore:
    """The job folder is the store: outputs are local files, records need no copy."""

    def size(self, output: str) -> int | None:
        return file_size(output)

    def saved(self, path: Path, replaces: Path | None = None) -> None:
        return None


@dataclass
class ManifestEntry:
    """One scene's record: its report, what produced it (fingerprint of model + options, identity of the source
    bytes), the sizes its outputs had, and the polygon options its vectors were made with.

    Stored flat (the report's fields beside these), as manifests always were; :meth:`from_json` refuses an
    entry whose fields are not of their types, so a damaged or foreign record makes its scene rerun rather than
    count as finished."""

    report: SceneReport
    fingerprint: str
    source_identity: str
    output_bytes: int | None = None
    probabilities_bytes: int | None = None
    vectors_key: str | None = None
    source_key: str | None = None  # the source whatever its spelling (SceneSource.key); older records have none

    def to_json(self) -> dict[str, Any]:
        extra = {"fingerprint": self.fingerprint, "source_identity": self.source_identity}
        for key in ("output_bytes", "probabilities_bytes", "vectors_key", "source_key"):
            if getattr(self, key) is not None:
                extra[key] = getattr(self, key)
        return self.report.to_dict() | extra

    @classmethod
    def from_json(cls, entry: Any) -> ManifestEntry | None:
        if not isinstance(entry, dict) or not isinstance(entry.get("scene"), str):
            return None
        try:
            report = SceneReport.from_dict(entry)
        except (TypeError, ValueError):
            return None
        fingerprint, identity = entry.get("fingerprint", ""), entry.get("source_identity", "")
        sizes = entry.get("output_bytes"), entry.get("probabilities_bytes")
        vectors_key, source_key = entry.get("vectors_key"), entry.get("source_key")
        if not (isinstance(fingerprint, str) and isinstance(identity, str)):
            return None
        if source_key is not None and not isinstance(source_key, str):
            return None
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in sizes):
            return None
        if vectors_key is not None and not isinstance(vectors_key, str):
            return None
        return cls(report, fingerprint, identity, sizes[0], sizes[1], vectors_key, source_key)


def journal_entries(journal: Path) -> list[ManifestEntry]:
    """The valid entries of a journal file (see :func:`parse_journal`)."""
    return parse_journal(journal.read_bytes())


def parse_journal(content: bytes) -> list[ManifestEntry]:
    """The valid entries of a journal, in order (last wins). A torn line (a kill mid-write, torn UTF-8 included)
    is invalid and ignored: that scene is redone."""
    entries = []
    for line in content.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = ManifestEntry.from_json(json.loads(line))
            if entry is not None:
                entries.append(entry)
    return entries


class Manifest:
    """Per-scene state of a job folder: ``manifest.json``, plus ``manifest.jsonl`` while a job runs.

    Each entry is appended to the journal (``manifest.jsonl``, one line, flushed and fsynced) as soon as its
    scene is settled; ``manifest.json`` is rewritten from all entries at most every ``snapshot_seconds`` and
    when the job ends, and the journal is then removed. Rewriting the whole manifest after every scene would
    cost O(scenes) per scene: 0.23 s per scene at 10 000 scenes here, days for an archive of 100 000 chips.
    Loading replays the journal over the snapshot (last entry wins), so a killed job loses nothing it
    recorded; a line torn by the kill is not valid JSON and is ignored, so that scene is simply redone.
    """

    def __init__(self, folder: Path, snapshot_seconds: float = 30.0, store: Store | None = None) -> None:
        self.path = folder / MANIFEST
        self.journal = folder / JOURNAL
        self.snapshot_seconds = snapshot_seconds
        self.store = store or LocalStore()
        self._snapshot_at = time.monotonic()
        self.entries: dict[str, ManifestEntry] = {}
        self.warnings: list[str] = []  # damaged records set aside (the job prints them)
        if os.path.lexists(self.path):
            stored = self._stored_scenes()
            for value in stored.values():
                entry = ManifestEntry.from_json(value)
                if entry is not None:
                    self.entries[entry.report.scene] = entry
        if os.path.lexists(self.journal):
            if self.journal.is_dir():
                self._set_aside(self.journal, "is a folder, not the job's journal")
            else:
                for entry in journal_entries(self.journal):
                    self.entries[entry.report.scene] = entry
            self.snapshot()  # a fresh journal: appending after a torn line would tear the next entry too

    def _stored_scenes(self) -> dict[str, Any]:
        """The snapshot's entries; a damaged snapshot (not JSON, not UTF-8, a folder in its place) is set aside
        with a warning and its scenes are checked again: a damaged record never stops a job, nor is trusted."""
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            scenes = stored.get("scenes") if isinstance(stored, dict) else None
            if isinstance(scenes, dict):
                return scenes
            why = "holds no scene records"
        except (IsADirectoryError, NotADirectoryError):
            why = "is a folder, not the job's manifest"
        except UnicodeDecodeError as exc:
            why = f"is not UTF-8 text (byte {exc.start})"
        except json.JSONDecodeError as exc:
            why = f"is not valid JSON (line {exc.lineno})"
        self._set_aside(self.path, why)
        return {}

    def _set_aside(self, path: Path, why: str) -> None:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            os.replace(path, aside)
            where = f"set aside as {aside.name}"
        except OSError as exc:
            raise GeoSegError(f"{why}, and cannot be set aside ({exc.strerror or exc})", path) from exc
        self.warnings.append(f"{path}: {why}; {where}, and the scenes it recorded are checked again")

    def snapshot(self) -> None:
        """Write ``manifest.json`` from every entry, then drop the journal (replaying it again is harmless)."""
        try:
            scenes = {name: entry.to_json() for name, entry in self.entries.items()}
            write_json_atomic(self.path, {"geoseg_version": __version__, "scenes": scenes})
            self.journal.unlink(missing_ok=True)
        except OSError as exc:
            raise GeoSegError(f"cannot write the job manifest ({exc.strerror or exc})", self.path) from exc
        self.store.saved(self.path, replaces=self.journal)
        self._snapshot_at = time.monotonic()

    def finished(
        self,
        name: str,
        source: str,
        identity: str,
        fingerprint: str,
        source_key: str | None = None,
        older: Collection[str] = (),
    ) -> SceneReport | None:
        """The report of a scene that needs no rerun (status ``skipped``), else None. It must have been recorded
        with the job's ``fingerprint`` or with one of the ``older`` ones that earlier versions of geoseg gave the
        same run. The source is compared by its key when both sides have one (a relative and an absolute
        spelling of one file are one source)."""
        entry = self.entries.get(name)
        if entry is None or entry.report.status not in FINISHED:
            return None
        if entry.fingerprint != fingerprint and entry.fingerprint not in older:
            return None
        same = entry.source_key == source_key if entry.source_key and source_key else entry.report.source == source
        if not same or entry.source_identity != identity:
            return None
        for output, size in (
            (entry.report.output, entry.output_bytes),
            (entry.report.probabilities, entry.probabilities_bytes),
        ):
            if output and self.store.size(output) != size:
                return None
        return replace(entry.report, status=Status.SKIPPED)

    def vectors_current(self, name: str, key: str) -> bool:
        """Whether the scene's polygons exist and were made with vectorizing options ``key``."""
        entry = self.entries.get(name)
        if entry is None or entry.vectors_key != key or not entry.report.vectors:
            return False
        return self.store.size(entry.report.vectors) is not None

    def record(
        self,
        report: SceneReport,
        fingerprint: str,
        identity: str,
        vectors_key: str | None = None,
        source_key: str | None = None,
    ) -> None:
        ok = report.status in FINISHED
        entry = ManifestEntry(
            report,
            fingerprint,
            identity,
            output_bytes=self.store.size(report.output) if ok and report.output else None,
            probabilities_bytes=self.store.size(report.probabilities) if ok and report.probabilities else None,
            vectors_key=vectors_key if report.vectors else None,
            source_key=source_key,
        )
        self.entries[report.scene] = entry
        try:
            with open(self.journal, "a") as journal:
                journal.write(json.dumps(entry.to_json()) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as exc:  # the job cannot promise to resume what it cannot record: it stops here
            raise GeoSegError(f"cannot record a finished scene ({exc.strerror or exc})", self.journal) from exc
        self.store.saved(self.journal)
        if time.monotonic() - self._snapshot_at >= self.snapshot_seconds:
            self.snapshot()
