"""Scene headers read on a thread while the stream runs (geoseg.inference.headers)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from geoseg.errors import GeoSegError
from geoseg.inference.headers import HeaderReader
from geoseg.io.raster import SceneInfo, open_scene


def test_headers_come_in_order_with_each_failure_in_its_place(make_geotiff, tmp_path) -> None:
    """Every scene comes out once, in the job's order; a bad one is its own failure (any exception), the rest
    go on; the total counts the readable scenes only, and is given once, after the last header."""
    good = [make_geotiff(np.zeros((1, 10 * (i + 1), 20), np.float32), name=f"g{i}.tif") for i in range(3)]
    missing = tmp_path / "missing.tif"
    todo = [(str(good[0]), "a"), (str(missing), "b"), (str(good[1]), "c"), ("boom", "d"), (str(good[2]), "e")]

    def open_one(path: str, name: str) -> SceneInfo:
        if path == "boom":
            raise ValueError("not a GeoSegError")
        return open_scene(path)

    totals: list[float] = []
    with HeaderReader(todo, open_one, totals.append) as headers:
        out = list(headers)
    assert [name for name, _ in out] == ["a", "b", "c", "d", "e"]
    assert isinstance(out[1][1], GeoSegError) and str(missing) in str(out[1][1])
    assert isinstance(out[3][1], ValueError)
    assert [o.height for _, o in out if isinstance(o, SceneInfo)] == [10, 20, 30]
    assert totals == [pytest.approx((10 + 20 + 30) * 20 / 1e6)]


def test_the_first_header_is_taken_before_the_last_is_read(make_geotiff) -> None:
    """The stream starts on the first scene while later headers are still being read (the point of the thread):
    here the third header waits until the consumer has taken the first."""
    path = str(make_geotiff(np.zeros((1, 8, 8), np.float32), name="s.tif"))
    taken = threading.Event()

    def open_one(source: str, name: str) -> SceneInfo:
        if name == "third":
            assert taken.wait(timeout=30), "the consumer never got the first header"
        return open_scene(source)

    with HeaderReader([(path, "first"), (path, "second"), (path, "third")], open_one) as headers:
        names = []
        for name, _ in headers:
            names.append(name)
            taken.set()
    assert names == ["first", "second", "third"]


def test_an_error_that_is_not_a_scenes_is_raised_in_the_consumer(make_geotiff) -> None:
    """A failing progress callback is the job's problem, not a scene's: raised where the stream is consumed."""
    path = str(make_geotiff(np.zeros((1, 8, 8), np.float32), name="s.tif"))

    def counted(total: float) -> None:
        raise RuntimeError("progress broke")

    reader = HeaderReader([(path, "a")], lambda source, name: open_scene(source), counted)
    with pytest.raises(RuntimeError, match="progress broke"), reader as headers:
        list(headers)


def test_leaving_early_stops_the_thread(make_geotiff) -> None:
    """A consumer that stops (Ctrl-C, a failed pool) stops the reading after the header in hand."""
    path = str(make_geotiff(np.zeros((1, 8, 8), np.float32), name="s.tif"))
    opened: list[str] = []
    reader: HeaderReader[str]

    def open_one(source: str, name: str) -> SceneInfo:
        opened.append(name)
        if name == "1":  # the header in hand when the consumer leaves
            assert reader._stop.wait(timeout=30)
        return open_scene(source)

    reader = HeaderReader([(path, str(i)) for i in range(1000)], open_one)
    with reader as headers:
        assert next(iter(headers))[0] == "0"
    assert not reader._thread.is_alive()
    assert opened == ["0", "1"]
