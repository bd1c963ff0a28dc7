"""Scene validation, padded windowed reads with masks, and the atomic COG writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from geoseg.errors import GeoSegError
from geoseg.io import open_scene, read_tile
from geoseg.io.raster import same_projection
from geoseg.io.writer import CLASS_NODATA, StagingRaster, class_staging, publish_cog


def test_open_scene_reads_the_header(make_geotiff) -> None:
    path = make_geotiff(np.ones((3, 20, 30), dtype=np.uint16), nodata=0)
    scene = open_scene(path)
    assert (scene.width, scene.height, scene.count, scene.dtype) == (30, 20, 3, "uint16")
    assert scene.crs.to_epsg() == 32633 and scene.nodata == 0 and scene.pixel_area_m2 == 100


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no_crs", "no CRS"),
        ("no_transform", "no geotransform"),
        ("not_tiff", "cannot open as a raster"),
        ("missing", "cannot open as a raster"),
        ("complex", "unsupported pixel type"),
    ],
)
def test_bad_scenes_are_one_line_errors(make_geotiff, tmp_path, kind, message) -> None:
    if kind == "no_crs":
        path = make_geotiff(np.ones((1, 4, 4), np.uint8), crs=None)
    elif kind == "no_transform":
        with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
            path = make_geotiff(np.ones((1, 4, 4), np.uint8), transform=Affine.identity())
    elif kind == "not_tiff":
        path = tmp_path / "fake.tif"
        path.write_text("this is not a GeoTIFF")
    elif kind == "complex":
        path = make_geotiff(np.ones((1, 4, 4), np.complex64))
    else:
        path = tmp_path / "missing.tif"
    with pytest.raises(GeoSegError) as info:
        open_scene(path)
    assert message in str(info.value) and str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_read_tile_reflects_beyond_the_border(make_geotiff) -> None:
    data = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    with rasterio.open(make_geotiff(data)) as src:
        tile, valid = read_tile(src, Window(-2, -2, 8, 8), pad_mode="reflect")
    expected = np.pad(data[0], ((2, 1), (2, 0)), mode="reflect")
    np.testing.assert_array_equal(tile[0], expected)
    assert valid.all()


def test_read_tile_nodata_padding_and_masks(make_geotiff) -> None:
    data = np.full((2, 4, 4), 5, dtype=np.float32)
    data[0, 1, 1] = -9999
    data[1, 2, 2] = np.nan
    with rasterio.open(make_geotiff(data, nodata=-9999)) as src:
        tile, valid = read_tile(src, Window(0, 0, 6, 6), pad_mode="nodata")
    assert tile.shape == (2, 6, 6)
    assert not valid[1, 1] and not valid[2, 2]
    assert not valid[4:, :].any() and not valid[:, 4:].any()
    assert valid[0, 0] and valid.sum() == 16 - 2


def test_read_tile_single_pixel_raster(make_geotiff) -> None:
    with rasterio.open(make_geotiff(np.array([[[7]]], dtype=np.uint8))) as src:
        tile, valid = read_tile(src, Window(-3, -3, 8, 8))
    assert (tile == 7).all() and valid.all()


@pytest.mark.parametrize("tile", [256, 100])  # block-aligned internal tiles (compressed), or not (uncompressed)
def test_writer_produces_a_georeferenced_cog_with_colours(make_geotiff, tmp_path, tile) -> None:
    scene = open_scene(make_geotiff(np.ones((1, 700, 600), np.uint8)))
    out = tmp_path / "out" / "classes.tif"
    classes = (np.arange(700 * 600).reshape(700, 600) % 3).astype(np.uint8)
    classes[:10] = CLASS_NODATA
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    with class_staging(out, scene, [0, 1, 2], ["a", "b", "c"], colors, tile) as w:
        windows = [(r, c) for r in range(0, 700, tile) for c in range(0, 600, tile)]
        for r, c in reversed(windows):  # blocks arrive in any order
            part = classes[r : r + tile, c : c + tile]
            w.write(Window(c, r, part.shape[1], part.shape[0]), part)
    assert not out.exists()  # only the staging file until it is published
    publish_cog(w.staging, out, "nearest")
    with rasterio.open(out) as dst:
        assert dst.crs == scene.crs and dst.transform == scene.transform
        assert dst.nodata == CLASS_NODATA and dst.dtypes == ("uint8",)
        np.testing.assert_array_equal(dst.read(1), classes)
        assert dst.colormap(1)[1] == (0, 255, 0, 255)
        assert dst.tags()["class_2"] == "c"
        assert dst.overviews(1), "a COG carries overviews"
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert [p.name for p in out.parent.iterdir()] == ["classes.tif"]


def test_a_cog_is_built_alone_in_a_folder_of_its_own(make_geotiff, tmp_path, monkeypatch) -> None:
    """GDAL lists the folder of every GeoTIFF it creates: a COG built among an archive's products would pay a
    listing of all of them. It is built alone in a fresh folder, renamed out of it, and the folder goes."""
    import rasterio.shutil

    scene = open_scene(make_geotiff(np.ones((1, 40, 30), np.uint8)))
    out = tmp_path / "job" / "x.tif"
    for i in range(20):
        _touch_file(out.parent / f"other{i}.tif")
    seen: list[list[str]] = []
    copy = rasterio.shutil.copy

    def watched(src, dst, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(sorted(os.listdir(Path(dst).parent)))
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(rasterio.shutil, "copy", watched)
    staging = class_staging(out, scene, [0, 1], ["a", "b"], [(1, 2, 3), (4, 5, 6)], 64)
    staging.write(Window(0, 0, 30, 40), np.zeros((40, 30), np.uint8))
    publish_cog(staging.close(), out, "nearest")
    assert seen == [[]]  # nothing else where GDAL writes the COG
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([f"other{i}.tif" for i in range(20)] + ["x.tif"])


def test_a_failed_cog_build_leaves_nothing_and_keeps_its_source(make_geotiff, tmp_path, monkeypatch) -> None:
    """``build_cog`` (a mosaic's whole COG, from its VRT): GDAL's COG driver computes overviews in a scratch file
    named after its target; a build that fails (or is killed) midway keeps that file inside the build folder, which
    goes, and the source stays."""
    import rasterio.shutil

    from geoseg.io.writer import build_cog

    source = make_geotiff(np.ones((1, 40, 30), np.uint8), name="source.tif")
    out = tmp_path / "out" / "x.tif"
    out.parent.mkdir()
    copy = rasterio.shutil.copy

    def dies_midway(src, dst, **kwargs):  # type: ignore[no-untyped-def]
        Path(f"{dst}.ovr.tmp").write_bytes(b"scratch")  # what the COG driver writes first
        raise rasterio.errors.RasterioIOError("killed")

    monkeypatch.setattr(rasterio.shutil, "copy", dies_midway)
    with pytest.raises(rasterio.errors.RasterioIOError):
        build_cog(Path(source), out, "nearest")
    assert list(out.parent.iterdir()) == [] and Path(source).exists()
    monkeypatch.setattr(rasterio.shutil, "copy", copy)
    build_cog(Path(source), out, "nearest")
    with rasterio.open(out) as built, rasterio.open(source) as read:
        np.testing.assert_array_equal(built.read(), read.read())
    assert [p.name for p in out.parent.iterdir()] == ["x.tif"]


def _touch_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["classes", "probabilities"])
def test_a_cog_from_a_memory_raster_is_byte_identical_to_one_from_a_staging_file(make_geotiff, tmp_path, kind) -> None:
    """A one-block scene is published from memory (no staging file): its COG must be the very same bytes."""
    from geoseg.io.writer import probability_staging

    scene = open_scene(make_geotiff(np.ones((1, 300, 200), np.uint8)))
    rng = np.random.default_rng(3)
    if kind == "classes":
        pixels = rng.integers(0, 3, (1, 300, 200)).astype(np.uint8)
        pixels[0, :7] = CLASS_NODATA

        def make(path: Path, memory: bool) -> StagingRaster:
            return class_staging(
                path, scene, [0, 1, 2], ["a", "b", "c"], [(9, 8, 7), (1, 2, 3), (4, 5, 6)], 320, memory
            )
    else:
        pixels = rng.integers(0, 255, (4, 300, 200)).astype(np.uint8)

        def make(path: Path, memory: bool) -> StagingRaster:
            return probability_staging(path, scene, ["a", "b", "c"], 320, memory)

    built = {}
    for memory in (False, True):
        out = tmp_path / f"{memory}" / "x.tif"
        out.parent.mkdir()
        staging = make(out, memory)
        staging.write(Window(0, 0, 200, 300), pixels)
        if memory:
            publish_cog(staging.dataset, out, "nearest")
            staging.abort()
            assert [p.name for p in out.parent.iterdir()] == ["x.tif"]  # no staging file was ever written
        else:
            publish_cog(staging.close(), out, "nearest")
        assert [p.name for p in out.parent.iterdir()] == ["x.tif"]  # and no build folder or temporary name left
        built[memory] = out.read_bytes()
    assert built[True] == built[False]  # a held block's COG is built in GDAL's memory: the same bytes


def test_a_file_built_in_memory_appears_whole_or_not_at_all(tmp_path) -> None:
    from geoseg.io.writer import built_in_memory

    pixels = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
    out = tmp_path / "x.tif"
    with pytest.raises(RuntimeError, match="stopped"), built_in_memory(out) as target:
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(pixels)
        raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no temporary name
    out.write_bytes(b"old")
    with built_in_memory(out) as target:
        assert not target.startswith(str(tmp_path))  # GDAL writes to memory, not beside the output
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), pixels)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the scratch file has no CRS
@pytest.mark.parametrize(("bands", "resampling"), [(1, "nearest"), (4, "average")])
def test_the_overview_scratch_file_is_cheap_and_changes_no_byte_of_the_cog(
    make_geotiff, tmp_path, monkeypatch, bands, resampling
) -> None:
    """GDAL's COG driver builds overviews in a scratch GeoTIFF (ZSTD level 9 by default, costlier than the COG's
    own DEFLATE). Ours is uncompressed, or LZW when large: the scratch file really is, and the COG's bytes are
    those of GDAL's default."""
    from geoseg.io import writer

    scene = open_scene(make_geotiff(np.ones((1, 1500, 1100), np.uint8)))
    pixels = np.random.default_rng(5).integers(0, 4, (bands, 1500, 1100)).astype(np.uint8)
    pixels[:, 200:900, 300:700] = 2  # a smooth part too: compressible, as class maps are
    source = tmp_path / "src.tif"
    staging = StagingRaster(source, scene, [f"b{i}" for i in range(bands)], CLASS_NODATA, 512)
    staging.write(Window(0, 0, 1100, 1500), pixels)
    os.replace(staging.close(), source)

    built, scratch = {}, {}
    for choice in ("ZSTD", "NONE", "LZW"):  # ZSTD: what GDAL does when not told
        monkeypatch.setattr(writer, "overview_scratch_compression", lambda *_, c=choice: c)
        folder = tmp_path / choice
        folder.mkdir()
        with rasterio.Env(COG_DELETE_TEMP_FILES="NO"):  # GDAL's debug switch: keep the scratch file to look at
            writer.copy_to_cog(source, folder / "x.tif", resampling)
        [kept] = [p for p in folder.iterdir() if p.name != "x.tif" and p.suffix == ".tmp"]
        with rasterio.open(kept) as tmp:
            scratch[choice] = tmp.compression.name if tmp.compression else "NONE"
            assert tmp.count == bands and tmp.width < 1100  # the overviews, not the image
        built[choice] = (folder / "x.tif").read_bytes()
    assert scratch == {"ZSTD": "zstd", "NONE": "NONE", "LZW": "lzw"}
    assert built["NONE"] == built["ZSTD"] and built["LZW"] == built["ZSTD"]
    with rasterio.open(tmp_path / "NONE" / "x.tif") as cog:
        assert cog.overviews(1) == [2, 4] and cog.compression.name == "deflate"
        np.testing.assert_array_equal(cog.read(), pixels)


