"""Progress in a batch log (geoseg.progress): timed lines, stage changes without a line per scene."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from geoseg import progress
from geoseg.progress import meter


def _log(run) -> list[str]:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    run(Console(file=out, force_terminal=False, width=200))
    return out.getvalue().splitlines()


def test_stage_changes_in_quick_succession_wait_for_the_next_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSEG_PROGRESS_INTERVAL", "3600")

    def job(console: Console) -> None:
        with meter(console, "predict", 4.0, "Mpx") as bar:
            for name in "abcd":  # scenes finishing faster than one a second: one stage line at most
                bar.advance(1.0)
                bar.describe(f"publishing {name}")

    log = _log(job)
    assert log[0] == "predict: 4.00 Mpx to do"
    assert [line for line in log if "publishing" in line] == [line for line in log if "publishing d" in line]
    assert log[-1].startswith("predict 100%  4.00/4.00 Mpx") and log[-1].endswith("done")
    assert len(log) == 3  # the last stage change is printed before the end: never lost


def test_a_stage_change_after_a_quiet_while_is_printed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSEG_PROGRESS_INTERVAL", "3600")
    monkeypatch.setattr(progress, "STAGE_GAP", 0.0)

    def job(console: Console) -> None:
        with meter(console, "predict", 2.0, "Mpx") as bar:
            bar.advance(1.0)
            bar.describe("publishing a")
            bar.advance(1.0)
            bar.describe("publishing b")

    log = _log(job)
    assert [line.split("  ")[-1] for line in log[1:]] == ["publishing a", "publishing b", "done"]


def test_a_total_counted_while_the_stage_runs_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose headers are still being read starts with no total: its lines say what is done (no share, no
    eta), the total gets its ``to do`` line when it is known, and the lines after it have their share."""
    monkeypatch.setenv("GEOSEG_PROGRESS_INTERVAL", "0")

    def job(console: Console) -> None:
        with meter(console, "predict", None, "Mpx") as bar:
            bar.advance(1.0)
            bar.set_total(4.0)
            bar.advance(3.0)

    log = _log(job)
    assert log[0].startswith("predict  1.00 Mpx") and "%" not in log[0] and "eta" not in log[0]
    assert log[1] == "predict: 4.00 Mpx to do"
    assert log[2].startswith("predict 100%  4.00/4.00 Mpx")
    assert log[-1].endswith("done") and "4.00/4.00" in log[-1]


def test_a_bar_takes_a_total_counted_later() -> None:
    """On a terminal the bar starts without a total and gets it later; no ``to do`` line is printed there."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with meter(console, "predict", None, "Mpx") as bar:
        assert bar._progress is not None and bar._task is not None
        assert bar._progress.tasks[0].total is None
        bar.set_total(2.0)
        assert bar._progress.tasks[0].total == 2.0
        bar.advance(2.0)
        assert bar._progress.tasks[0].completed == 2.0
    assert "to do" not in out.getvalue()
