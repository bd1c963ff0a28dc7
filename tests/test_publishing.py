"""The publishing process of in-process jobs (geoseg.inference.publishing): same bytes as publishing here, one
failed scene per dead process, nothing left running."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from geoseg.bundle import init_bundle, load_bundle
from geoseg.errors import GeoSegError
from geoseg.inference import job as job_module
from geoseg.inference.executor import LocalExecutor
from geoseg.inference.job import predict_archive
from geoseg.inference.options import PredictOptions
from geoseg.inference.publishing import MIN_SCENES, PublishingProcess
from geoseg.inference.scene import StagedScene, publish_scene, run_scene
from geoseg.inference.worker import ModelWorker
from geoseg.io import open_scene

# 80 x 70 scenes: one block with 128-px blocks (held in memory), several with 32-px blocks (staging files).
ONE_BLOCK = PredictOptions(tile=64, halo=8, block=128, batch_size=4)
MANY_BLOCKS = PredictOptions(tile=32, halo=4, block=32, batch_size=4)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=4)


def _staged(bundle: Path, make_geotiff, out: Path, options: PredictOptions, seed: int = 0) -> StagedScene:
    pixels = np.random.default_rng(seed).integers(1, 255, (3, 70, 80)).astype(np.uint8)
    spec, model = load_bundle(bundle)
    executor = LocalExecutor(ModelWorker(spec, model.state_dict()))
    scene = open_scene(make_geotiff(pixels, name=f"in_{seed}.tif"))
    return run_scene(scene, spec, executor, out, options.resolved(spec.geometry())).stage()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("options", [ONE_BLOCK, MANY_BLOCKS], ids=["held block", "staging file"])
def test_a_scene_published_in_the_process_is_the_same_bytes_as_here(bundle, make_geotiff, tmp_path, options) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    expected = publish_scene(_staged(bundle, make_geotiff, here / "s.tif", options))
    assert (_staged(bundle, make_geotiff, tmp_path / "probe.tif", options).held is None) == (options is MANY_BLOCKS)
    publisher = PublishingProcess()
    try:
        published = publisher(_staged(bundle, make_geotiff, there / "s.tif", options))
    finally:
        publisher.close()
    assert published.sha256 == expected.sha256
    assert _digests(there) == _digests(here) and len(_digests(here)) == 4  # COG, .aux.xml, .qml, .png
    assert not publisher._idle  # closed: no child left


def test_a_failed_scene_comes_back_as_its_error_and_the_process_goes_on(bundle, make_geotiff, tmp_path) -> None:
    publisher = PublishingProcess()
    try:
        bad = _staged(bundle, make_geotiff, tmp_path / "a" / "s.tif", MANY_BLOCKS)
        bad.classes[0].unlink()  # its staging file is gone
        with pytest.raises(Exception, match=r"No such file|does not exist|not recognized") as raised:
            publisher(bad)
        assert not isinstance(raised.value, RuntimeError) or "publishing process" not in str(raised.value)
        [child] = publisher._idle
        good = publisher(_staged(bundle, make_geotiff, tmp_path / "b" / "s.tif", MANY_BLOCKS, seed=1))
        assert publisher._idle == [child]  # the same process published the next scene
        assert Path(good.outputs["output"]).exists()
    finally:
        publisher.close()


class _DiesWhenUnpickled:
    """Kills the process that unpickles it: a publishing process that dies with a scene in hand."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (3,)


def test_a_dead_publishing_process_fails_one_scene_and_the_next_starts_another(bundle, make_geotiff, tmp_path) -> None:
    publisher = PublishingProcess()
    try:
        publisher(_staged(bundle, make_geotiff, tmp_path / "a" / "s.tif", ONE_BLOCK))
        [first] = publisher._idle
        os.kill(first.pid, signal.SIGKILL)  # an OOM kill between two scenes: replaced before use
        first.wait()
        assert Path(
            publisher(_staged(bundle, make_geotiff, tmp_path / "b" / "s.tif", ONE_BLOCK, 1)).outputs["output"]
        ).exists()
        [second] = publisher._idle
        assert second.pid != first.pid
        with pytest.raises(RuntimeError, match=r"the publishing process ended \(exit status 3\)"):
            publisher(_DiesWhenUnpickled())  # type: ignore[arg-type]
        assert not publisher._idle
        third = publisher(_staged(bundle, make_geotiff, tmp_path / "c" / "s.tif", MANY_BLOCKS, seed=3))
        assert Path(third.outputs["output"]).exists()
    finally:
        publisher.close()


def test_an_archive_job_publishes_in_its_process_with_the_same_bytes(
    bundle, make_geotiff, tmp_path, monkeypatch
) -> None:
    scenes = [
        make_geotiff(np.random.default_rng(i).integers(1, 255, (3, 70, 80)).astype(np.uint8), name=f"s{i}.tif")
        for i in range(MIN_SCENES)
    ]
    started: list[PublishingProcess] = []
    original = PublishingProcess.__call__

    def spy(self: PublishingProcess, staged: StagedScene):
        started.append(self)
        return original(self, staged)

    monkeypatch.setattr(PublishingProcess, "__call__", spy)
    inputs = [str(s) for s in scenes]
    reports = predict_archive(bundle, inputs, tmp_path / "child", ONE_BLOCK, in_process=True)
    assert len(started) == MIN_SCENES and all(r.status == "ok" for r in reports)
    monkeypatch.setattr(job_module, "MIN_SCENES", MIN_SCENES + 1)  # too few scenes: publishing in threads here
    predict_archive(bundle, inputs, tmp_path / "here", ONE_BLOCK, in_process=True)
    assert len(started) == MIN_SCENES
    products = {n: d for n, d in _digests(tmp_path / "here").items() if not n.startswith(("manifest", "report"))}
    assert products and {n: _digests(tmp_path / "child")[n] for n in products} == products


def test_errors_cross_the_pipe_as_themselves() -> None:
    import pickle

    error = GeoSegError("cannot read pixels", "/data/x.tif")
    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, GeoSegError) and str(back) == str(error)


def test_an_error_that_does_not_pickle_crosses_as_its_text() -> None:
    """What a publishing process replies and a Ray group returns: the error itself when it pickles, else its
    type and text (a reply that cannot be sent would fail more than its own scene)."""
    from geoseg.errors import portable

    class Unpicklable(Exception):
        def __init__(self) -> None:
            super().__init__("GDAL said no")
            self.handle = lambda: None  # a lambda does not pickle

    error = GeoSegError("cannot read pixels", "/data/x.tif")
    assert portable(error) is error
    text = portable(Unpicklable())
    assert type(text) is RuntimeError and str(text) == "Unpicklable: GDAL said no"
