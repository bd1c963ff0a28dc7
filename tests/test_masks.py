"""Masks at prediction (geoseg.io.masks): SCL and QA_PIXEL decoded as documented, buffers exact and independent
of the blocks, and a masked pixel nodata in every output of predict, from a mask file or a STAC asset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from bad_inputs import write_geotiff
from click.testing import CliRunner
from rasterio.windows import Window
from test_cli import _one_line_error, run
from test_stac import ORIGIN_X, ORIGIN_Y, s2_item

from geoseg.bundle import BandSpec, init_bundle
from geoseg.io.maskrules import MaskOptions, MaskRule, SceneMask
from geoseg.io.masks import read_masked
from geoseg.io.raster import OpenDatasets, open_scene
from geoseg.io.writer import CLASS_NODATA

SCENE_TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_800_000)


def _scene_on(path: Path, width: int, height: int, transform: Affine = SCENE_TRANSFORM) -> Path:
    write_geotiff(path, np.ones((1, height, width), np.uint8), transform=transform)
    return path


def test_scl_values_at_20m_are_decoded_on_the_10m_grid(tmp_path) -> None:
    """Every SCL value 0-255 in a 20 m raster, read onto a 10 m scene: each 20 m pixel is 2 x 2 scene pixels with
    its value's meaning (ESA L2A SCL: 0 no data, 3 cloud shadows, 8 cloud medium, 9 cloud high, 10 thin cirrus,
    11 snow; 1 saturated, 2 dark area, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified are ground)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    scl = tmp_path / "SCL.tif"
    write_geotiff(scl, values[None], transform=Affine(20, 0, 500_000, 0, -20, 5_800_000))
    scene = open_scene(_scene_on(tmp_path / "scene.tif", 32, 32))
    for preset, hidden in (("scl", {0, 3, 8, 9, 10}), ("scl-snow", {0, 3, 8, 9, 10, 11})):
        masked = read_masked(
            scene, SceneMask(str(scl), MaskRule.parse(preset)), Window(0, 0, 32, 32), False, OpenDatasets()
        )
        expected = np.isin(values, sorted(hidden)).repeat(2, axis=0).repeat(2, axis=1)
        assert np.array_equal(masked, expected), preset
        assert masked.sum() == 4 * len(hidden)


def test_qa_pixel_bits_are_decoded_as_the_collection_2_guide_says(tmp_path) -> None:
    """Every 16-bit QA_PIXEL value: masked iff bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud or 4 cloud shadow is
    set (bit 5 snow with -snow); and the guide's own example values."""
    values = np.arange(2**16, dtype=np.uint16).reshape(256, 256)
    qa = tmp_path / "QA_PIXEL.tif"
    write_geotiff(qa, values[None], transform=SCENE_TRANSFORM)
    scene = open_scene(_scene_on(tmp_path / "scene.tif", 256, 256))
    for preset, bits in (("qa-pixel", (0, 1, 2, 3, 4)), ("qa-pixel-snow", (0, 1, 2, 3, 4, 5))):
        masked = read_masked(
            scene, SceneMask(str(qa), MaskRule.parse(preset)), Window(0, 0, 256, 256), False, OpenDatasets()
        )
        expected = np.zeros(values.shape, bool)
        for bit in bits:
            expected |= (values >> bit) & 1 == 1
        assert np.array_equal(masked, expected), preset
    examples = {21824: False, 21952: False, 22280: True, 23888: True, 1: True, 30048: False}  # clear, water, cloud,
    rule = MaskRule.parse("qa-pixel")  # shadow, fill; 30048 = snow (bit 5) with clear bits: ground unless -snow
    assert {v: bool(rule.masked(np.array([v]))[0]) for v in examples} == examples
    assert bool(MaskRule.parse("qa-pixel-snow").masked(np.array([30048]))[0])


@pytest.mark.parametrize(
    ("text", "values", "bits"),
    [
        ("2,4", {2, 4}, set()),
        ("bits:1,3", set(), {1, 3}),
        ("SCL", {0, 3, 8, 9, 10}, set()),
        ("qa_pixel", set(), {0, 1, 2, 3, 4}),
    ],
)
def test_rules_parse(text: str, values: set[int], bits: set[int]) -> None:
    rule = MaskRule.parse(text)
    assert (set(rule.values), set(rule.bits)) == (values, bits)


