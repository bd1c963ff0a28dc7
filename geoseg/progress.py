"""Progress that reads well in a terminal and in a batch log.

Cluster jobs log to files (``ray job logs``, Kubernetes, ``2>&1 | tee``), where a redrawn bar is either
invisible (rich hides it when the output is not a terminal) or thousands of carriage returns. So the same
calls draw a rich bar on a terminal and, anywhere else, print a plain line at most every ``interval`` seconds
(and at each stage change): ``predict  41%  123.4/300.0 Mpx  12.1 Mpx/s  eta 15 s``. Stage changes
(``publishing x.tif``) matter most in logs: the last part of a scene (COG, polygons) does not advance the
pixel count, and a log that says nothing for a minute looks hung.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

#: Seconds between log lines; ``GEOSEG_PROGRESS_INTERVAL`` overrides it (0 prints every update).
DEFAULT_INTERVAL = 10.0
#: Seconds a stage change waits after the last log line before it is printed on its own.
STAGE_GAP = 1.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("GEOSEG_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class Meter:
    """Counts work done out of ``total`` (in ``unit``) and says so, as a bar or as log lines.

    ``total`` may be unknown when the stage starts (None: a job whose headers are still being read while its
    first scenes run); :meth:`set_total` gives it later, from any thread.
    """

    def __init__(self, console: Console, stage: str, total: float | None, unit: str, progress: Progress | None) -> None:
        self.console, self.stage, self.total, self.unit = console, stage, total, unit
        self.done = 0.0
        self._progress = progress
        self._task = progress.add_task(stage, total=total) if progress is not None else None
        self._interval = _interval()
        self._start = time.monotonic()
        self._last = self._start
        self._said = ""
        self._waiting = ""  # a stage change not printed yet (see describe)
        if total is not None and progress is None:
            self._say_total(total)

    def _say_total(self, total: float) -> None:
        self.console.print(escape(f"{self.stage}: {total:.2f} {self.unit} to do"), highlight=False, soft_wrap=True)

    def set_total(self, total: float) -> None:
        """The total, once known (a bar gets it at once; a log says it in a line of its own)."""
        self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)
        else:
            self._say_total(total)

    def advance(self, amount: float) -> None:
        self.done += amount
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)
        elif time.monotonic() - self._last >= self._interval:
            self._line()

    def describe(self, text: str) -> None:
        """A stage change (``publishing x``): redrawn on a terminal; in a log printed at once, unless a line was
        printed less than :data:`STAGE_GAP` seconds ago: then it waits for the next line, so that an archive of
        small scenes does not log a stage line per scene (each cost the job's loop 0.6 ms, profiled)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=escape(text))
        elif text != self._said:
            self._said = text
            if time.monotonic() - self._last >= STAGE_GAP:
                self._line(text)
            else:
                self._waiting = text

    def flush(self) -> None:
        """Print a stage change that is still waiting (the end of the stage)."""
        if self._waiting:
            self._line(self._waiting)

    def _line(self, note: str = "") -> None:
        note = note or self._waiting
        self._waiting = ""
        self._last = now = time.monotonic()
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        total = self.total
        if total is None:  # still being counted: what is done, without a share or an end
            parts = [self.stage, f"{self.done:.2f} {self.unit}"]
        else:
            share = self.done / total if total else 1.0
            parts = [f"{self.stage} {100 * share:3.0f}%", f"{self.done:.2f}/{total:.2f} {self.unit}"]
        if rate > 0:
            parts.append(f"{rate:.2f} {self.unit}/s")
            if total is not None and self.done < total:
                parts.append(f"eta {max(0.0, (total - self.done) / rate):.0f} s")
        if note:
            parts.append(note)
        self.console.print(escape("  ".join(parts)), highlight=False, soft_wrap=True)


class _Amount(ProgressColumn):
    """``12.3/40.0 Mpx``, or ``12.3 Mpx`` while the total is still counted."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        of = "" if task.total is None else f"/{task.total:.1f}"
        return Text(f"{task.completed:.1f}{of} {self.unit}")


@contextlib.contextmanager
def meter(console: Console, stage: str, total: float | None, unit: str) -> Iterator[Meter]:
    """A :class:`Meter` for one stage: a transient rich bar on a terminal, timed log lines elsewhere. A log
    says the total in a line of its own (``predict: 12.00 Mpx to do``), at once or when :meth:`Meter.set_total`
    gives it."""
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), _Amount(unit), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            yield Meter(console, stage, total, unit, progress)
        return
    bar = Meter(console, stage, total, unit, None)
    yield bar
    bar.flush()
    bar._line("done")