def test_overview_scratch_files_are_uncompressed_up_to_a_bound() -> None:
    from geoseg.io.writer import SCRATCH_UNCOMPRESSED_MAX, overview_scratch_compression

    assert overview_scratch_compression(8192, 8192, 1) == "NONE"
    assert overview_scratch_compression(40_000, 40_000, 4) == "NONE"  # 1.99 GiB of overviews
    assert overview_scratch_compression(40_000, 40_000, 8) == "LZW"
    side = int((3 * SCRATCH_UNCOMPRESSED_MAX) ** 0.5)
    assert overview_scratch_compression(side, side, 1) == "NONE"
    assert overview_scratch_compression(side + 2, side + 2, 1) == "LZW"
    assert overview_scratch_compression(side, side, 1, itemsize=2) == "LZW"


def test_writer_leaves_nothing_when_aborted(make_geotiff, tmp_path) -> None:
    scene = open_scene(make_geotiff(np.ones((1, 50, 50), np.uint8)))
    out = tmp_path / "classes.tif"
    with pytest.raises(RuntimeError), class_staging(out, scene, [0], ["a"], [(0, 0, 0)], 64) as writer:
        writer.write(Window(0, 0, 50, 10), np.zeros((10, 50), np.uint8))
        raise RuntimeError("crash mid-scene")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_same_projection_tolerates_datum_realisation_tags() -> None:
    from rasterio.crs import CRS

    assert same_projection(CRS.from_epsg(3358), CRS.from_epsg(32119))
    assert not same_projection(CRS.from_epsg(32633), CRS.from_epsg(32634))
    assert not same_projection(CRS.from_epsg(4326), CRS.from_epsg(4269))


