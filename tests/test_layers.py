"""The package's own rules, checked on its import graph (every import statement, lazy and type-only ones too):
no module imports itself in a loop; engine modules import neither Ray nor the CLI; io knows no torch, no bundle
and nothing above it; models sit below inference."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoseg"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module's imports, resolved to module names (``from a import b`` counts ``a.b`` when that is one)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
        graph[name] = found
    return graph


GRAPH = _imports()


def _internal(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in GRAPH and m != name}


def test_no_module_imports_itself_in_a_loop() -> None:
    index, low, stack, on_stack, loops = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in _internal(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    # the package's __init__ re-exports nothing that closes a loop; a submodule importing its package's
    # __init__ (geoseg) for __version__ is not a loop of code
    loops = [c for c in loops if c != ["geoseg"]]
    assert not loops, loops


def _reaches(name: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in GRAPH[name] if m.startswith(prefixes))


@pytest.mark.parametrize("name", sorted(m for m in GRAPH if m.startswith("geoseg.io")))
def test_io_knows_no_torch_no_bundle_and_nothing_above_it(name: str) -> None:
    banned = ("torch", "ray", "geoseg.bundle", "geoseg.inference", "geoseg.training", "geoseg.models", "geoseg.cli")
    assert not _reaches(name, banned), _reaches(name, banned)


@pytest.mark.parametrize("name", [*sorted(m for m in GRAPH if m.startswith("geoseg.models")), "geoseg.bundle"])
def test_models_and_bundles_sit_below_inference(name: str) -> None:
    banned = ("geoseg.inference", "geoseg.training", "geoseg.cli", "ray")
    assert not _reaches(name, banned), _reaches(name, banned)


@pytest.mark.parametrize(
    "name", ["geoseg.inference.tiling", "geoseg.vector.polygonize", "geoseg.vector.dissolve", "geoseg.geometry"]
)
def test_engine_modules_import_neither_ray_nor_the_cli(name: str) -> None:
    assert not _reaches(name, ("ray", "geoseg.cli", "torch")), _reaches(name, ("ray", "geoseg.cli", "torch"))


def test_nothing_imports_the_cli() -> None:
    users = sorted(m for m, imports in GRAPH.items() if "geoseg.cli" in imports and m != "geoseg.__main__")
    assert not users, users
