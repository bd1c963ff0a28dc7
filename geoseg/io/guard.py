"""The output guard of the area commands: a product never replaces an input, nor a file this tool did not write.

Checked before any work starts, on resolved paths and on inodes (a hard link or a symbolic link to an input is
that input). ``owned`` are the files a previous run of the same command recorded as its own (its record file
names them); any other existing file at an output path is the user's and is refused in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from geoseg.errors import GeoSegError


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    try:
        status = path.stat()
    except OSError:
        return os.path.realpath(path), None
    return os.path.realpath(path), (status.st_dev, status.st_ino)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (resolved links, hard links)."""
    (real_a, inode_a), (real_b, inode_b) = _identity(a), _identity(b)
    return real_a == real_b or (inode_a is not None and inode_a == inode_b)


def refuse_file_as_folder(out_dir: Path) -> None:
    """A command that writes a folder of products refuses an ``--output`` that is an existing file, in one line."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise GeoSegError("is a file; --output takes a folder", out_dir)


def refuse_overwrite(outputs: Iterable[Path], inputs: Iterable[Path], owned: Iterable[Path] = ()) -> None:
    """Raise a one-line :class:`GeoSegError` if an output path is an input, or an existing file not ``owned``."""
    sources = [(p, *_identity(p)) for p in inputs]
    mine = {_identity(p)[0] for p in owned}
    for output in outputs:
        real, inode = _identity(output)
        for path, source_real, source_inode in sources:
            if real == source_real or (inode is not None and inode == source_inode):
                raise GeoSegError(f"would write over the input {path}: choose another output", output)
        if (os.path.lexists(output)) and real not in mine:
            kind = "a folder" if output.is_dir() else "a file"
            raise GeoSegError(f"is {kind} this command did not write; refusing to replace it", output)


def claim_folder(out_dir: Path, record: str, command: str) -> None:
    """A folder a generating command (``geoseg synth``) writes whole: new, empty, or written by an earlier run of
    it (``record`` there lists what it wrote). An earlier run's files are removed (the run makes its archive
    anew: nothing of a larger earlier one stays behind); anything else there is refused in one line, before any
    file is touched."""
    refuse_file_as_folder(out_dir)
    listing = out_dir / record
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not listing.is_file():
        raise GeoSegError(f"holds files {command} did not write; give a new or empty folder", out_dir)
    try:
        owned = [out_dir / line for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GeoSegError(f"cannot read {command}'s record ({exc})", listing) from exc
    mine = {os.path.realpath(p) for p in owned} | {os.path.realpath(listing)}
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and os.path.realpath(path) not in mine:
            raise GeoSegError(f"was not written by {command}: move it away or give a new folder", path)
    for path in owned:
        path.unlink(missing_ok=True)


def record_folder(out_dir: Path, record: str) -> None:
    """After a generating command: list every file under ``out_dir`` as its own (all of them are:
    :func:`claim_folder` refused anything else), atomically."""
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != record)
    temporary = out_dir / f".{record}.partial"
    temporary.write_text("".join(f"{p.relative_to(out_dir).as_posix()}\n" for p in files), encoding="utf-8")
    temporary.replace(out_dir / record)


def refuse_foreign(output: Path, is_ours: Callable[[Path], bool], command: str) -> None:
    """An existing ``output`` is replaced only if it is a product of ``command`` (``is_ours`` says, from its
    content: a geoseg layer, a geoseg record); anything else there is the user's and is refused in one line."""
    if os.path.lexists(output) and not is_ours(output):
        raise GeoSegError(
            f"exists and is not a {command} product: geoseg never writes over a file it did not write; "
            "choose another output or move it away",
            output,
        )


def is_geoseg_json(path: Path) -> bool:
    """A JSON record geoseg wrote (it names the ``geoseg_version`` that wrote it)."""
    import json

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and "geoseg_version" in document
