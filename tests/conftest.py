"""Shared fixtures: one local Ray per session, real data location, tiny generated GeoTIFFs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from bad_inputs import TRANSFORM, write_geotiff

from geoseg.cluster import configure_ray_env, ray_session

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"rt-{os.getpid()}"))
configure_ray_env()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """The session's Ray: 2 CPUs, loopback only, stopped by its own handle at the end."""
    with ray_session(num_cpus=2, object_store_memory=512 * 2**20):
        yield


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``GEOSEG_TEST_DATA`` (default ``../shared/data``); CI sets GEOSEG_REQUIRE_REAL_DATA=1 so absence fails."""
    path = Path(os.environ.get("GEOSEG_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "nc_landsat").is_dir():
        reason = f"real test data not found at {path} (set GEOSEG_TEST_DATA)"
        if os.environ.get("GEOSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


GeoTiffFactory = Callable[..., Path]


@pytest.fixture
def make_geotiff(tmp_path: Path) -> GeoTiffFactory:
    """Write a small georeferenced GeoTIFF from an array ``[bands, h, w]`` (or ``[h, w]``)."""

    def factory(
        data: np.ndarray,
        name: str = "scene.tif",
        crs: str | None = "EPSG:32633",
        transform: Affine | None = None,
        nodata: float | None = None,
        **profile: object,
    ) -> Path:
        array = data if data.ndim == 3 else data[None]
        path = tmp_path / name
        write_geotiff(path, array, crs=crs, transform=transform or TRANSFORM, nodata=nodata, **profile)
        return path

    return factory
