"""Packaging stays consistent: Docker images pin what pyproject pins; CI calls the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?==(.+)", dep)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_docker_images_pin_the_project_versions() -> None:
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for dockerfile in sorted((REPO / "docker").glob("Dockerfile*")):
        text = dockerfile.read_text()
        for name in ("torch", "torchvision"):
            assert f'"{name}=={pins[name]}"' in text, (dockerfile.name, name)
        assert "pip install ." in text, dockerfile.name  # the rest comes from pyproject itself
        assert re.search(r"^FROM \S+:\S+", text, re.M), "base images are tagged"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "GEOSEG_REQUIRE_REAL_DATA=1" in ci