@pytest.mark.parametrize("text", ["clouds", "bits:40", "", "2;4", "-1"])
def test_bad_rules_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"preset|bits are numbered"):
        MaskRule.parse(text)


def test_a_buffer_is_a_disk_in_metres_and_blocks_do_not_change_it(tmp_path) -> None:
    """Against brute force: a pixel is masked when a masked pixel's centre is within the buffer of its centre
    (pixels 10 x 20 m, so the disk is 2x wider in columns than in rows); windows cut anywhere give the same."""
    rng = np.random.default_rng(0)
    values = (rng.random((60, 80)) < 0.01).astype(np.uint8)
    transform = Affine(10, 0, 500_000, 0, -20, 5_800_000)
    write_geotiff(tmp_path / "m.tif", values[None], transform=transform)
    scene = open_scene(_scene_on(tmp_path / "scene.tif", 80, 60, transform))
    mask = SceneMask(str(tmp_path / "m.tif"), MaskRule.parse("1"), buffer_m=45.0)
    whole = read_masked(scene, mask, Window(0, 0, 80, 60), False, OpenDatasets())
    ys, xs = np.nonzero(values)
    rows, cols = np.mgrid[0:60, 0:80]
    brute = np.zeros_like(whole)
    for y, x in zip(ys, xs, strict=True):
        brute |= ((rows - y) * 20.0) ** 2 + ((cols - x) * 10.0) ** 2 <= 45.0**2
    assert np.array_equal(whole, brute) and brute.sum() > values.sum() * 10
    datasets = OpenDatasets()
    pieces = np.zeros_like(whole)
    for r0, c0, h, w in ((0, 0, 13, 37), (13, 0, 47, 37), (0, 37, 31, 43), (31, 37, 29, 43)):
        pieces[r0 : r0 + h, c0 : c0 + w] = read_masked(scene, mask, Window(c0, r0, w, h), False, datasets)
    assert np.array_equal(pieces, whole)
    # Past the scene's edge: mirrored like the pixels with reflect padding, unmasked otherwise.
    padded = read_masked(scene, mask, Window(-5, -3, 90, 66), True, datasets)
    assert np.array_equal(padded[3:63, 5:85], whole)
    assert np.array_equal(padded[0, 5:85], whole[3]) and np.array_equal(padded[3:63, 0], whole[:, 5])
    assert not read_masked(scene, mask, Window(-5, -3, 90, 66), False, datasets)[:3].any()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_bundle(tmp_path_factory.mktemp("b") / "bundle", "unet", 3, 4, base_channels=4, depth=2, seed=3)


TILING = ["--tile", "64", "--halo", "8", "--block", "128", "--in-process"]


