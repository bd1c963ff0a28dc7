"""Where an in-process job publishes its scenes: a process of its own, beside the one that runs the model.

Publishing a scene (:func:`geoseg.inference.scene.publish_scene`: the COG, the quicklook, the styles, the
checksum) needs neither the model nor the driver's state. On a Ray pool it is a task beside the workers. A job
run in this process used to publish in threads of it: the quicklook's PNG encoder and the many short calls of a
small scene held the interpreter lock against the model's own short calls, and an archive of 256² scenes used
1.3 of 2 cores (34.6 s for 1000 scenes; 25.5-26.7 s with this process, measured by ``benchmarks/predict.py
--p7``).

A publishing process is ``python -m geoseg.inference.publishing``, one per publishing thread of the job,
started when that thread first publishes in a job of :data:`MIN_SCENES` or more (a one-scene job pays nothing),
and fed pickled :class:`StagedScene` values over a pipe: not a ``multiprocessing`` child, which would import
the caller's own script again. It imports rasterio, not torch. It ignores Ctrl-C and SIGTERM (the job
finishes the scene in hand, then closes the pipe) and ends when the pipe does, so a killed job never leaves it
behind. A publishing process that died fails the scene it held, in one line, and the next scene starts a new
one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from geoseg.cluster import exit_without_final_collection, release_free_memory
from geoseg.errors import portable
from geoseg.inference.scene import Published, StagedScene, publish_scene

MIN_SCENES = 8  # fewer scenes publish in the job's own threads: a process costs ~0.5 s of CPU to start
_LENGTH = struct.Struct("<Q")


def _send(stream: IO[bytes], value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(header)[0]
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return pickle.loads(payload)


class PublishingProcess:
    """:func:`publish_scene` in child processes, one per calling thread at a time (the job's publishing threads:
    each waits on its child's pipe with the interpreter lock free). :meth:`close` ends them.

    ``ahead``: children started now rather than when the first scene is finished. A child's start (an
    interpreter, rasterio, geoseg: ~0.6 s of CPU) then overlaps the model's first scenes, and the first
    finished scene does not wait for it.
    """

    def __init__(self, ahead: int = 0) -> None:
        self._idle: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.prestart(ahead)

    def prestart(self, count: int) -> None:
        """Start children until ``count`` are idle: an archive's job calls it before its first scene."""
        with self._lock:
            missing = 0 if self._closed else count - len(self._idle)
        started = [_start_child() for _ in range(max(0, missing))]
        with self._lock:
            self._idle.extend(started)
        if self._closed:
            self.close()

    def __call__(self, staged: StagedScene) -> Published:
        with self._lock:
            child = self._idle.pop() if self._idle else None
        if child is None or child.poll() is not None:
            child = _start_child()
        assert child.stdin is not None and child.stdout is not None
        try:
            _send(child.stdin, staged)
            ok, value = _receive(child.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            _stop(child)
            raise RuntimeError(f"the publishing process ended (exit status {child.poll()})") from exc
        with self._lock:
            if self._closed:
                _stop(child)
            else:
                self._idle.append(child)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            _stop(child)


def _start_child() -> subprocess.Popen[bytes]:
    """A publishing process that imports this very geoseg, wherever the caller imported it from."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "geoseg.inference.publishing"]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path}
    )


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Close the child's input (it ends at end of input) and wait for it; kill it if it does not end."""
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if child.stdout is not None:
        child.stdout.close()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: a staged scene in, ``(True, Published)`` or ``(False, error)`` out, until end of input."""
    while True:
        try:
            staged = _receive(requests)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, publish_scene(staged))
        except Exception as exc:  # the scene's failure, reported by the job; this process goes on
            reply = (False, portable(exc))
        finally:  # under the images' allocator settings the heap would stay at the largest scene's peak
            release_free_memory()
        _send(replies, reply)


def main() -> None:
    exit_without_final_collection()  # the job waits for this process to end
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job decides when to stop: it closes the pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever a library prints cannot garble a reply
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
