"""The one table format every benchmark prints (and optionally saves as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

Row = tuple[str, float, str, str]  # metric, ratio, target, detail


def print_table(rows: list[Row], json_path: Path | None = None) -> None:
    width = max(len(name) for name, *_ in rows) + 2
    print(f"{'metric':<{width}}{'ratio':>8}  {'target':<9}detail")
    for name, ratio, target, detail in rows:
        print(f"{name:<{width}}{ratio:>8.3f}  {target:<9}{detail}")
    if json_path:
        json_path.write_text(json.dumps({name: ratio for name, ratio, _, _ in rows}, indent=2))
