"""Run a PyQGIS script the way a GIS user's QGIS opens our files: Debian's ``python3-qgis``, headless.

PyQGIS lives in the system Python, not in the project's virtual environment, so each check is a short script
run by ``/usr/bin/python3`` that prints one JSON object. Tests skip when PyQGIS is missing on a developer's
machine; CI installs it (``.ci/run``) and sets ``GEOSEG_REQUIRE_QGIS=1``, so there a missing QGIS fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"

PRELUDE = """
import json, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
"""


def qgis_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=120)
    return probe.returncode == 0


def run_qgis(script: str, tmp_path: Path) -> Any:
    """Run ``script`` (after a prelude that starts QGIS) and return the JSON it printed last."""
    if not qgis_available():
        if os.environ.get("GEOSEG_REQUIRE_QGIS") == "1":
            pytest.fail("PyQGIS (python3-qgis) is not installed, and GEOSEG_REQUIRE_QGIS=1")
        pytest.skip("PyQGIS (python3-qgis) not installed: the QGIS client checks need it")
    path = tmp_path / "qgis_check.py"
    path.write_text(PRELUDE + textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([SYSTEM_PYTHON, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
