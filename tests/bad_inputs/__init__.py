"""The bad-input corpus, generated in code: every kind of broken or awkward input a user can hand geoseg.

``scene_cases`` are scenes for one predict job (each either fails with a one-line reason while the others
finish, or is handled and checked by value); ``bundle_cases`` and ``config_cases`` break the job itself.
Nothing here is a stored binary: each case is written on demand into a test's temporary folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE

BANDS = 3
TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_800_000)


@dataclass(frozen=True)
class SceneCase:
    """A scene for a 3-band model. ``error`` is the expected cause, or None when the scene must work."""

    name: str
    write: Callable[[Path], None]
    error: str | None = None


def write_geotiff(path: Path, data: np.ndarray, **profile: object) -> None:
    kwargs = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
    } | profile
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)


def _image(height: int, width: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, (BANDS, height, width)).astype(dtype)


def _truncated(path: Path) -> None:
    # Tiled and uncompressed, header intact: the file opens, then tile reads run past its end.
    write_geotiff(path, _image(256, 256, 1), tiled=True, blockxsize=64, blockysize=64)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _not_a_tiff(path: Path) -> None:
    path.write_text("<html>404 Not Found</html>\n")


def _nan_inf(path: Path) -> None:
    data = _image(120, 100, 2, "float32")
    data[:, 10:30, 10:30] = np.nan
    data[1, 60:70, 40:90] = np.inf
    data[2, 90:95, 0:20] = -np.inf
    write_geotiff(path, data)


SCENE_CASES = [
    SceneCase("truncated", _truncated, "cannot read pixels at row"),
    SceneCase("not_a_tiff", _not_a_tiff, "cannot open as a raster"),
    SceneCase("no_crs", lambda p: write_geotiff(p, _image(40, 40), crs=None), "no CRS"),
    SceneCase(
        "no_geotransform",
        lambda p: write_geotiff(p, _image(40, 40), crs=None, transform=Affine.identity()),
        "no geotransform",
    ),
    SceneCase("two_bands", lambda p: write_geotiff(p, _image(40, 40)[:2]), "has 2 bands, the model expects 3"),
    SceneCase(
        "complex",
        lambda p: write_geotiff(p, _image(40, 40, dtype="complex64")),
        "unsupported pixel type complex64",
    ),
    SceneCase("all_nodata", lambda p: write_geotiff(p, np.zeros((BANDS, 90, 70), np.uint16), nodata=0)),
    SceneCase("nan_inf", _nan_inf),
    SceneCase("one_pixel", lambda p: write_geotiff(p, _image(1, 1, 3))),
    SceneCase("line_70000x1", lambda p: write_geotiff(p, _image(1, 70_000, 4), tiled=False)),
    SceneCase(
        "rotated",
        lambda p: write_geotiff(p, _image(80, 60, 5), transform=Affine(8, 3, 500_000, 2, -9, 5_800_000)),
    ),
]


def write_scene_cases(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in SCENE_CASES:
        path = folder / f"{case.name}.tif"
        case.write(path)
        paths[case.name] = path
    return paths


def break_bundle(bundle: Path, how: str) -> str:
    """Damage a copy of a bundle in place; returns the cause the CLI must print."""
    weights, spec_path = bundle / WEIGHTS_FILE, bundle / SPEC_FILE
    if how == "corrupt_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
        return "corrupt weights"
    if how == "incompatible_version":
        spec = json.loads(spec_path.read_text())
        spec["format_version"] = 99
        spec_path.write_text(json.dumps(spec))
        return "bundle format 99 is not supported"
    if how == "pickle_payload":
        torch.save({"weight": _Payload(str(bundle / "pwned"))}, weights)
        return "refused to load weights"
    raise ValueError(how)


class _Payload:
    """Unpickling this would create a file: proof that a refused bundle ran nothing."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.marker, "w"))


CONFIG_CASES = {
    "bad_yaml": ("model: [unclosed\ninput: x\n", "invalid YAML at line"),
    "unknown_key": ("model: m\ntiles: 3\n", "config key tiles: Extra inputs are not permitted"),
    "python_tag": ("model: !!python/object/apply:os.system ['touch pwned']\n", "invalid YAML"),
}
