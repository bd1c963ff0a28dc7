"""One job per output folder at a time: the lock every command that writes a folder of products takes.

Two jobs writing one folder overwrite each other's records, and one deleted the other's staging files as a
killed run's leftovers. The lock is ``flock`` on ``<folder>/.geoseg.lock``: the kernel drops it when its
process dies, however it dies (SIGKILL, a lost node), so a dead job's lock never outlives it and nothing has
to guess from timestamps. The file says who holds it (host, pid, command, since when) for the refusal's one
line. A path that stops naming the locked file between ``open`` and ``flock`` (the holder removed it while
releasing) is opened again, so two jobs never each lock a different inode. ``flock`` is advisory and local to
one host's kernel, or an NFSv4 server's; a bucket prefix needs its own lease (not done here).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import GeoSegError

LOCK = ".geoseg.lock"


@contextlib.contextmanager
def job_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (the folder must exist); a one-line refusal names the holder."""
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GeoSegError(f"cannot take the job folder's lock ({exc.strerror or exc})", folder) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            raise GeoSegError(
                f"another geoseg job is writing here ({_describe(holder)}): wait for it, or stop it", folder
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    try:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv[:3]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a job that opens the old file after this finds it gone and retries
        os.close(fd)


def _describe(holder: str) -> str:
    try:
        record = json.loads(holder)
        return f"pid {record['pid']} on {record['host']}, since {record['since']}: {record['command']}"
    except (ValueError, KeyError, TypeError):
        return "a job that did not say who it is"
