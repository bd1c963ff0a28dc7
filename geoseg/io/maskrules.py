"""Which pixels a mask hides, and where a job's masks come from: the values side of :mod:`geoseg.io.masks`.

Kept apart from the reading so that :class:`geoseg.io.raster.SceneInfo` can name :class:`SceneMask` without
importing the reader (which reads through :mod:`geoseg.io.raster`): see the presets' sources in
:mod:`geoseg.io.masks`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.errors import GeoSegError
from geoseg.io.paths import is_virtual

SCL_NOT_GROUND = (0, 3, 8, 9, 10)
SCL_SNOW = 11
QA_PIXEL_NOT_GROUND = (0, 1, 2, 3, 4)  # bits: fill, dilated cloud, cirrus, cloud, cloud shadow
QA_PIXEL_SNOW = 5
PRESETS = ("scl", "scl-snow", "qa-pixel", "qa-pixel-snow")


@dataclass(frozen=True)
class MaskRule:
    """Which mask values hide a pixel: any of ``values``, or any of the ``bits`` set (bit 0 = least significant)."""

    values: frozenset[int] = frozenset()
    bits: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> MaskRule:
        """A preset (``scl``, ``scl-snow``, ``qa-pixel``, ``qa-pixel-snow``), values (``2,4``) or bits
        (``bits:1,3,4``); ``ValueError`` with the reason otherwise."""
        spec = text.strip().lower().replace("_", "-")
        if spec in ("scl", "scl-snow"):
            return cls(values=frozenset(SCL_NOT_GROUND + ((SCL_SNOW,) if spec.endswith("snow") else ())))
        if spec in ("qa-pixel", "qa-pixel-snow"):
            return cls(bits=frozenset(QA_PIXEL_NOT_GROUND + ((QA_PIXEL_SNOW,) if spec.endswith("snow") else ())))
        bits = spec.startswith("bits:")
        numbers = spec.removeprefix("bits:")
        if not re.fullmatch(r"\d+(,\d+)*", numbers.replace(" ", "")):
            raise ValueError(f"expected a preset ({', '.join(PRESETS)}), values like 2,4 or bits like bits:1,3")
        parsed = frozenset(int(v) for v in numbers.replace(" ", "").split(","))
        if bits and max(parsed) > 31:
            raise ValueError("bits are numbered 0 to 31")
        return cls(bits=parsed) if bits else cls(values=parsed)

    @classmethod
    def default_for(cls, asset: str) -> MaskRule | None:
        """The preset an asset key implies (``SCL``, ``qa_pixel``), or None."""
        key = asset.strip().lower().replace("_", "-")
        return cls.parse("scl") if key == "scl" else cls.parse("qa-pixel") if key in ("qa-pixel", "qa") else None

    def masked(self, values: np.ndarray) -> np.ndarray:
        """Bool array: True where ``values`` (integers) hide the pixel."""
        out = np.zeros(values.shape, dtype=bool)
        if self.values:
            out |= np.isin(values, np.fromiter(sorted(self.values), dtype=np.int64))
        if self.bits:
            flags = sum(1 << b for b in self.bits)
            out |= (values.astype(np.int64) & flags) != 0
        return out

    def key(self) -> str:
        parts = [f"values:{','.join(map(str, sorted(self.values)))}"] if self.values else []
        parts += [f"bits:{','.join(map(str, sorted(self.bits)))}"] if self.bits else []
        return " ".join(parts)


@dataclass(frozen=True)
class MaskOptions:
    """A job's masks: from a STAC asset (``asset``) or a file pattern (``pattern``), the ``rule`` saying which
    values mask, and a ``buffer_m`` grown around masked pixels."""

    rule: MaskRule
    asset: str | None = None
    pattern: str | None = None
    buffer_m: float = 0.0

    def __post_init__(self) -> None:
        if (self.asset is None) == (self.pattern is None):
            raise GeoSegError("a mask comes from a STAC asset (--mask-asset) or a file pattern (--mask-file), one")
        if not math.isfinite(self.buffer_m) or self.buffer_m < 0:
            raise GeoSegError(f"--mask-buffer {self.buffer_m}: a distance in metres, 0 or more")

    def key(self) -> str:
        """What decides the rasters (part of the job's fingerprint: changing it reruns the model)."""
        source = f"asset:{self.asset}" if self.asset else f"file:{self.pattern}"
        return f"{source} {self.rule.key()} buffer:{self.buffer_m:g}m"

    def file_for(self, scene_file: str) -> str:
        """The mask file of a scene file by the pattern: ``{stem}`` (file name without suffix) and ``{name}``
        (file name); a relative pattern is taken from the scene's folder."""
        assert self.pattern is not None
        base = scene_file.rstrip("/").rsplit("/", 1)
        folder, name = (base[0], base[1]) if len(base) == 2 else ("", base[0])
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        try:
            relative = self.pattern.format(stem=stem, name=name)
        except (KeyError, IndexError, ValueError) as exc:
            raise GeoSegError(f"--mask-file {self.pattern!r}: only {{stem}} and {{name}} are known ({exc})") from None
        if is_virtual(relative) or Path(relative).is_absolute() or not folder:
            return relative
        return f"{folder}/{relative}"


@dataclass(frozen=True)
class SceneMask:
    """A scene's mask as a reader uses it: the raster (any grid), the rule, the buffer in metres."""

    path: str
    rule: MaskRule
    buffer_m: float = 0.0
