"""One job per output folder at a time: the lock every command that writes a folder of products takes.

Two jobs writing one folder overwrite each other's records, and one deleted the other's staging files as a
killed run's leftovers. The lock is ``flock`` on ``<folder>/.geoseg.lock``: the kernel drops it when its
process dies, however it dies (SIGKILL, a lost node), so a dead job's lock never outlives it and nothing has
to guess from timestamps. The file says who holds it (host, pid, command, since when) for the refusal's one
line. A path that stops naming the locked file between ``open`` and ``flock`` (the holder removed it while
releasing) is opened again, so two jobs never each lock a different inode. ``flock`` is advisory and local to
one host's kernel, or an NFSv4 server's.

A bucket prefix has no kernel to drop a lock, so it gets a **lease**: the object ``<prefix>/.geoseg.lock``,
created only if absent (S3's conditional write ``If-None-Match: *``, one winner however many jobs race),
renewed every ``RENEW_S`` by its holder with ``If-Match`` on its own ETag, and deleted at the end only if it is
still that job's. A lease not renewed for ``LEASE_S`` belongs to a dead job (killed, its node lost): the next
job replaces it, again conditionally on the ETag it found, so of two jobs that find one stale lease only one
takes it. Its age is measured by the store's clock alone (its ``Date`` minus the object's ``Last-Modified``).
Stores without conditional writes (AWS S3 has them since 2024, MinIO and moto too) cannot hold a lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import GeoSegError
from geoseg.io import objectstore

LOCK = ".geoseg.lock"
LEASE_S = 120.0  # a bucket lease not renewed for this long is a dead job's
RENEW_S = 30.0


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
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a job that opens the old file after this finds it gone and retries
        os.close(fd)


@contextlib.contextmanager
def prefix_lease(url: objectstore.S3Url) -> Iterator[None]:
    """Hold the lease on a bucket prefix for the block (see the module docstring); a one-line refusal names
    the holder while its lease is live."""
    objectstore.check_writable(url)  # a missing bucket or bad credentials: one line about the bucket
    lock = url.child(LOCK)
    body = json.dumps(_holder()).encode()
    etag = objectstore.put_if(lock, body, None)
    while etag is None:
        found = objectstore.held(lock)
        if found is None:  # released between our write and our read
            etag = objectstore.put_if(lock, body, None)
            continue
        their_etag, age, text = found
        if age < LEASE_S and not _dead_here(text):
            holder = _describe(text.decode("utf-8", "replace"))
            raise GeoSegError(
                f"another geoseg job is writing here ({holder}): wait for it, or stop it "
                f"(a lease its job stops renewing lapses {LEASE_S - age:.0f} s from now)",
                str(url),
            )
        etag = objectstore.put_if(lock, body, their_etag)  # a dead job's lease: take it, if nobody did first
    renewer = _Renewer(lock, body, etag)
    renewer.start()
    try:
        yield
    finally:
        renewer.stop()


class _Renewer(threading.Thread):
    """Renews a lease every ``RENEW_S`` until stopped, then deletes it if it is still this job's."""

    def __init__(self, lock: objectstore.S3Url, body: bytes, etag: str) -> None:
        super().__init__(name="geoseg-lease", daemon=True)
        self.lock, self.body, self.etag = lock, body, etag
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(RENEW_S):
            with contextlib.suppress(GeoSegError):  # a failed renewal is tried again; the lease lasts LEASE_S
                renewed = objectstore.put_if(self.lock, self.body, self.etag)
                if renewed is None:
                    return  # taken over (this job stalled past LEASE_S): never delete the new holder's lease
                self.etag = renewed

    def stop(self) -> None:
        self.done.set()
        self.join()
        objectstore.delete_if(self.lock, self.etag)


def _dead_here(text: bytes) -> bool:
    """The lease names a process of this host that is gone (the job was killed here): no need to wait."""
    try:
        record = json.loads(text)
        if record["host"] != socket.gethostname():
            return False
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, OSError):
        return False
    return False


def _holder() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv[:3]),
    }


def _describe(holder: str) -> str:
    try:
        record = json.loads(holder)
        return f"pid {record['pid']} on {record['host']}, since {record['since']}: {record['command']}"
    except (ValueError, KeyError, TypeError):
        return "a job that did not say who it is"
