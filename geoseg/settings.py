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


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file and the line."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
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