def test_alpha_band_marks_pixels_invalid(make_geotiff) -> None:
    rgba = np.full((4, 6, 6), 100, dtype=np.uint8)
    rgba[3] = 255
    rgba[3, :2] = 0  # transparent top rows
    path = make_geotiff(rgba, photometric="RGB", alpha="YES")
    with rasterio.open(path) as src:
        _, valid = read_tile(src, Window(0, 0, 6, 6), bands=[1, 2, 3])
    assert not valid[:2].any() and valid[2:].all()


def test_open_datasets_reuse_handles_and_reopen_rewritten_files(make_geotiff, tmp_path) -> None:
    import os

    from geoseg.io.raster import OpenDatasets

    cache = OpenDatasets(capacity=2)
    first = make_geotiff(np.full((1, 8, 8), 1, np.uint8), name="a.tif")
    handle = cache.get(first)
    assert cache.get(first) is handle  # the same handle, so its decoded blocks are reused
    # The file is replaced (another job rewrote it): the next read must see the new pixels, not the old handle's.
    replacement = make_geotiff(np.full((1, 8, 8), 7, np.uint8), name="b.tif")
    os.replace(replacement, first)
    fresh = cache.get(first)
    assert fresh is not handle and fresh.read(1)[0, 0] == 7
    others = [make_geotiff(np.zeros((1, 4, 4), np.uint8), name=f"o{i}.tif") for i in range(2)]
    for path in others:
        cache.get(path)
    assert fresh.closed and handle.closed  # evicted handles are closed, not leaked
    cache.close()
    assert len(cache._open) == 0


def test_open_datasets_accept_gdal_virtual_paths() -> None:
    from pathlib import Path

    from geoseg.io.raster import OpenDatasets

    path = Path("/vsimem/geoseg-open-datasets.tif")
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8", "crs": "EPSG:32633"}
    profile["transform"] = Affine(10, 0, 500_000, 0, -10, 5_800_000)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 4, 4), 5, np.uint8))
    cache = OpenDatasets()
    try:
        handle = cache.get(path)
        assert cache.get(path) is handle and handle.read(1)[0, 0] == 5
    finally:
        cache.close()
        rasterio.shutil.delete(path)
