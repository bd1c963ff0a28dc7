"""What every geoseg YAML file and pydantic model shares: strict models (unknown keys are errors), YAML read with
``safe_load`` (nothing is ever imported or evaluated), and validation errors as one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from geoseg.errors import GeoSegError


class Strict(BaseModel):
    """A pydantic model that refuses unknown keys (a typo is an error, not a silently ignored option)."""

    model_config = ConfigDict(extra="forbid")


def _repeated_key(root: yaml.Node | None) -> yaml.Node | None:
    """The first mapping key given twice in a composed YAML document (YAML keeps the last one silently, so a
    job file with two ``tile:`` lines ran with whichever came last). Aliased nodes are visited once."""
    seen: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        return key
                    keys.add(key.value)
                todo.append(value)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    return None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping, read with ``safe_load`` (nothing is imported or run); errors name
    the file and the line. UTF-8, with or without a BOM; a key given twice is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        repeated = _repeated_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if repeated is not None:
            line = repeated.start_mark.line + 1
            raise GeoSegError(f"key {repeated.value!r} is given twice (again at line {line}): say it once", path)
        tree = yaml.safe_load(text) or {}
    except UnicodeDecodeError as exc:
        raise GeoSegError(f"cannot read config: not UTF-8 text (byte {exc.start})", path) from exc
    except OSError as exc:
        raise GeoSegError(f"cannot read config ({exc.strerror})", path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GeoSegError(f"invalid YAML{where}: {getattr(exc, 'problem', exc)}", path) from exc
    if not isinstance(tree, dict):
        raise GeoSegError("config must be a mapping of keys to values", path)
    return tree


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config key {where}: {first['msg']}{more}"


def validated(model: type[Any], tree: dict[str, Any], path: str | Path | None = None) -> Any:
    """``model`` validated from ``tree``; the first error as one line naming the key (and the file)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise GeoSegError(first_error(exc), path) from exc
