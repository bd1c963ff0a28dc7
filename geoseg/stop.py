"""SIGTERM ends a command as Ctrl-C does.

SIGTERM is how Kubernetes, Slurm and ``ray job stop`` end a job. Python's default kills the process where it
stands; Ray's driver handler (installed by ``ray.init``) calls ``sys.exit`` from wherever the main thread is,
which left publishing threads running while Ray's core worker was torn down: a native stack dump and death by
SIGABRT. Here SIGTERM raises ``KeyboardInterrupt`` in the main thread, the path Ctrl-C already takes: every
``finally`` runs (the job's manifest is written, a Ray this process started is shut down), the command
prints one "aborted" line and exits 143 (128 + SIGTERM), as a shell reports a process ended by SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_received = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.set()
    raise KeyboardInterrupt


def on_sigterm_interrupt() -> None:
    """Install the handler (again: ``ray.init`` replaces it); only the main thread can."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def terminated() -> bool:
    """Whether the interrupt came from SIGTERM rather than Ctrl-C."""
    return _received.is_set()
