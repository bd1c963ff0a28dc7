"""Prediction: georeferencing on real imagery, nodata, determinism across workers/batches, bad scenes."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.windows import Window

from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE, init_bundle, load_bundle
from geoseg.inference.executor import LocalExecutor
from geoseg.inference.job import job_fingerprints, predict_archive
from geoseg.inference.options import PredictOptions
from geoseg.inference.scene import predict_scene
from geoseg.inference.worker import ModelWorker
from geoseg.io import open_scene
from geoseg.io.writer import CLASS_NODATA

# Small tiles and blocks, so that small test scenes have many of both.
OPTIONS = PredictOptions(tile=96, halo=8, overlap=8, block=128, batch_size=4)


@pytest.fixture(scope="module")
def bundle3(tmp_path_factory):
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=1)


@pytest.fixture(scope="module")
def bundle5(tmp_path_factory):
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 5, 3, base_channels=4, depth=2, seed=2)


def _local(bundle, scene_path, out, options=OPTIONS):
    spec, model = load_bundle(bundle)
    executor = LocalExecutor(ModelWorker(spec, model.state_dict()))
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
def test_ray_output_is_byte_identical_to_local_for_any_workers_batch_and_block(
    ray_local, real_data, bundle5, tmp_path
) -> None:
    source = real_data / "nc_landsat" / "landsat_multiband.tif"
    local = _local(bundle5, source, tmp_path / "local.tif")
    reference = (tmp_path / "local.tif").read_bytes()
    for workers, batch, block in [(1, 1, 64), (2, 5, 128), (2, 3, 10_000)]:
        options = PredictOptions(tile=96, halo=8, overlap=8, block=block, batch_size=batch)
        out = tmp_path / f"w{workers}b{batch}k{block}"
        [report] = predict_archive(bundle5, [str(source)], out, options, workers=workers, in_process=False)
        assert report.status == "ok" and report.tiles == local.tiles and report.tiles_run == local.tiles_run
        assert (report.seam_pixels, report.seam_disagreement) == (local.seam_pixels, local.seam_disagreement)
        assert (out / "landsat_multiband.tif").read_bytes() == reference, (workers, batch, block)


@pytest.mark.ray
def test_bad_scenes_are_reported_and_the_others_finish(ray_local, make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(0)
    good = make_geotiff(rng.integers(1, 200, (3, 150, 170)).astype(np.uint8), name="good.tif")
    two_bands = make_geotiff(np.ones((2, 30, 30), np.uint8), name="two_bands.tif")
    not_tiff = tmp_path / "junk.tif"
    not_tiff.write_bytes(b"II*\x00garbage")
    out = tmp_path / "job"
    reports = predict_archive(bundle3, [str(not_tiff), str(two_bands), str(good)], out, OPTIONS, in_process=False)
    status = {r.scene: (r.status, r.error) for r in reports}
    assert status["good"] == ("ok", None)
    assert status["two_bands"][0] == "failed" and "has 2 bands, the model expects 3" in status["two_bands"][1]
    assert status["junk"][0] == "failed" and str(not_tiff) in status["junk"][1]
    assert {p.name for p in out.iterdir()} == _published("good") | {"manifest.json", "report.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["scenes_ok"] == 1 and report["summary"]["scenes_failed"] == 2
    assert report["summary"]["megapixels"] == pytest.approx(150 * 170 / 1e6, abs=1e-3)


def test_inputs_expand_from_folders_globs_and_lists(make_geotiff, tmp_path) -> None:
    from geoseg.inference.outputs import scene_names
    from geoseg.io.sources import expand_inputs

    a = make_geotiff(np.ones((1, 4, 4), np.uint8), name="a.tif")
    b = make_geotiff(np.ones((1, 4, 4), np.uint8), name="b.tif")
    listing = tmp_path / "scenes.csv"
    listing.write_text(f"path,note\n{b},x\n")
    assert [s.text for s in expand_inputs([str(tmp_path)])] == [str(a), str(b)]
    assert [s.text for s in expand_inputs([str(tmp_path / "*.tif"), str(listing)])] == [str(a), str(b)]
    names = scene_names(expand_inputs([str(a), str(a), str(tmp_path / "..evil name.tif")]))
    assert names == ["a", "evil_name"]  # the same input once; no name leaves the folder or hides as a dotfile


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
    executor = RayExecutor(spec, model.state_dict(), workers=2)
    # On a CPU node the model actors hold every core: its reader decodes on one thread (GDAL's pool cost +20 %).
    assert ray.get([reader.gdal_threads.remote() for reader, _ in executor.reader_actors.values()]) == ["1"]

    class KillingExecutor:
        parallelism, readers, gpu = 2, 1, False

        def run(self, work, options):
            def work_with_a_kill():
                for i, item in enumerate(work):
                    if i == 3:
                        ray.kill(executor.actors[0], no_restart=True)
                    yield item

            return executor.run(work_with_a_kill(), options)

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
    options = PredictOptions(tile=160, halo=48, overlap=16, block=100, batch_size=3)
    report = _local(bundle, source, tmp_path / "tiled.tif", options)
    spec, model = load_bundle(bundle)
    norm = spec.normalisation()
    halo = options.halo
    assert halo is not None
    with rasterio.open(source) as src:
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


@pytest.mark.parametrize(
    ("rows", "cols", "readers", "block"),
    [(1, 1, 4, 64), (9, 3, 2, 64), (40, 2, 3, 64), (7, 5, 1, 64), (9, 11, 2, 1024)],
)
def test_scene_blocks_come_once_each_in_stripes_read_in_bands_in_raster_order(rows, cols, readers, block) -> None:
    from geoseg.inference.reader import COLUMN_BAND
    from geoseg.inference.scene import MIN_STRIPE_ROWS, scene_work
    from geoseg.inference.tiling import BlockGrid, TileGrid

    blocks = BlockGrid(TileGrid(cols * block, rows * block, tile=block), block)
    band = max(1, COLUMN_BAND // block)  # 8 block columns per band for 1024-px blocks: 8 + 3
    items = list(scene_work("s", None, blocks, readers))  # type: ignore[arg-type]
    assert sorted(i.block.index for i in items) == list(range(rows * cols))
    stripes = sorted({i.stripe for i in items})
    assert len(stripes) == max(1, min(readers, rows // MIN_STRIPE_ROWS))
    for stripe in stripes:  # each stripe is a run of whole block rows, walked band by band, each in raster order
        mine = [(i.block.row, i.block.col) for i in items if i.stripe == stripe]
        stripe_rows = sorted({r for r, _ in mine})
        assert stripe_rows == list(range(stripe_rows[0], stripe_rows[-1] + 1)) and len(mine) % cols == 0
        expected = [
            (r, c) for first in range(0, cols, band) for r in stripe_rows for c in range(first, min(first + band, cols))
        ]
        assert mine == expected
    if len(stripes) > 1:  # interleaved: every reader gets work from the start
        assert {i.stripe for i in items[: len(stripes)]} == set(stripes)


def test_reader_cache_is_bounded_by_the_band_not_the_scene_width() -> None:
    from geoseg.inference.reader import block_cache_bytes
    from geoseg.inference.tiling import BlockGrid, TileGrid
    from geoseg.io.raster import SceneInfo

    def cache(width: int) -> int:
        scene = SceneInfo("x.tif", width, 8192, 4, "uint16", None, None, None, (512, 512))  # type: ignore[arg-type]
        blocks = BlockGrid(TileGrid(width, 8192, tile=512, halo=32), 1024)
        return block_cache_bytes(scene, blocks[0])

    # 896-px blocks read 960 px (+ 2 source rows); a band of 8192 + 64 + 2 x 512 columns; 4 bands of 2 bytes.
    assert cache(40000) == cache(65536) == (960 + 1024) * (8192 + 64 + 1024) * 4 * 2
    assert cache(2048) == (960 + 1024) * 2048 * 4 * 2  # narrower than a band: the scene's width


def test_stride_is_aligned_to_the_model_downsampling() -> None:
    assert PredictOptions(tile=256, halo=16, overlap=16).effective_overlap() == 32  # stride 192 = 6 x 32
    assert PredictOptions(tile=160, halo=48, overlap=16).effective_overlap() == 32  # stride 32
    assert PredictOptions(tile=64, halo=8, overlap=8).effective_overlap() == 16  # core 48: stride 32
    assert PredictOptions(tile=352, halo=16, overlap=0).effective_overlap(64) == 0  # depth 6: stride 320 = 5 x 64
    assert PredictOptions(tile=320, halo=16, overlap=0).effective_overlap(64) == 32  # core 288 -> stride 256


def test_defaults_follow_the_model_receptive_field() -> None:
    from types import SimpleNamespace

    from geoseg.geometry import ModelGeometry
    from geoseg.inference.job import halo_notes

    large, chip = SimpleNamespace(width=20_000, height=9_000), SimpleNamespace(width=300, height=650)
    small = PredictOptions().resolved(ModelGeometry(output_stride=2, receptive_field=9))
    assert (small.halo, small.overlap, small.block, small.tile_for(large)) == (16, 0, 1024, 1024 + 32)
    assert small.tile_for(chip) == 672 + 32  # a chip gets one tile just covering it (aligned to 32)
    assert small.grid(chip).stride == 672 and len(small.grid(chip)) == 1
    depth4 = PredictOptions().resolved(ModelGeometry(output_stride=16, receptive_field=107), gpu=True)
    assert depth4.halo == 112 and depth4.overlap == 0 and depth4.block == 2048
    grid = depth4.grid(large)
    assert grid.tile == 1024 + 224 and grid.overlap == 0 and grid.stride % 32 == 0
    resnet = PredictOptions().resolved(ModelGeometry(output_stride=32, receptive_field=573))
    assert resnet.halo == 128  # capped; the report says so
    assert halo_notes(resnet, 573) and "below the model's receptive field (573 px)" in halo_notes(resnet, 573)[0]
    mine = PredictOptions(tile=200, halo=20, overlap=4, block=300).resolved(ModelGeometry(4, 107))
    assert (mine.tile_for(large), mine.tile_for(chip), mine.halo, mine.block) == (200, 200, 20, 300)
    assert halo_notes(depth4, 107) == []


def test_fingerprint_ignores_the_block_and_knows_the_old_one(bundle3) -> None:
    """Blocks only group tiles, so they are not in the job's fingerprint; the fingerprint that geoseg recorded
    before (block included) is still known, so a job started then resumes."""
    geometry = load_bundle(bundle3)[0].geometry()
    base = PredictOptions(tile=96, halo=8, overlap=8, batch_size=4).resolved(geometry)
    now, old = job_fingerprints(bundle3, base)
    assert base.block == 1024 and job_fingerprints(bundle3, replace(base, block=128))[0] == now
    assert job_fingerprints(bundle3, replace(base, halo=16))[0] != now
    on_gpu = PredictOptions(tile=96, halo=8, overlap=8, batch_size=4).resolved(geometry, gpu=True)
    assert on_gpu.block == 2048 and job_fingerprints(bundle3, on_gpu) == (
        now,
        job_fingerprints(bundle3, replace(base, block=2048))[1],
    )
    assert len({now, old, job_fingerprints(bundle3, on_gpu)[1]}) == 3
    # the old digest is the old code's: the bundle's files, then the options as they were resolved, block included
    digest = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        digest.update(hashlib.sha256((bundle3 / name).read_bytes()).hexdigest().encode())
    digest.update(json.dumps({k: v for k, v in base.to_dict().items() if k != "vectors"}, sort_keys=True).encode())
    assert old == digest.hexdigest()[:16]


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
    third = predict_archive(bundle3, inputs, out, PredictOptions(tile=64, halo=8, overlap=8, block=128, batch_size=4))
    assert [r.status for r in third] == ["ok", "ok", "ok"]


def test_a_job_recorded_with_the_old_fingerprint_or_other_blocks_is_not_redone(make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(8)
    pixels = [rng.integers(1, 255, (3, 90, 110)).astype(np.uint8) for _ in range(2)]
    inputs = [str(make_geotiff(p, name=f"s{i}.tif")) for i, p in enumerate(pixels)]
    out = tmp_path / "job"
    first = predict_archive(bundle3, inputs, out, OPTIONS, in_process=True)
    manifest = json.loads((out / "manifest.json").read_text())
    resolved = OPTIONS.resolved(load_bundle(bundle3)[0].geometry())
    now, old = job_fingerprints(bundle3, resolved)
    assert {e["fingerprint"] for e in manifest["scenes"].values()} == {now}
    second = predict_archive(bundle3, inputs, out, replace(OPTIONS, block=64), in_process=True)
    assert [r.status for r in second] == ["skipped", "skipped"]  # other blocks, the same rasters
    for entry in manifest["scenes"].values():  # as a job started before blocks were left out of it recorded it
        entry["fingerprint"] = old
    manifest["scenes"]["s1"]["fingerprint"] = job_fingerprints(bundle3, replace(resolved, halo=16))[1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    third = predict_archive(bundle3, inputs, out, OPTIONS, in_process=True)
    assert [r.status for r in third] == ["skipped", "ok"]  # s1 was recorded with another halo: redone
    assert [r.sha256 for r in third] == [r.sha256 for r in first]


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


def test_band_stacks_that_cannot_be_one_scene_name_the_band_and_the_cause(make_geotiff, tmp_path) -> None:
    from affine import Affine

    from geoseg.errors import GeoSegError
    from geoseg.io.stack import build_stack_vrt

    def band(name, width=10, pixel=10.0, count=1, dtype="uint8"):
        transform = Affine(pixel, 0, 500_000, 0, -pixel, 5_800_000)
        return make_geotiff(np.ones((count, 10, width), dtype), name=name, transform=transform)

    a, b, c = band("a.tif"), band("b.tif"), band("c.tif")
    cases = {
        "size": (
            [a, band("wide.tif", width=12), c],
            r"wide\.tif: band 2 of the stack is not on the other bands'"
            r" grid: it is 12 x 10 px, the other bands 10 x 10",
        ),
        # The first band is the odd one: it is blamed, not the two that agree.
        "first": (
            [band("coarse.tif", pixel=20.0), b, c],
            r"coarse\.tif: band 1 of .* its pixels are 20 x 20, the "
            r"other bands' 10 x 10",
        ),
        "missing": ([a, tmp_path / "nope.tif", c], r"nope\.tif: band 2 of the stack cannot be opened as a raster"),
        "several bands": ([a, band("rgb.tif", count=3)], r"rgb\.tif: band 2 of the stack has 3 bands; a stack takes"),
        "complex": ([a, band("cx.tif", dtype="complex64")], r"cx\.tif: band 2 of the stack has pixel type complex64"),
    }
    for case, (files, message) in cases.items():
        with pytest.raises(GeoSegError, match=message):
            build_stack_vrt(files, tmp_path / f"{case}.vrt")
        assert not (tmp_path / f"{case}.vrt").exists(), case
    wide_ints = build_stack_vrt([a, band("i64.tif", dtype="int64")], tmp_path / "ints.vrt")
    with rasterio.open(wide_ints) as src:  # int64 bands stack (read as float32 for the model, like any band)
        assert src.count == 2 and src.dtypes[1] == "int64"


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

    from geoseg.inference import job, publishing, scene

    rng = np.random.default_rng(8)
    inputs = [
        str(make_geotiff(rng.integers(1, 255, (3, 90, 110)).astype(np.uint8), name=f"p{i}.tif")) for i in range(2)
    ]
    second_started = threading.Event()
    overlapped: list[bool] = []
    add, publish = scene.SceneRun.add, publishing.PublishingProcess.__call__

    def add_and_signal(self, result):
        add(self, result)
        if self.scene.name == "p1":  # p1's blocks are being written
            second_started.set()

    def publish_after_next_start(self, staged):
        if staged.classes[1].name == "p0.tif":  # publishing p0 must not hold back p1: it waits for p1's blocks
            overlapped.append(second_started.wait(timeout=60))
        return publish(self, staged)

    monkeypatch.setattr(scene.SceneRun, "add", add_and_signal)
    monkeypatch.setattr(publishing.PublishingProcess, "__call__", publish_after_next_start)
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS, in_process=False)
    assert overlapped == [True]
    assert [r.status for r in reports] == ["ok", "ok"]
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert all(manifest["scenes"][name]["sha256"] for name in ("p0", "p1"))
    for report in reports:  # the published files are the ones the manifest hashed
        assert job.file_sha256(tmp_path / "job" / f"{report.scene}.tif") == report.sha256


def test_a_predicted_scene_publishes_nothing_until_finished(make_geotiff, bundle3, tmp_path) -> None:
    from geoseg.inference.scene import run_scene

    path = make_geotiff(np.random.default_rng(9).integers(1, 255, (3, 70, 80)).astype(np.uint8))
    spec, model = load_bundle(bundle3)
    executor = LocalExecutor(ModelWorker(spec, model.state_dict()))
    out = tmp_path / "out" / "scene.tif"
    options = OPTIONS.resolved(spec.geometry())
    predicted = run_scene(open_scene(path), spec, executor, out, options)
    assert not out.exists()  # only staging files so far: a crash here leaves nothing that looks finished
    report = predicted.finish()
    assert out.exists() and report.status == "ok" and report.tiles_run == report.tiles
    assert {p.name for p in out.parent.iterdir()} == _published("scene")


class Lookahead:
    """An executor with ``depth`` blocks in flight, as a Ray pool has: it takes items ahead of its results.

    Logs ``("in", key)`` per item taken and ``("out", key)`` per result; ``fail`` picks items whose result
    becomes an error.
    """

    parallelism, readers, gpu = 2, 1, False

    def __init__(self, inner, log, depth=3, fail=lambda item: False):
        self.inner, self.log, self.depth, self.fail = inner, log, depth, fail

    def run(self, work, options):
        from collections import deque

        from geoseg.errors import GeoSegError

        queue = deque()

        def deliver():
            [(item, output)] = list(self.inner.run([queue.popleft()], options))
            self.log.append(("out", item.key))
            return item, GeoSegError("corrupt block", item.scene.path) if self.fail(item) else output

        for item in work:
            self.log.append(("in", item.key))
            queue.append(item)
            if len(queue) > self.depth:
                yield deliver()
        while queue:
            yield deliver()


def _stream(bundle, paths, out_dir, log, **lookahead):
    from geoseg.inference.scene import run_scenes

    spec, model = load_bundle(bundle)
    local = LocalExecutor(ModelWorker(spec, model.state_dict()))
    targets = [(p.stem, open_scene(p), out_dir / p.name) for p in paths]
    executor = Lookahead(local, log, **lookahead)
    outcomes = {}
    for key, outcome in run_scenes(targets, spec, executor, OPTIONS.resolved(spec.geometry())):
        log.append(("settled", key))
        outcomes[key] = outcome.finish() if not isinstance(outcome, Exception) else outcome
    return outcomes


def test_scenes_stream_through_the_executor_without_a_drain_between_them(make_geotiff, bundle3, tmp_path) -> None:
    rng = np.random.default_rng(11)
    shapes = [(150, 130), (70, 200), (100, 100)]
    paths = [
        make_geotiff(rng.integers(1, 255, (3, h, w)).astype(np.uint8), name=f"s{i}.tif")
        for i, (h, w) in enumerate(shapes)
    ]
    log: list[tuple[str, str]] = []
    outcomes = _stream(bundle3, paths, tmp_path / "stream", log)
    assert [e for e in log if e[0] == "settled"] == [("settled", "s0"), ("settled", "s1"), ("settled", "s2")]
    # The executor took the next scene's blocks before the previous scene was finished: no drain.
    assert log.index(("in", "s1")) < log.index(("settled", "s0"))
    assert log.index(("in", "s2")) < log.index(("settled", "s1"))
    for path in paths:  # the same bytes as each scene alone
        alone = _local(bundle3, path, tmp_path / "alone" / path.name)
        assert outcomes[path.stem].tiles_run == alone.tiles_run
        assert (tmp_path / "stream" / path.name).read_bytes() == (tmp_path / "alone" / path.name).read_bytes()


def test_a_failing_block_drops_only_its_scene(make_geotiff, bundle3, tmp_path) -> None:
    from geoseg.errors import GeoSegError

    rng = np.random.default_rng(12)
    paths = [make_geotiff(rng.integers(1, 255, (3, 400, 400)).astype(np.uint8), name=f"f{i}.tif") for i in range(3)]
    log: list[tuple[str, str]] = []
    second_block_of_f1 = lambda item: item.key == "f1" and item.block.index == 1  # noqa: E731
    outcomes = _stream(bundle3, paths, tmp_path / "out", log, depth=2, fail=second_block_of_f1)
    assert isinstance(outcomes["f1"], GeoSegError) and "corrupt block" in str(outcomes["f1"])
    assert outcomes["f0"].status == outcomes["f2"].status == "ok"
    assert {p.name for p in (tmp_path / "out").iterdir()} == _published("f0", "f2")  # no staging file of f1
    # Once its second block failed, no more of f1 was sent: only the blocks the lookahead had already taken.
    assert ("in", "f1") not in log[log.index(("settled", "f1")) :]
    spec, _ = load_bundle(bundle3)
    blocks = len(OPTIONS.resolved(spec.geometry()).blocks(open_scene(paths[1])))
    assert log.count(("in", "f1")) <= 2 + 2 < blocks


def test_in_process_the_next_block_is_read_while_this_one_is_predicted(make_geotiff, bundle3, monkeypatch) -> None:
    """LocalExecutor reads one block ahead in a thread of its own; the results come in order and equal reading
    and predicting the blocks one by one."""
    import threading

    from geoseg.inference import executor as executor_module
    from geoseg.inference.reader import read_block
    from geoseg.inference.scene import scene_work

    spec, model = load_bundle(bundle3)
    rng = np.random.default_rng(5)
    scene = open_scene(make_geotiff(rng.integers(1, 255, (3, 400, 400)).astype(np.uint8), name="ahead.tif"))
    options = OPTIONS.resolved(spec.geometry())
    items = list(scene_work("ahead", scene, options.blocks(scene), 1))
    assert len(items) >= 3
    threads: list[str] = []

    def read(*args):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return read_block(*args)

    monkeypatch.setattr(executor_module, "read_block", read)
    pulled: list[int] = []

    def work():  # type: ignore[no-untyped-def]
        for index, item in enumerate(items):
            pulled.append(index)
            yield item

    worker = ModelWorker(spec, model.state_dict())
    results = []
    for index, (item, result) in enumerate(LocalExecutor(worker).run(work(), options)):
        assert item is items[index]
        assert pulled[-1] == min(index + 1, len(items) - 1)  # the next block was handed to the reader already
        results.append(result)
    assert len(threads) == len(items) and all(name.startswith("geoseg-read") for name in threads)
    norm = spec.normalisation()
    for item, result in zip(items, results, strict=True):
        alone = worker.run(item.blocks, item.block, read_block(item.scene, item.block, norm), options)
        np.testing.assert_array_equal(result.classes, alone.classes)


def test_a_pool_that_fails_fails_the_scenes_it_had_not_finished(make_geotiff, bundle3, tmp_path) -> None:
    """An error of the executor itself (actors that keep dying) ends the job's stream: every scene not yet
    finished is recorded as failed with that reason; finished ones stay published."""
    spec, model = load_bundle(bundle3)
    local = LocalExecutor(ModelWorker(spec, model.state_dict()))

    class DyingPool:
        parallelism, readers, gpu = 1, 1, False

        def run(self, work, options):
            for item in work:
                if item.key == "d1":
                    raise RuntimeError("prediction actors kept dying; giving up")
                yield from local.run([item], options)

    rng = np.random.default_rng(13)
    inputs = [str(make_geotiff(rng.integers(1, 255, (3, 80, 90)).astype(np.uint8), name=f"d{i}.tif")) for i in range(3)]
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS, executor=DyingPool())
    assert [r.status for r in reports] == ["ok", "failed", "failed"]
    assert all("actors kept dying" in r.error and r.error.startswith(r.source) for r in reports[1:])
    assert {p.name for p in (tmp_path / "job").iterdir()} == _published("d0") | {"manifest.json", "report.json"}
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())["scenes"]
    assert [manifest[f"d{i}"]["status"] for i in range(3)] == ["ok", "failed", "failed"]


def test_the_first_scene_is_finished_before_the_last_header_is_read(
    make_geotiff, bundle3, tmp_path, monkeypatch
) -> None:
    """Headers are read on a thread while the stream runs (geoseg.inference.headers): an archive's first product
    does not wait for every header. Here the last header is read only once the first scene is published; read
    first, as the job once did, this would wait forever."""
    from geoseg.inference import job

    rng = np.random.default_rng(21)
    inputs = [str(make_geotiff(rng.integers(1, 255, (3, 40, 50)).astype(np.uint8), name=f"h{i}.tif")) for i in range(3)]
    first = tmp_path / "job" / "h0.tif"  # renamed into place once the scene is finished
    waited: list[bool] = []
    open_source = job.open_source

    def open_last_after_first(source, name, out_dir, mask=None):  # type: ignore[no-untyped-def]
        if name == "h2":
            deadline = time.monotonic() + 60
            while not first.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            waited.append(time.monotonic() < deadline)
        return open_source(source, name, out_dir, mask)

    monkeypatch.setattr(job, "open_source", open_last_after_first)
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS, in_process=True)
    assert waited == [True]
    assert [r.status for r in reports] == ["ok", "ok", "ok"]


def test_a_pool_that_fails_before_a_header_is_read_fails_that_scene_too(
    make_geotiff, bundle3, tmp_path, monkeypatch
) -> None:
    """A scene whose header was still being read when the pool failed is recorded as failed with the pool's
    reason, like the others: no scene of the job goes unrecorded."""
    import threading

    from geoseg.inference import job

    spec, model = load_bundle(bundle3)
    local = LocalExecutor(ModelWorker(spec, model.state_dict()))
    dying = threading.Event()

    class DyingPool:
        parallelism, readers, gpu = 1, 1, False

        def run(self, work, options):
            for item in work:
                if item.key == "u1":
                    dying.set()
                    raise RuntimeError("prediction actors kept dying; giving up")
                yield from local.run([item], options)

    open_source = job.open_source

    def slow_last(source, name, out_dir, mask=None):  # type: ignore[no-untyped-def]
        if name == "u2":
            assert dying.wait(timeout=60)
        return open_source(source, name, out_dir, mask)

    monkeypatch.setattr(job, "open_source", slow_last)
    rng = np.random.default_rng(14)
    inputs = [str(make_geotiff(rng.integers(1, 255, (3, 40, 50)).astype(np.uint8), name=f"u{i}.tif")) for i in range(3)]
    reports = predict_archive(bundle3, inputs, tmp_path / "job", OPTIONS, executor=DyingPool())
    assert [r.status for r in reports] == ["ok", "failed", "failed"]
    assert "actors kept dying" in reports[2].error and reports[2].error.startswith(reports[2].source)
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())["scenes"]
    assert [manifest[f"u{i}"]["status"] for i in range(3)] == ["ok", "failed", "failed"]


def test_manifest_entries_are_typed_and_a_damaged_one_makes_its_scene_rerun(tmp_path) -> None:
    from geoseg.inference.manifest import Manifest, ManifestEntry
    from geoseg.inference.report import SceneReport, Status

    out = tmp_path / "a.tif"
    out.write_bytes(b"x" * 10)
    manifest = Manifest(tmp_path, snapshot_seconds=0)
    report = SceneReport(scene="a", source="/archive/a.tif", status=Status.OK, output=str(out))
    manifest.record(report, "fp", "id")
    entry = manifest.entries["a"]
    assert isinstance(entry, ManifestEntry) and entry.output_bytes == 10 and entry.vectors_key is None
    skipped = Manifest(tmp_path).finished("a", "/archive/a.tif", "id", "fp")
    assert skipped is not None and skipped.status == Status.SKIPPED and skipped.output == str(out)
    assert ManifestEntry.from_json(entry.to_json()) == entry  # the stored form reads back the same
    stored = json.loads((tmp_path / "manifest.json").read_text())
    for damage in ({"output_bytes": "10"}, {"fingerprint": 7}, {"output_bytes": True}):
        broken = stored | {"scenes": {"a": stored["scenes"]["a"] | damage}}
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        assert Manifest(tmp_path).finished("a", "/archive/a.tif", "id", "fp") is None, damage


def test_manifest_journal_survives_a_kill_and_is_compacted(tmp_path) -> None:
    from geoseg.inference.manifest import Manifest
    from geoseg.inference.report import SceneReport, Status

    def failed(name):
        return SceneReport(scene=name, source=f"/archive/{name}.tif", status=Status.FAILED, error="no CRS")

    manifest = Manifest(tmp_path, snapshot_seconds=3600)
    for i in range(3):
        manifest.record(failed(f"s{i}"), "fp", "id")
    assert not (tmp_path / "manifest.json").exists()  # not rewritten per scene: appended to the journal
    with open(tmp_path / "manifest.jsonl", "a") as journal:
        journal.write('{"scene": "s3", "sta')  # the line a kill tore
    reloaded = Manifest(tmp_path)
    assert sorted(reloaded.entries) == ["s0", "s1", "s2"]
    assert not (tmp_path / "manifest.jsonl").exists()  # compacted into manifest.json on load
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["scenes"]) == ["s0", "s1", "s2"]
    reloaded.record(failed("s3"), "fp", "id")
    assert sorted(Manifest(tmp_path).entries) == ["s0", "s1", "s2", "s3"]
    every_record = Manifest(tmp_path, snapshot_seconds=0)
    every_record.record(failed("s4"), "fp", "id")
    assert "s4" in json.loads((tmp_path / "manifest.json").read_text())["scenes"]


@pytest.mark.realdata
def test_blocks_on_workers_reproduce_a_whole_raster_blend_of_the_model_bit_for_bit(
    real_data, bundle5, tmp_path
) -> None:
    """The reference reads every tile alone (numpy normalisation, as training does), runs the model on it and
    blends the whole raster at once, as geoseg did before blocks; the pipeline must give the same classes,
    probabilities and seam counts. (One tile per model call on both sides: oneDNN may pick another algorithm
    for another batch size, which changes the last bit of a probability.)"""
    import torch
    from test_blend import whole_raster_blend

    from geoseg.io.raster import read_tile

    source = real_data / "nc_landsat" / "landsat_multiband.tif"
    options = PredictOptions(tile=96, halo=8, overlap=8, block=160, batch_size=1, probabilities=True)
    report = _local(bundle5, source, tmp_path / "blocks.tif", options)
    spec, model = load_bundle(bundle5)
    worker, norm = ModelWorker(spec, model.state_dict()), spec.normalisation()
    scene = open_scene(source)
    grid = options.resolved(spec.geometry()).grid(scene)

    with rasterio.open(source) as src:

        def tile_inputs(tile):
            raw, valid = read_tile(src, tile.read, list(norm.band_indexes))
            norm.mask_assumed_nodata(raw, valid, src.nodata)
            if not valid.any():
                return None, valid
            x = torch.from_numpy(norm.apply(raw, valid)[None]).contiguous(memory_format=torch.channels_last)
            return worker.probabilities(x)[0].numpy(), valid

        reference = whole_raster_blend(grid, np.array([c.id for c in spec.classes]), tile_inputs)
    with rasterio.open(report.output) as out, rasterio.open(report.probabilities) as probs:
        np.testing.assert_array_equal(out.read(1), reference["classes"])
        np.testing.assert_array_equal(probs.read(), reference["probabilities"])
    assert (report.seam_pixels, round(report.seam_disagreement * report.seam_pixels)) == reference["seam"]
    assert report.blocks > 4 and report.seam_pixels > 1000


def _calibrated_depth4_unet(tmp_path, image: np.ndarray):
    """A depth-4, base-8 U-Net whose output is not trivial: seed-0 weights, batch-norm statistics calibrated
    on the image itself (an untrained bundle's default statistics give a near-constant map that shows no seam)."""
    import torch

    from geoseg.bundle import ArchitectureSpec, BandSpec, BundleSpec, default_classes, save_bundle

    bands = image.shape[0]
    mean, std = image.reshape(bands, -1).mean(1), image.reshape(bands, -1).std(1) + 1e-6
    spec = BundleSpec(
        architecture=ArchitectureSpec(name="unet", kwargs={"base_channels": 8, "depth": 4}),
        bands=[
            BandSpec(name=f"b{i}", index=i + 1, mean=float(m), std=float(s))
            for i, (m, s) in enumerate(zip(mean, std, strict=True))
        ],
        input_band_count=bands,
        classes=default_classes(5),
    )
    torch.manual_seed(0)
    model = spec.build()
    x = torch.from_numpy(((image - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration passes
    with torch.no_grad():
        for r in range(0, x.shape[1] - 256, 384):
            for c in range(0, x.shape[2] - 256, 384):
                model(x[None, :, r : r + 256, c : c + 256])
    return save_bundle(tmp_path / "calibrated", spec, model.eval())


@pytest.fixture(scope="module")
def calibrated_mosaic(real_data, tmp_path_factory):
    """Real Landsat pixels mirrored into a 2600 x 2300 scene (several default tiles a side) and a depth-4 U-Net
    calibrated on it: the nodata collar is filled with each band's mean so that every pixel is scored."""
    from geoseg.io.raster import read_tile

    tmp_path = tmp_path_factory.mktemp("mosaic")
    with rasterio.open(real_data / "nc_landsat" / "landsat_multiband.tif") as src:
        image, valid = read_tile(src, Window(0, 0, src.width, src.height))
        profile = {k: src.profile[k] for k in ("crs", "transform")}
    image = np.where(valid, image, np.nanmean(np.where(valid, image, np.nan), axis=(1, 2), keepdims=True))
    image = np.pad(image, ((0, 0), (0, 2300 - image.shape[1]), (0, 2600 - image.shape[2])), mode="symmetric")
    image = image.astype(np.float32)
    scene_path = tmp_path / "mosaic.tif"
    with rasterio.open(
        scene_path, "w", driver="GTiff", width=2600, height=2300, count=5, dtype="float32", tiled=True, **profile
    ) as dst:
        dst.write(image)
    return scene_path, _calibrated_depth4_unet(tmp_path, image)


@pytest.mark.realdata
@pytest.mark.slow
def test_default_options_reproduce_whole_image_inference(calibrated_mosaic, tmp_path) -> None:
    """With the defaults (halo from the receptive field, no overlap), tiled prediction equals whole-image
    inference (one tile, the same border padding) on >= 0.9999 of the pixels; a halo below the receptive field
    does measurably worse."""
    import torch

    from geoseg.io.raster import read_tile

    scene_path, bundle = calibrated_mosaic
    spec, model = load_bundle(bundle)
    defaults = PredictOptions().resolved(spec.geometry())
    assert defaults.halo >= spec.receptive_field == 107 and len(defaults.grid(open_scene(scene_path))) >= 4

    halo = defaults.halo
    padded, _ = read_tile(rasterio.open(scene_path), Window(-halo, -halo, 2600 + 2 * halo, 2300 + 2 * halo))
    norm = spec.normalisation()
    with torch.no_grad():
        logits = model(torch.from_numpy(norm.apply(padded, np.ones(padded.shape[1:], bool)))[None])
    whole = logits[0, :, halo:-halo, halo:-halo].argmax(0).numpy().astype(np.uint8)
    assert len(np.unique(whole)) >= 3  # the map is not trivial: seams would show

    def agreement(options):
        report = _local(bundle, scene_path, tmp_path / "tiled.tif", options)
        with rasterio.open(report.output) as out:
            return (out.read(1) == whole).mean()

    assert agreement(PredictOptions()) >= 0.9999
    assert agreement(PredictOptions(tile=256, halo=16, overlap=16)) < 0.999  # the old defaults: visible seams


@pytest.mark.realdata
@pytest.mark.slow
def test_classes_from_logits_equal_classes_from_probabilities(calibrated_mosaic, tmp_path) -> None:
    """Without --probabilities (and no overlap) the workers take the class from the logits and skip the
    softmax; with it, from the softmax. On a real scene every pixel gets the same class either way."""
    scene_path, bundle = calibrated_mosaic
    from_logits = _local(bundle, scene_path, tmp_path / "logits.tif", PredictOptions())
    from_probabilities = _local(bundle, scene_path, tmp_path / "probs.tif", PredictOptions(probabilities=True))
    assert from_logits.probabilities is None and from_probabilities.probabilities is not None
    with rasterio.open(from_logits.output) as a, rasterio.open(from_probabilities.output) as b:
        classes = a.read(1)
        np.testing.assert_array_equal(classes, b.read(1))
    assert len(np.unique(classes)) >= 3


def test_changing_only_polygon_options_reruns_no_model(make_geotiff, bundle3, tmp_path) -> None:
    """--vectorize gpkg, then shp with a minimum mapping unit: the polygons are redone from the published class
    raster (the model is not called, the raster is not rewritten), the old .gpkg is removed, a third run skips."""
    from dataclasses import replace

    from geoseg.vector.polygonize import VectorizeOptions

    spec, model = load_bundle(bundle3)
    calls = []

    class Counting(LocalExecutor):
        def run(self, work, options):  # counts the blocks the model is given
            return super().run((calls.append(1) or item for item in work), options)

    executor = Counting(ModelWorker(spec, model.state_dict()))
    scene = str(make_geotiff(np.random.default_rng(3).integers(1, 255, (3, 70, 90)).astype(np.uint8), name="v.tif"))
    out = tmp_path / "job"
    [first] = predict_archive(
        bundle3, [scene], out, replace(OPTIONS, vectors=VectorizeOptions(fmt="gpkg")), executor=executor
    )
    assert first.status == "ok" and (out / "v.gpkg").exists() and len(calls) == first.blocks > 0
    blocks = len(calls)
    raster_time = (out / "v.tif").stat().st_mtime_ns
    shp = replace(OPTIONS, vectors=VectorizeOptions(fmt="shp", min_area_m2=300))
    [second] = predict_archive(bundle3, [scene], out, shp, executor=executor)
    assert len(calls) == blocks and (out / "v.tif").stat().st_mtime_ns == raster_time
    assert second.sha256 == first.sha256
    assert second.status == "ok" and second.vectors == str(out / "v_polygons.shp") and not (out / "v.gpkg").exists()
    polygons = gpd.read_file(out / "v_polygons.shp")
    assert shapely.coverage_is_valid(polygons.geometry.values)  # merged, not deleted: still a partition ...
    assert polygons.area.sum() == pytest.approx(70 * 90 * 100)  # ... of every pixel (10 m), once
    [third] = predict_archive(bundle3, [scene], out, shp, executor=executor)
    assert third.status == "skipped" and len(calls) == blocks
    [fourth] = predict_archive(bundle3, [scene], out, replace(shp, tile=64, halo=8), executor=executor)
    assert fourth.status == "ok" and len(calls) > blocks  # tiling options do change the rasters: the model runs


def test_small_jobs_run_in_process_and_large_or_clustered_ones_on_ray(make_geotiff, tmp_path, monkeypatch) -> None:
    from geoseg.inference.job import SMALL_JOB_MPX, choose_path
    from geoseg.io.sources import expand_inputs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    small = expand_inputs([str(make_geotiff(np.zeros((3, 100, 100), np.uint8), name="small.tif"))])
    assert choose_path(small, None, None, None) == "in-process"
    assert choose_path(small, None, 2, None) == "ray"  # workers asked for: a pool
    assert choose_path(small, "auto", None, None) == "ray"  # a cluster named
    assert choose_path(small, None, None, False) == "ray" and choose_path(small, None, 4, True) == "in-process"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_path(small, None, None, None) == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    side = int((SMALL_JOB_MPX * 1e6 / 2) ** 0.5) + 1  # two scenes whose sum passes the threshold
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "tiled": True, "width": side, "height": side}
    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name, "w", crs="EPSG:32633", **profile):
            pass  # sparse: the header says the size, no pixel is written
    assert choose_path(expand_inputs([str(tmp_path / "a.tif")]), None, None, None) == "in-process"
    assert choose_path(expand_inputs([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]), None, None, None) == "ray"


def _published(*names: str) -> set[str]:
    """The files a published scene has: its class COG, GDAL category names, QGIS style and quicklook."""
    return {f"{n}{suffix}" for n in names for suffix in (".tif", ".tif.aux.xml", ".qml", ".png")}


def test_small_one_block_scenes_are_grouped_in_stream_order() -> None:
    """Runs of small one-block scenes become groups of at most ``size`` scenes and ``pixels``; any other item
    ends a run and goes alone; the order of the items is kept."""
    from geoseg.inference.executor import SMALL_BLOCK_PX, WorkGroup, WorkItem, grouped, is_small
    from geoseg.inference.tiling import BlockGrid, TileGrid

    def item(key: str, side: int, block: int = 1024) -> WorkItem:
        blocks = BlockGrid(TileGrid(side, side, tile=side if side <= block else 256), block)
        return WorkItem(key, None, blocks, blocks[0])  # type: ignore[arg-type]

    small = int(SMALL_BLOCK_PX**0.5)
    assert is_small(item("edge", small)) and not is_small(item("over", small + 1, block=4096))
    assert not is_small(item("many blocks", 300, block=128))  # a scene of several blocks is never grouped
    stream = [item(f"a{i}", 200) for i in range(3)] + [item("big", 2000)] + [item(f"b{i}", 200) for i in range(7)]
    stream += [item("lone", 200), item("big2", 2000)]
    units = list(grouped(stream, size=3))
    keys = [[i.key for i in u.items] if isinstance(u, WorkGroup) else u.key for u in units]
    assert keys == [
        ["a0", "a1", "a2"],
        "big",
        ["b0", "b1", "b2"],
        ["b3", "b4", "b5"],
        ["b6", "lone"],
        "big2",
    ]
    assert [u.key for u in units[:2]] == ["a0", "big"] and units[0].stripe == 0
    one = item("one", 200)
    assert list(grouped([one])) == [one]  # a run of one is a plain item
    by_pixels = list(grouped([item(f"c{i}", 200) for i in range(7)], size=8, pixels=3 * 200 * 200))
    assert [len(u.items) for u in by_pixels[:2]] == [3, 3] and by_pixels[2].key == "c6"  # none over its pixels


def _corrupt_first_tile(path) -> None:
    """Garble the compressed bytes of band 1's first tile: the header opens, reading the pixels fails."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)


@pytest.mark.ray
def test_grouped_small_scenes_on_ray_equal_in_process_with_a_bad_scene_and_a_killed_actor(
    ray_local, make_geotiff, bundle3, tmp_path
) -> None:
    """An archive of small scenes goes to Ray several scenes a call: a scene whose pixels cannot be read fails
    alone with its one line, a model actor killed mid-archive costs nothing but time, and every other scene's
    products are the bytes an in-process job writes."""
    import ray

    from geoseg.inference.distributed import RayExecutor

    rng = np.random.default_rng(21)
    (tmp_path / "scenes").mkdir()
    paths = []
    for i in range(19):
        pixels = rng.integers(1, 255, (3, 40 + i, 50)).astype(np.uint8)
        paths.append(make_geotiff(pixels, name=f"scenes/g{i:02d}.tif", compress="deflate", tiled=True))
    _corrupt_first_tile(paths[3])
    inputs = [str(p) for p in paths]
    local = predict_archive(bundle3, inputs, tmp_path / "local", OPTIONS, in_process=True)
    spec, model = load_bundle(bundle3)
    pool = RayExecutor(spec, model.state_dict(), workers=2)

    class KillingPool:
        parallelism, readers, gpu = 2, 1, False

        def run(self, work, options):
            def kill_on_the_way():
                for i, item in enumerate(work):
                    if i == 9:  # the first group is out: the second and third find this actor dead
                        ray.kill(pool.actors[0], no_restart=True)
                    yield item

            return pool.run(kill_on_the_way(), options)

    try:
        remote = predict_archive(bundle3, inputs, tmp_path / "ray", OPTIONS, executor=KillingPool())
    finally:
        pool.shutdown()
    assert pool.restarts >= 1 and pool.blocks_redone >= 1
    for ours, theirs in zip(local, remote, strict=True):
        assert ours.scene == theirs.scene and ours.status == theirs.status
    bad = next(r for r in remote if r.scene == "g03")
    assert bad.status == "failed" and str(paths[3]) in bad.error and "\n" not in bad.error
    for report in remote:
        if report.status == "ok":
            for suffix in (".tif", ".png"):
                name = report.scene + suffix
                assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert sum(r.status == "ok" for r in remote) == 18


@pytest.mark.ray
def test_a_pool_keeps_its_publishing_process_across_jobs_and_ends_it_at_shutdown(
    ray_local, make_geotiff, bundle3, tmp_path, monkeypatch
) -> None:
    """A Ray job publishes off the driver in the pool's publishing process: a warm pool's next job reuses it
    (a process costs ~0.7 CPU-s to start), and the pool's shutdown ends it."""
    from geoseg.inference import publishing
    from geoseg.inference.distributed import RayExecutor

    started = []
    start = publishing._start_child

    def counted():
        started.append(start())
        return started[-1]

    monkeypatch.setattr(publishing, "_start_child", counted)
    scene = make_geotiff(np.random.default_rng(5).integers(1, 255, (3, 60, 70)).astype(np.uint8))
    spec, model = load_bundle(bundle3)
    pool = RayExecutor(spec, model.state_dict(), workers=1)
    try:
        for job in ("one", "two"):
            [report] = predict_archive(bundle3, [str(scene)], tmp_path / job, OPTIONS, executor=pool)
            assert report.status == "ok"
        assert len(started) == 1 and started[0].poll() is None
    finally:
        pool.shutdown()
    assert started[0].wait(timeout=60) == 0
    assert (tmp_path / "one" / "scene.tif").read_bytes() == (tmp_path / "two" / "scene.tif").read_bytes()
