"""Scene headers read on a thread of their own while the first scenes are already predicted.

A job needs a scene's header (size, grid, pixel type, mask) before it can cut the scene into blocks, and the
sum of all headers' pixels for its progress total. Reading every header first, as the job once did, kept one
core busy and the other idle before the first block: 1.0-2.4 s for 1000 scenes of 256², about 3 minutes for an
archive of 100 000, with the model waiting throughout (an open holds the interpreter lock: reading headers on
several threads was slower, measured). Here one thread reads them in the job's order while the stream takes
them as they come, so the model starts on the first scene at once and the headers' CPU goes into the
stream's slack. Headers are never read twice and none is dropped: the thread reads ahead without a bound, so
the job holds at most what it held before (every scene's header), and the total is known as soon as the last
header is in, not when its scene comes up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

from geoseg.io.raster import SceneInfo

S = TypeVar("S")  # a scene's source, whatever the job lists: only ``open_one`` looks inside it

_END = object()


class _Raised:
    """An error that is not one scene's: raised again in the consumer, which decides the job's fate."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class HeaderReader(Generic[S]):
    """Reads ``(source, name)`` headers in order on a thread; iterate it for ``(name, SceneInfo | Exception)``.

    Args:
        todo: the scenes, in the job's order.
        open_one: reads one header; an error it raises is that scene's failure, yielded in its place (the
            rest go on: one bad scene never costs the others).
        counted: called on the header thread with the total megapixels of the readable scenes once every
            header is in (the progress total).

    Use it as a context manager: leaving it stops the thread after the header in hand (Ctrl-C, a failed pool).
    """

    def __init__(
        self,
        todo: Sequence[tuple[S, str]],
        open_one: Callable[[S, str], SceneInfo],
        counted: Callable[[float], None] | None = None,
    ) -> None:
        self._todo, self._open_one, self._counted = todo, open_one, counted
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="geoseg-headers", daemon=True)

    def __enter__(self) -> HeaderReader[S]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # The header in hand finishes first (an open cannot be interrupted); a remote one that hangs is left
        # to the daemon thread rather than holding the job's exit.
        self._thread.join(timeout=10)

    def _read(self) -> None:
        total = 0.0
        try:
            for source, name in self._todo:
                if self._stop.is_set():
                    return
                try:
                    scene = self._open_one(source, name)
                except Exception as exc:  # this scene's failure, reported by the consumer
                    self._queue.put((name, exc))
                    continue
                total += scene.width * scene.height / 1e6
                self._queue.put((name, scene))
            if self._counted is not None:
                self._counted(total)
        except BaseException as exc:  # the progress callback failed, or the thread is torn down: the job's error
            self._queue.put(_Raised(exc))
        finally:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[tuple[str, SceneInfo | Exception]]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield cast(tuple[str, SceneInfo | Exception], item)
