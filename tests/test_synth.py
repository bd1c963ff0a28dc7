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
