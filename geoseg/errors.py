"""User-facing errors.

Every failure a user can cause (a bad file, a bad config value) is raised as :class:`GeoSegError` so that
the CLI prints one line naming the file and the cause instead of a traceback.
"""

from __future__ import annotations

import pickle
from pathlib import Path


class GeoSegError(Exception):
    """An error caused by input the user gave; its message is meant to be shown as is."""

    def __init__(self, cause: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


def portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a ``RuntimeError`` with its type and text: an error sent to another
    process (a publishing process's reply, a Ray group's results) must not break the message that carries it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
