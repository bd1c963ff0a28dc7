"""Synthetic archives: deterministic, georeferenced in several UTM zones, labels consistent as raster and vector."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features

from geoseg.synth import CLASSES, LABEL_NODATA, make_archive


def _arrays(scene):
    with rasterio.open(scene.image) as img, rasterio.open(scene.labels) as lab:
        return img.read(), lab.read(1), img.profile, lab.profile


def test_same_seed_same_data_other_seed_other_data(tmp_path) -> None:
    a = make_archive(tmp_path / "a", scenes=2, size=192, seed=5)
    b = make_archive(tmp_path / "b", scenes=2, size=192, seed=5)
    c = make_archive(tmp_path / "c", scenes=1, size=192, seed=6)
    for sa, sb in zip(a, b, strict=True):
        img_a, lab_a, _, _ = _arrays(sa)
        img_b, lab_b, _, _ = _arrays(sb)
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(lab_a, lab_b)
    assert not np.array_equal(_arrays(a[0])[1], _arrays(c[0])[1])


def test_scenes_are_realistic_geotiffs(tmp_path) -> None:
    scenes = make_archive(tmp_path, scenes=3, size=512, seed=0)
    assert len({s.epsg for s in scenes}) >= 2
    for scene in scenes:
        image, labels, img_profile, lab_profile = _arrays(scene)
        assert img_profile["dtype"] == "uint16" and img_profile["count"] == 4 and img_profile["tiled"]
        assert img_profile["compress"] == "deflate" and img_profile["crs"].to_epsg() == scene.epsg
        assert lab_profile["transform"] == img_profile["transform"]
        nodata = labels == LABEL_NODATA
        assert 0 < nodata.mean() < 0.2
        assert (image[:, nodata] == 0).all() and (image[:, ~nodata] > 0).all()
        present = set(np.unique(labels[~nodata]).tolist())
        assert len(present) >= 5, present
        # Spectra: water is dark in NIR, vegetation bright.
        nir = image[3].astype(float)
        assert nir[labels == 1].mean() < 0.3 * nir[labels == 2].mean()


def test_label_polygons_rasterise_to_the_label_raster(tmp_path) -> None:
    scene = make_archive(tmp_path, scenes=1, size=256, seed=2)[0]
    frame = gpd.read_file(scene.polygons)
    _, labels, _, profile = _arrays(scene)
    assert set(frame.columns) >= {"class_id", "class_name", "area_m2", "geometry"}
    assert frame.crs.to_epsg() == scene.epsg
    burned = features.rasterize(
        zip(frame.geometry, frame.class_id, strict=True),
        out_shape=labels.shape,
        transform=profile["transform"],
        fill=LABEL_NODATA,
        dtype="uint8",
    )
    np.testing.assert_array_equal(burned, labels)
    names = {c.id: c.name for c in CLASSES}
    assert all(names[i] == n for i, n in zip(frame.class_id, frame.class_name, strict=True))


def test_a_series_is_one_place_seen_cloudy_in_two_zones_as_stac(tmp_path) -> None:
    """geoseg synth --series: repeated acquisitions of one landscape in UTM 32N and 33N, each a STAC item with a
    date, an SCL asset at twice the pixel size flagging every cloudy pixel, and labels equal to the truth."""
    from datetime import UTC, datetime

    from geoseg.io.stac import item_assets, read_items
    from geoseg.synth_series import SCL_CLOUD_HIGH, SCL_CLOUD_MEDIUM, make_series, truth_on_grid

    series = make_series(tmp_path / "a", scenes=6, size=160, seed=3)
    again = make_series(tmp_path / "b", scenes=6, size=160, seed=3)
    items = {i.id: i for i in read_items(str(series.catalog))}
    assert sorted(items) == sorted(s.id for s in series.scenes)
    assert {s.epsg for s in series.scenes} == {32632, 32633}
    years = sorted(s.acquired.year for s in series.scenes)
    assert years == [2023, 2024, 2024, 2024, 2024, 2024]
    assert all(items[s.id].datetime == s.acquired and s.acquired.tzinfo == UTC for s in series.scenes)
    assert sum(s.cloud_share > 0.05 for s in series.scenes) >= 4 and min(s.cloud_share for s in series.scenes) == 0
    for scene, twin in zip(series.scenes, again.scenes, strict=True):
        keys = dict(item_assets(items[scene.id]))
        assert set(keys) == {"blue", "green", "red", "nir", "SCL", "labels"}
        with rasterio.open(scene.bands[0]) as blue, rasterio.open(twin.bands[0]) as blue_twin:
            pixels = blue.read(1)
            assert np.array_equal(pixels, blue_twin.read(1)) and blue.crs.to_epsg() == scene.epsg
            grid = (blue.crs, blue.transform, blue.width, blue.height)
        with rasterio.open(scene.scl) as scl_src:
            assert scl_src.transform.a == 2 * grid[1].a and scl_src.width == grid[2] // 2
            scl = scl_src.read(1).repeat(2, axis=0).repeat(2, axis=1)
        bright = pixels > 3500  # reflectance 0.35 in blue: cloud, which no land cover reaches
        assert np.isin(scl[bright], [SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH]).all()
        assert (bright.mean() > 0.02) == (scene.cloud_share > 0.05)
        with rasterio.open(scene.labels) as labels_src:
            labels, valid = labels_src.read(1), labels_src.read_masks(1) > 0
        truth = truth_on_grid(series.truth, *grid)
        assert np.array_equal(labels[valid], truth[valid]) and 0.8 < valid.mean() < 1
        assert (pixels[~valid] == 0).all() and (pixels[valid] > 0).all()
    # One place: the scenes' footprints overlap (the middle of the region is seen by every scene).
    from shapely.geometry import shape

    footprints = [shape(items[s.id].geometry) for s in series.scenes]
    common = footprints[0]
    for footprint in footprints[1:]:
        common = common.intersection(footprint)
    assert common.area > 0.05 * footprints[0].area
    assert all(abs(f.centroid.x - 12.0) < 0.01 and abs(f.centroid.y - 48.6) < 0.01 for f in footprints)  # lon/lat
    assert datetime(2024, 1, 1, tzinfo=UTC) < max(s.acquired for s in series.scenes)


def test_synth_writes_only_into_a_new_empty_or_its_own_folder(tmp_path) -> None:
    """A rerun replaces synth's own files (and removes those it no longer writes); a folder holding anything
    else is refused in one line, the file untouched, for both kinds of archive."""
    import pytest
    from test_cli import _one_line_error, run

    from geoseg.errors import GeoSegError
    from geoseg.synth_series import make_series

    make_archive(tmp_path / "a", scenes=2, size=96, seed=1)
    make_archive(tmp_path / "a", scenes=1, size=96, seed=1)  # its own folder: the second scene's files go
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".tif") == [
        "scene_000.tif",
        "scene_000_labels.tif",
    ]
    mine = tmp_path / "b" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("field notes")
    with pytest.raises(GeoSegError, match="holds files geoseg synth did not write"):
        make_archive(tmp_path / "b", scenes=1, size=96)
    with pytest.raises(GeoSegError, match="holds files geoseg synth did not write"):
        make_series(tmp_path / "b", scenes=2, size=96)
    assert mine.read_text() == "field notes" and sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"]
    series = make_series(tmp_path / "c", scenes=2, size=96)
    (tmp_path / "c" / "data" / "extra.tif").write_bytes(b"mine")  # the user's file inside synth's folder
    result = run("synth", "--series", "--out", str(tmp_path / "c"), "--scenes", "2", "--size", "96")
    _one_line_error(result, "extra.tif: was not written by geoseg synth")
    assert series.truth.exists() and (tmp_path / "c" / "data" / "extra.tif").read_bytes() == b"mine"