def _mask_scene(folder: Path, name: str, mask: np.ndarray) -> Path:
    """A 3-band scene of 200 x 160 px and ``<name>_mask.tif`` beside it at twice its pixel size (values as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(len(name)).integers(1, 250, (3, 160, 200)).astype(np.uint8)
    write_geotiff(folder / f"{name}.tif", image)
    write_geotiff(folder / f"{name}_mask.tif", mask[None], transform=Affine(20, 0, 500_000, 0, -20, 5_800_000))
    return folder / f"{name}.tif"


def test_masked_pixels_are_nodata_in_every_output_and_whole_masked_tiles_skip_the_model(bundle, tmp_path) -> None:
    cloud = np.zeros((80, 100), np.uint8)
    cloud[:40, :50] = 4  # a cloud over the top-left quarter: whole 64-px tiles under it
    cloud[60:66, 80:84] = 2  # a shadow (Fmask 2)
    cloud[70:75, 10:12] = 1  # water (Fmask 1): not masked
    scene = _mask_scene(tmp_path / "in", "s1", cloud)
    plain, masked_job = tmp_path / "plain", tmp_path / "masked"
    result = run("predict", "--model", str(bundle), str(scene), "--output", str(plain), "--probabilities", *TILING)
    assert result.returncode == 0, result.stderr
    result = run(
        "predict", "--model", str(bundle), str(scene), "--output", str(masked_job), "--probabilities",
        "--mask-file", "{stem}_mask.tif", "--mask-values", "2,4", "--mask-buffer", "15", "--vectorize", "gpkg", *TILING,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hidden = np.isin(cloud, [2, 4]).repeat(2, axis=0).repeat(2, axis=1)
    rows, cols = np.mgrid[0:160, 0:200]
    grown = np.zeros_like(hidden)
    for y, x in zip(*np.nonzero(hidden), strict=True):  # 15 m around 10 m pixels: the 8 neighbours (14.1 m)
        grown |= ((rows - y) * 10.0) ** 2 + ((cols - x) * 10.0) ** 2 <= 15.0**2
    with rasterio.open(masked_job / "s1.tif") as out, rasterio.open(plain / "s1.tif") as ref:
        classes, reference = out.read(1), ref.read(1)
    assert np.array_equal(classes == CLASS_NODATA, grown)
    with rasterio.open(masked_job / "s1_probabilities.tif") as probabilities:
        assert np.array_equal(probabilities.read_masks(1) == 0, grown)
    # Far from the mask (beyond the model's reach), the classes are those of the unmasked run.
    far = np.ones_like(grown)
    for y, x in zip(*np.nonzero(grown), strict=True):
        far[max(0, y - 12) : y + 13, max(0, x - 12) : x + 13] = False
    assert far.sum() > 10_000 and np.array_equal(classes[far], reference[far])
    report = json.loads((masked_job / "report.json").read_text())
    (entry,) = report["scenes"]
    assert entry["status"] == "ok" and entry["masked_pixels"] == int(grown.sum())
    assert entry["masked_share"] == round(grown.sum() / (160 * 200), 6)
    plain_entry = json.loads((plain / "report.json").read_text())["scenes"][0]
    assert entry["tiles_skipped_nodata"] > plain_entry["tiles_skipped_nodata"] == 0
    assert report["summary"]["masked_share"] == entry["masked_share"]
    import geopandas as gpd

    polygons = gpd.read_file(masked_job / "s1.gpkg", layer="s1")
    assert polygons.area.sum() == pytest.approx((~grown).sum() * 100.0)
    # The same command again skips the scene; a redone mask file reruns it.
    again = run(
        "predict", "--model", str(bundle), str(scene), "--output", str(masked_job), "--probabilities",
        "--mask-file", "{stem}_mask.tif", "--mask-values", "2,4", "--mask-buffer", "15", "--vectorize", "gpkg", *TILING,
    )  # fmt: skip
    assert (
        again.returncode == 0 and "0 ok" in again.stderr + again.stdout and "1 skipped" in again.stderr + again.stdout
    )
    cloud[:, :] = 0
    write_geotiff(tmp_path / "in" / "s1_mask.tif", cloud[None], transform=Affine(20, 0, 500_000, 0, -20, 5_800_000))
    redo = run(
        "predict", "--model", str(bundle), str(scene), "--output", str(masked_job), "--probabilities",
        "--mask-file", "{stem}_mask.tif", "--mask-values", "2,4", "--mask-buffer", "15", "--vectorize", "gpkg", *TILING,
    )  # fmt: skip
    assert redo.returncode == 0, redo.stderr
    with rasterio.open(masked_job / "s1.tif") as out:
        assert (out.read(1) != CLASS_NODATA).all()


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(["--in-process"], id="in-process"),
        pytest.param(["--ray", "--workers", "2"], id="ray", marks=pytest.mark.ray),
    ],
)
def test_a_scene_masked_whole_is_empty_not_failed_and_a_missing_mask_fails_its_scene_alone(
    bundle, tmp_path, where: list[str]
) -> None:
    whole = _mask_scene(tmp_path / "in", "overcast", np.full((80, 100), 1, np.uint8))
    fine = _mask_scene(tmp_path / "in", "clear", np.zeros((80, 100), np.uint8))
    lost = _mask_scene(tmp_path / "in", "lost", np.zeros((80, 100), np.uint8))
    (tmp_path / "in" / "lost_mask.tif").unlink()
    out = tmp_path / "out"
    result = run(
        "predict", "--model", str(bundle), str(whole), str(fine), str(lost), "--output", str(out),
        "--mask-file", "{stem}_mask.tif", "--mask-values", "1", *TILING[:-1], *where,
    )  # fmt: skip
    assert result.returncode == 1  # one scene failed
    assert "lost_mask.tif: the scene's mask is missing" in result.stderr + result.stdout
    scenes = {s["scene"]: s for s in json.loads((out / "report.json").read_text())["scenes"]}
    assert scenes["overcast"]["status"] == "empty" and scenes["overcast"]["masked_share"] == 1.0
    assert scenes["overcast"]["tiles_run"] == 0 and scenes["clear"]["status"] == "ok"
    assert scenes["clear"]["masked_pixels"] == 0 and scenes["lost"]["status"] == "failed"
    with rasterio.open(out / "overcast.tif") as empty:
        assert (empty.read(1) == CLASS_NODATA).all()
    manifest = json.loads((out / "manifest.json").read_text())["scenes"]
    assert manifest["overcast"]["status"] == "empty" and manifest["overcast"]["output_bytes"] > 0


@pytest.fixture
def s2_bundle(tmp_path) -> Path:
    bands = [BandSpec(name=n, index=i, mean=0.1, std=0.1) for i, n in enumerate(["B02", "B03", "B04", "B08", "B11"], 1)]
    return init_bundle(tmp_path / "bundle", "unet", 5, 3, bands=bands, base_channels=4, depth=2)


def test_a_stac_scl_asset_masks_its_item_and_an_item_without_it_fails_alone(tmp_path, s2_bundle) -> None:
    from geoseg import cli

    items = []
    for item_id in ("cloudy", "no-scl"):
        item = s2_item(tmp_path / "data", item_id, size=64, seed=len(item_id))
        if item_id == "cloudy":
            scl = np.full((1, 32, 32), 4, np.uint8)  # vegetation
            scl[0, :16, :16] = 9  # cloud, high probability
            scl[0, 20:24, 20:24] = 3  # cloud shadow
            write_geotiff(tmp_path / "data" / "SCL.tif", scl, transform=Affine(20, 0, ORIGIN_X, 0, -20, ORIGIN_Y))
            item.add_asset("SCL", pystac.Asset(href=str(tmp_path / "data" / "SCL.tif"), roles=["data"]))
        items.append(item)
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli.cli,
        [
            "predict",
            "--model",
            str(s2_bundle),
            str(collection),
            "--output",
            str(out),
            "--mask-asset",
            "SCL",
            "--in-process",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "STAC item 'no-scl' has no mask asset 'SCL'; its assets: B02, B03, B04, B08, B11, thumbnail" in result.output
    with rasterio.open(out / "cloudy.tif") as classes:
        nodata = classes.read(1) == CLASS_NODATA
    expected = np.zeros((64, 64), bool)
    expected[:32, :32] = True
    expected[40:48, 40:48] = True
    expected[:2, :3] = True  # the item's own nodata corner
    assert np.array_equal(nodata, expected)
    (cloudy,) = [s for s in json.loads((out / "report.json").read_text())["scenes"] if s["scene"] == "cloudy"]
    assert cloudy["masked_pixels"] == 32 * 32 + 64 and math.isclose(cloudy["masked_share"], 1088 / 4096, abs_tol=1e-6)


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (["--mask-file", "{stem}_mask.tif"], "mask_file needs mask_values"),
        (["--mask-asset", "cloudmask"], "mask_asset cloudmask has no preset: give mask_values"),
        (["--mask-values", "scl"], "mask_values without mask_asset or mask_file"),
        (["--mask-asset", "SCL", "--mask-values", "clouds"], "config key mask_values"),
        (["--mask-asset", "SCL", "--mask-file", "{stem}_m.tif"], "a mask comes from one of them"),
        (["--mask-asset", "SCL", "--mask-buffer", "-5"], "mask_buffer"),
    ],
)
def test_bad_mask_options_are_one_line(bundle, tmp_path, args: list[str], cause: str) -> None:
    scene = _mask_scene(tmp_path / "in", "s", np.zeros((80, 100), np.uint8))
    result = run("predict", "--model", str(bundle), str(scene), "--output", str(tmp_path / "out"), *args, *TILING)
    _one_line_error(result, cause)
    assert not (tmp_path / "out").exists()


def test_a_job_without_masks_keeps_its_fingerprint() -> None:
    """Jobs recorded before masks existed must not rerun: no mask adds nothing to the fingerprint's options."""
    from geoseg.inference.options import PredictOptions

    assert "mask" not in PredictOptions().model_run_dict()
    masked = PredictOptions(mask=MaskOptions(MaskRule.parse("scl"), asset="SCL", buffer_m=20))
    assert masked.model_run_dict()["mask"] == "asset:SCL values:0,3,8,9,10 buffer:20m"
