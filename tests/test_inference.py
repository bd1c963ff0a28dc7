"""Prediction: georeferencing on real imagery, nodata, determinism across workers/batches, bad scenes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from geoseg.bundle import init_bundle, load_bundle
from geoseg.inference.job import predict_archive
from geoseg.inference.predictor import Predictor
from geoseg.inference.reader import Normalisation
from geoseg.inference.scene import LocalExecutor, PredictOptions, predict_scene
from geoseg.io import open_scene
from geoseg.io.writer import CLASS_NODATA

OPTIONS = PredictOptions(tile=96, halo=8, overlap=8, batch_size=4)


@pytest.fixture(scope="module")
def bundle3(tmp_path_factory):
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=1)


@pytest.fixture(scope="module")
def bundle5(tmp_path_factory):
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 5, 3, base_channels=4, depth=2, seed=2)


def _local(bundle, scene_path, out, options=OPTIONS):
    spec, model = load_bundle(bundle)
    predictor = Predictor(spec, model.state_dict())
    executor = LocalExecutor(predictor, Normalisation.from_spec(spec), options)
    return predict_scene(open_scene(scene_path), spec, executor, out, options)


@pytest.mark.realdata
def test_output_is_georeferenced_like_the_real_input(real_data, bundle3, tmp_path) -> None:
    source = real_data / "rgb_byte" / "RGB.byte.tif"
    report = _local(bundle3, source, tmp_path / "rgb.tif")
    with rasterio.open(source) as src, rasterio.open(report.output) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        input_nodata = ~np.all(src.read_masks() > 0, axis=0)
        classes = out.read(1)
    assert input_nodata.any() and (classes[input_nodata] == CLASS_NODATA).all()
    assert (classes[~input_nodata] < 4).all()
    assert report.tiles_skipped_nodata > 0 and report.tiles_run > 0
    assert report.pixels == 791 * 718


@pytest.mark.realdata
@pytest.mark.ray
def test_ray_output_is_byte_identical_to_local_for_any_workers_and_batch(
    ray_local, real_data, bundle5, tmp_path
) -> None:
    source = real_data / "nc_landsat" / "landsat_multiband.tif"
    local = _local(bundle5, source, tmp_path / "local.tif")
    reference = (tmp_path / "local.tif").read_bytes()
    for workers, batch in [(1, 1), (2, 5)]:
        options = PredictOptions(tile=96, halo=8, overlap=8, batch_size=batch)
        out = tmp_path / f"w{workers}b{batch}"
        [report] = predict_archive(bundle5, [str(source)], out, options, workers=workers)
        assert report.status == "ok" and report.tiles == local.tiles
        assert (out / "landsat_multiband.tif").read_bytes() == reference, (workers, batch)


@pytest.mark.ray
def test_bad_scenes_are_reported_and_the_others_finish(ray_local, make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(0)
    good = make_geotiff(rng.integers(1, 200, (3, 150, 170)).astype(np.uint8), name="good.tif")
    two_bands = make_geotiff(np.ones((2, 30, 30), np.uint8), name="two_bands.tif")
    not_tiff = tmp_path / "junk.tif"
    not_tiff.write_bytes(b"II*\x00garbage")
    out = tmp_path / "job"
    reports = predict_archive(bundle3, [str(not_tiff), str(two_bands), str(good)], out, OPTIONS)
    status = {r.scene: (r.status, r.error) for r in reports}
    assert status["good"] == ("ok", None)
    assert status["two_bands"][0] == "failed" and "has 2 bands, the model expects 3" in status["two_bands"][1]
    assert status["junk"][0] == "failed" and str(not_tiff) in status["junk"][1]
    assert sorted(p.name for p in out.iterdir()) == ["good.tif", "manifest.json", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["scenes_ok"] == 1 and report["summary"]["scenes_failed"] == 2
    assert report["summary"]["megapixels"] == pytest.approx(150 * 170 / 1e6, abs=1e-3)


def test_inputs_expand_from_folders_globs_and_lists(make_geotiff, tmp_path) -> None:
    from geoseg.inference.job import expand_inputs, output_name

    a = make_geotiff(np.ones((1, 4, 4), np.uint8), name="a.tif")
    b = make_geotiff(np.ones((1, 4, 4), np.uint8), name="b.tif")
    listing = tmp_path / "scenes.csv"
    listing.write_text(f"path,note\n{b},x\n")
    assert expand_inputs([str(tmp_path)]) == [a, b]
    assert expand_inputs([str(tmp_path / "*.tif"), str(listing)]) == [a, b]
    taken: set[str] = set()
    assert [output_name(p, taken) for p in [a, a, tmp_path / "..evil name.tif"]] == ["a", "a_2", "evil_name"]


def test_nothing_to_predict_is_an_error(bundle3, tmp_path) -> None:
    from geoseg.errors import GeoSegError

    shutil.rmtree(tmp_path / "none", ignore_errors=True)
    with pytest.raises(GeoSegError, match="no input scenes found"):
        predict_archive(bundle3, [str(tmp_path / "none" / "*.tif")], tmp_path / "out", OPTIONS)


@pytest.mark.ray
def test_killing_an_actor_mid_scene_changes_nothing(ray_local, make_geotiff, bundle3, tmp_path) -> None:
    import ray

    from geoseg.inference.distributed import RayExecutor

    scene_path = make_geotiff(np.random.default_rng(3).integers(1, 255, (3, 300, 260)).astype(np.uint8))
    clean = _local(bundle3, scene_path, tmp_path / "clean.tif")
    spec, model = load_bundle(bundle3)
    executor = RayExecutor(spec, model.state_dict(), OPTIONS, workers=2)

    class KillingExecutor:
        parallelism = 2

        def run(self, work):
            def work_with_a_kill():
                for i, item in enumerate(work):
                    if i == 3:
                        ray.kill(executor.actors[0], no_restart=True)
                    yield item

            return executor.run(work_with_a_kill())

    try:
        report = predict_scene(open_scene(scene_path), spec, KillingExecutor(), tmp_path / "killed.tif", OPTIONS)
    finally:
        executor.shutdown()
    assert executor.restarts >= 1
    assert report.tiles_run == clean.tiles_run
    assert (tmp_path / "killed.tif").read_bytes() == (tmp_path / "clean.tif").read_bytes()


@pytest.mark.realdata
def test_tiled_equals_whole_image_inference_on_a_real_image(real_data, tmp_path) -> None:
    """With a halo covering the receptive field, tiling + blending reproduces whole-image inference."""
    import torch

    bundle = init_bundle(tmp_path / "b", "unet", 5, 4, base_channels=4, depth=3, seed=4)
    source = real_data / "nc_landsat" / "landsat_multiband.tif"
    options = PredictOptions(tile=160, halo=48, overlap=16, batch_size=3)
    report = _local(bundle, source, tmp_path / "tiled.tif", options)
    spec, model = load_bundle(bundle)
    norm = Normalisation.from_spec(spec)
    halo = options.halo
    with rasterio.open(source) as src:
        from rasterio.windows import Window

        from geoseg.io.raster import read_tile

        raw, valid = read_tile(src, Window(-halo, -halo, src.width + 2 * halo, src.height + 2 * halo))
    data = np.where(valid, (raw - norm.mean) / norm.std, 0).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(data)[None])[0, :, halo:-halo, halo:-halo]
    whole = logits.argmax(0).numpy().astype(np.uint8)
    whole[~valid[halo:-halo, halo:-halo]] = CLASS_NODATA
    with rasterio.open(report.output) as out:
        tiled = out.read(1)
    agreement = (tiled == whole).mean()
    assert agreement >= 0.9999, agreement
    assert report.seam_pixels > 0 and report.seam_disagreement is not None and report.seam_disagreement < 1e-3


@pytest.mark.parametrize(("tiles_wide", "size", "parallel"), [(11, 4, 1), (11, 4, 2), (3, 4, 2), (1, 5, 4), (9, 1, 3)])
def test_batches_cover_every_tile_once_in_order_with_a_finer_tail(tiles_wide, size, parallel) -> None:
    from geoseg.inference.scene import batched
    from geoseg.tiling import TileGrid

    grid = TileGrid(tiles_wide * 64, 5 * 64, tile=64)
    batches = list(batched(grid, size, parallel))
    assert [t.index for batch in batches for t in batch] == list(range(len(grid)))
    assert all(1 <= len(batch) <= size for batch in batches)
    if parallel == 1:
        assert all(len(batch) == size for batch in batches[:-1])
    elif len(grid) > 2 * parallel * size:  # the last 2 x parallel batches' worth of tiles come in half batches
        tail = [len(batch) for batch in batches][-((2 * parallel * size) // max(1, size // 2)) :]
        assert sum(tail) == 2 * parallel * size and max(tail) == max(1, size // 2)


def test_stride_is_aligned_to_the_model_downsampling() -> None:
    assert PredictOptions(tile=256, halo=16, overlap=16).effective_overlap() == 32  # stride 192 = 6 x 32
    assert PredictOptions(tile=160, halo=48, overlap=16).effective_overlap() == 32  # stride 32
    assert PredictOptions(tile=64, halo=8, overlap=8).effective_overlap() == 16  # core 48: stride 32


def test_probability_raster(make_geotiff, bundle3, tmp_path) -> None:
    scene = make_geotiff(np.random.default_rng(5).integers(1, 255, (3, 120, 100)).astype(np.uint8), nodata=0)
    options = PredictOptions(tile=64, halo=8, overlap=8, batch_size=2, probabilities=True)
    report = _local(bundle3, scene, tmp_path / "p.tif", options)
    with rasterio.open(report.probabilities) as src, rasterio.open(report.output) as cls:
        probs, classes = src.read(), cls.read(1)
        assert src.count == 5 and src.descriptions[-1] == "confidence" and src.nodata == 255
        assert src.transform == cls.transform
    valid = classes != CLASS_NODATA
    total = probs[:4].astype(int).sum(axis=0)[valid]
    assert np.abs(total - 254).max() <= 3  # quantised probabilities sum to one
    np.testing.assert_array_equal(probs[4][valid], probs[:4].max(axis=0)[valid])
    assert (np.argmax(probs[:4], axis=0)[valid] == classes[valid]).mean() > 0.99


@pytest.mark.ray
def test_rerun_resumes_and_changed_options_redo(ray_local, make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(7)
    inputs = [
        str(make_geotiff(rng.integers(1, 255, (3, 90, 110)).astype(np.uint8), name=f"s{i}.tif")) for i in range(3)
    ]
    out = tmp_path / "job"
    first = predict_archive(bundle3, inputs, out, OPTIONS)
    digests = {r.scene: r.sha256 for r in first}
    (out / "s1.tif").unlink()  # lost output: must be redone
    second = predict_archive(bundle3, inputs, out, OPTIONS)
    assert [r.status for r in second] == ["skipped", "ok", "skipped"]
    assert {r.scene: r.sha256 for r in second} == digests
    third = predict_archive(bundle3, inputs, out, PredictOptions(tile=64, halo=8, overlap=8, batch_size=4))
    assert [r.status for r in third] == ["ok", "ok", "ok"]


@pytest.mark.realdata
@pytest.mark.ray
def test_landsat_band_files_stack_into_one_scene(ray_local, real_data, tmp_path) -> None:
    folder = real_data / "nc_landsat"
    bands = [folder / f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)]
    bundle = init_bundle(tmp_path / "b", "unet", 6, 3, base_channels=4, depth=2)
    [report] = predict_archive(bundle, ["+".join(map(str, bands))], tmp_path / "job", OPTIONS)
    assert report.status == "ok" and report.scene == "lsat7_2000"
    with rasterio.open(bands[0]) as src, rasterio.open(report.output) as out:
        assert out.transform == src.transform and out.crs == src.crs and out.shape == src.shape
        nodata = np.zeros(src.shape, bool)
        for band in bands:  # each file keeps its own nodata value (-99999, band 7: -32768)
            with rasterio.open(band) as b:
                nodata |= b.read_masks(1) == 0
        classes = out.read(1)
    assert nodata.any() and (classes[nodata] == CLASS_NODATA).all() and (classes[~nodata] < 3).all()


def test_band_files_on_different_grids_are_rejected(make_geotiff, tmp_path) -> None:
    from geoseg.errors import GeoSegError
    from geoseg.io.stack import build_stack_vrt

    a = make_geotiff(np.ones((1, 10, 10), np.uint8), name="a.tif")
    b = make_geotiff(np.ones((1, 10, 12), np.uint8), name="b.tif")
    with pytest.raises(GeoSegError, match=r"b\.tif: is not on the grid of the first band file"):
        build_stack_vrt([a, b], tmp_path / "s.vrt")


@pytest.mark.parametrize(
    ("width", "height", "transform"),
    [(1, 1, None), (70_000, 1, None), (50, 40, rasterio.Affine(8.66, 5, 500_000, 5, -8.66, 5_800_000))],
    ids=["1x1", "70000x1", "rotated"],
)
def test_any_raster_shape_and_rotated_transforms(make_geotiff, tmp_path, width, height, transform) -> None:
    bundle = init_bundle(tmp_path / "b", "unet", 2, 3, base_channels=4, depth=2)
    data = np.random.default_rng(0).random((2, height, width)).astype(np.float32)
    data[0, 0, 0] = np.nan  # NaN pixels are nodata, not a crash
    kwargs = {"transform": transform} if transform is not None else {}
    scene = make_geotiff(data, **kwargs)
    report = _local(bundle, scene, tmp_path / "out.tif", PredictOptions(tile=64, halo=8, overlap=8, batch_size=8))
    with rasterio.open(scene) as src, rasterio.open(report.output) as out:
        assert out.transform == src.transform and out.shape == (height, width)
        classes = out.read(1)
    assert classes[0, 0] == CLASS_NODATA
    assert (classes.ravel()[1:] < 3).all()


@pytest.mark.ray
def test_a_scene_is_published_while_the_next_one_is_predicted(
    ray_local, make_geotiff, bundle3, tmp_path, monkeypatch
) -> None:
    import threading

    from geoseg.inference import job, scene

    rng = np.random.default_rng(8)
    inputs = [
        str(make_geotiff(rng.integers(1, 255, (3, 90, 110)).astype(np.uint8), name=f"p{i}.tif")) for i in range(2)
    ]
    second_started = threading.Event()
    overlapped: list[bool] = []
    add, finish = scene.SceneStitch.add, scene.SceneStitch.finish

    def add_and_signal(self, output):
        add(self, output)
        if self.scene.name == "p1":  # p1's tiles are being stitched
            second_started.set()

    def finish_after_next_start(self):
        if self.scene.name == "p0":  # publishing p0 must not hold back p1: it waits for p1's tiles
            overlapped.append(second_started.wait(timeout=60))
        return finish(self)

    monkeypatch.setattr(scene.SceneStitch, "add", add_and_signal)
    monkeypatch.setattr(scene.SceneStitch, "finish", finish_after_next_start)
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS)
    assert overlapped == [True]
    assert [r.status for r in reports] == ["ok", "ok"]
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert all(manifest["scenes"][name]["sha256"] for name in ("p0", "p1"))
    for report in reports:  # the published files are the ones the manifest hashed
        assert job.file_sha256(tmp_path / "job" / f"{report.scene}.tif") == report.sha256


def test_stitched_scene_publishes_nothing_until_finished(make_geotiff, bundle3, tmp_path) -> None:
    from geoseg.inference.scene import stitch_scene

    path = make_geotiff(np.random.default_rng(9).integers(1, 255, (3, 70, 80)).astype(np.uint8))
    spec, model = load_bundle(bundle3)
    executor = LocalExecutor(Predictor(spec, model.state_dict()), Normalisation.from_spec(spec), OPTIONS)
    out = tmp_path / "out" / "scene.tif"
    stitched = stitch_scene(open_scene(path), spec, executor, out, OPTIONS)
    assert not out.exists()  # only staging files so far: a crash here leaves nothing that looks finished
    report = stitched.finish()
    assert out.exists() and report.status == "ok" and report.tiles_run == report.tiles
    assert sorted(p.name for p in out.parent.iterdir()) == ["scene.tif"]


class Lookahead:
    """An executor with ``depth`` batches in flight, as a Ray pool has: it takes items ahead of its results.

    Logs ``("in", key)`` per item taken and ``("out", key)`` per result; ``fail`` picks items whose result
    becomes an error.
    """

    parallelism = 2

    def __init__(self, inner, log, depth=3, fail=lambda item: False):
        self.inner, self.log, self.depth, self.fail = inner, log, depth, fail
        self.sizes: list[tuple[str, int]] = []  # (scene, batch size) per item taken

    def run(self, work):
        from collections import deque

        from geoseg.errors import GeoSegError

        queue = deque()

        def deliver():
            [(item, output)] = list(self.inner.run([queue.popleft()]))
            self.log.append(("out", item.key))
            return item, GeoSegError("corrupt block", item.scene.path) if self.fail(item) else output

        for item in work:
            self.log.append(("in", item.key))
            self.sizes.append((item.key, len(item.tiles)))
            queue.append(item)
            if len(queue) > self.depth:
                yield deliver()
        while queue:
            yield deliver()


def _stream(bundle, paths, out_dir, log, **lookahead):
    from geoseg.inference.scene import stitch_scenes

    spec, model = load_bundle(bundle)
    local = LocalExecutor(Predictor(spec, model.state_dict()), Normalisation.from_spec(spec), OPTIONS)
    targets = [(p.stem, open_scene(p), out_dir / p.name) for p in paths]
    executor = Lookahead(local, log, **lookahead)
    outcomes = {}
    for key, outcome in stitch_scenes(targets, spec, executor, OPTIONS):
        log.append(("settled", key))
        outcomes[key] = outcome.finish() if not isinstance(outcome, Exception) else outcome
    return outcomes, executor.sizes


def test_scenes_stream_through_the_executor_without_a_drain_between_them(make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(11)
    shapes = [(150, 130), (70, 200), (100, 100)]
    paths = [
        make_geotiff(rng.integers(1, 255, (3, h, w)).astype(np.uint8), name=f"s{i}.tif")
        for i, (h, w) in enumerate(shapes)
    ]
    log: list[tuple[str, str]] = []
    outcomes, sizes = _stream(bundle3, paths, tmp_path / "stream", log)
    # Full batches until the last scene, whose tail alone is cut finer (nothing follows it to fill the workers).
    for key in ("s0", "s1"):
        batch_sizes = [n for k, n in sizes if k == key]
        assert batch_sizes[:-1] == [OPTIONS.batch_size] * (len(batch_sizes) - 1)
    assert max(n for k, n in sizes if k == "s2") == OPTIONS.batch_size // 2
    assert [e for e in log if e[0] == "settled"] == [("settled", "s0"), ("settled", "s1"), ("settled", "s2")]
    # The executor took the next scene's batches before the previous scene was stitched: no drain.
    assert log.index(("in", "s1")) < log.index(("settled", "s0"))
    assert log.index(("in", "s2")) < log.index(("settled", "s1"))
    for path in paths:  # the same bytes as each scene alone
        alone = _local(bundle3, path, tmp_path / "alone" / path.name)
        assert outcomes[path.stem].tiles_run == alone.tiles_run
        assert (tmp_path / "stream" / path.name).read_bytes() == (tmp_path / "alone" / path.name).read_bytes()


def test_a_failing_batch_drops_only_its_scene(make_geotiff, bundle3, tmp_path) -> None:
    from geoseg.errors import GeoSegError
    from geoseg.inference.scene import batched

    rng = np.random.default_rng(12)
    paths = [make_geotiff(rng.integers(1, 255, (3, 400, 400)).astype(np.uint8), name=f"f{i}.tif") for i in range(3)]
    log: list[tuple[str, str]] = []
    second_batch_of_f1 = lambda item: item.key == "f1" and item.tiles[0].index == OPTIONS.batch_size  # noqa: E731
    outcomes, _ = _stream(bundle3, paths, tmp_path / "out", log, depth=2, fail=second_batch_of_f1)
    assert isinstance(outcomes["f1"], GeoSegError) and "corrupt block" in str(outcomes["f1"])
    assert outcomes["f0"].status == outcomes["f2"].status == "ok"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.tif", "f2.tif"]  # no staging file of f1
    # Once its second batch failed, no more of f1 was sent: only the batches the lookahead had already taken.
    assert ("in", "f1") not in log[log.index(("settled", "f1")) :]
    batches = len(list(batched(OPTIONS.grid(open_scene(paths[1])), OPTIONS.batch_size, parallel=2)))
    assert log.count(("in", "f1")) <= 2 + 2 < batches


def test_a_pool_that_fails_fails_the_scenes_it_had_not_finished(make_geotiff, bundle3, tmp_path) -> None:
    """An error of the executor itself (actors that keep dying) ends the job's stream: every scene not yet
    finished is recorded as failed with that reason; finished ones stay published."""
    spec, model = load_bundle(bundle3)
    local = LocalExecutor(Predictor(spec, model.state_dict()), Normalisation.from_spec(spec), OPTIONS)

    class DyingPool:
        parallelism = 1

        def run(self, work):
            for item in work:
                if item.key == "d1":
                    raise RuntimeError("prediction actors kept dying; giving up")
                yield from local.run([item])

    rng = np.random.default_rng(13)
    inputs = [str(make_geotiff(rng.integers(1, 255, (3, 80, 90)).astype(np.uint8), name=f"d{i}.tif")) for i in range(3)]
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS, executor=DyingPool())
    assert [r.status for r in reports] == ["ok", "failed", "failed"]
    assert all("actors kept dying" in r.error and r.error.startswith(r.source) for r in reports[1:])
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["d0.tif", "manifest.json", "report.json"]
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())["scenes"]
    assert [manifest[f"d{i}"]["status"] for i in range(3)] == ["ok", "failed", "failed"]


def test_manifest_journal_survives_a_kill_and_is_compacted(tmp_path) -> None:
    from geoseg.inference.job import Manifest
    from geoseg.inference.scene import SceneReport

    def failed(name):
        return SceneReport(scene=name, source=f"/archive/{name}.tif", status="failed", error="no CRS")

    manifest = Manifest(tmp_path, snapshot_seconds=3600)
    for i in range(3):
        manifest.record(failed(f"s{i}"), "fp")
    assert not (tmp_path / "manifest.json").exists()  # not rewritten per scene: appended to the journal
    with open(tmp_path / "manifest.jsonl", "a") as journal:
        journal.write('{"scene": "s3", "sta')  # the line a kill tore
    reloaded = Manifest(tmp_path)
    assert sorted(reloaded.entries) == ["s0", "s1", "s2"]
    assert not (tmp_path / "manifest.jsonl").exists()  # compacted into manifest.json on load
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["scenes"]) == ["s0", "s1", "s2"]
    reloaded.record(failed("s3"), "fp")
    assert sorted(Manifest(tmp_path).entries) == ["s0", "s1", "s2", "s3"]
    every_record = Manifest(tmp_path, snapshot_seconds=0)
    every_record.record(failed("s4"), "fp")
    assert "s4" in json.loads((tmp_path / "manifest.json").read_text())["scenes"]
