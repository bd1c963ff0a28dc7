"""Chunked polygonize equals whole-raster polygonize; exports open in GIS formats; bad input is clear."""

from __future__ import annotations

from collections import Counter

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio import features
from shapely.geometry import shape

from geoseg.errors import GeoSegError
from geoseg.export import FORMATS, to_geodataframe, write_polygons
from geoseg.vectorize import polygonize


def _whole(path):
    with rasterio.open(path) as src:
        data, mask = src.read(1), src.read_masks(1) > 0
        if data.dtype.kind == "f":
            data = np.where(mask, data, 0).astype("int32")
        polys = [
            (shape(g), int(v)) for g, v in features.shapes(data, mask=mask, connectivity=4, transform=src.transform)
        ]
        return polys, data, mask, src.transform


def _assert_same_as_whole(path, chunk) -> None:
    whole, data, mask, transform = _whole(path)
    chunked = polygonize(str(path), chunk=chunk)
    assert Counter(v for _, v in whole) == Counter(chunked.class_ids.tolist())
    burned = features.rasterize(
        zip(chunked.geometries, chunked.class_ids.tolist(), strict=True),
        out_shape=data.shape,
        transform=transform,
        fill=-1,
        dtype="int32",
    )
    np.testing.assert_array_equal(burned[mask], data[mask])
    assert (burned[~mask] == -1).all()
    for value in set(chunked.class_ids.tolist()):
        a = shapely.union_all([g for g, v in whole if v == value])
        b = shapely.union_all(chunked.geometries[chunked.class_ids == value])
        assert a.symmetric_difference(b).area == pytest.approx(0, abs=1e-6 * max(a.area, 1))


@pytest.mark.realdata
@pytest.mark.parametrize(
    "name", ["nlcd_lc/lc.tif", "nc_landsat/strata.tif", "atlanta_buildings/sample_geotiff_buildings_mask.tif"]
)
def test_real_label_rasters_round_trip_with_many_seams(real_data, name) -> None:
    _assert_same_as_whole(real_data / name, chunk=37)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    classes=st.integers(1, 4),
    chunk=st.integers(1, 25),
    blocky=st.booleans(),
)
def test_random_rasters_any_chunk_size(tmp_path_factory, seed, height, width, classes, chunk, blocky) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, classes, (height, width)).astype(np.uint8)
    if blocky:  # larger regions with holes and islands, not just salt-and-pepper
        small = rng.integers(0, classes, ((height + 3) // 4, (width + 3) // 4)).astype(np.uint8)
        data = np.kron(small, np.ones((4, 4), np.uint8))[:height, :width]
        data[rng.random((height, width)) < 0.05] = classes
    path = tmp_path_factory.mktemp("r") / "mask.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=rasterio.Affine(2, 0, 0, 0, -2, 0),
    ) as dst:
        dst.write(data, 1)
    _assert_same_as_whole(path, chunk)


def test_nodata_and_skipped_classes_make_no_polygons(make_geotiff) -> None:
    data = np.array([[0, 1, 1, 255], [0, 2, 2, 255]], dtype=np.uint8)
    polys = polygonize(str(make_geotiff(data, nodata=255)), chunk=2, skip_classes={0})
    assert sorted(polys.class_ids.tolist()) == [1, 2]


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_every_format_is_written_and_reads_back(make_geotiff, tmp_path, suffix) -> None:
    data = np.zeros((40, 50), dtype=np.uint8)
    data[5:20, 5:30] = 1
    data[25:35, 10:45] = 2
    frame = to_geodataframe(polygonize(str(make_geotiff(data)), chunk=16))
    out = write_polygons(frame, tmp_path / f"classes{suffix}")
    back = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    assert len(back) == 3
    assert back.crs.to_epsg() == (4326 if suffix in {".geojson", ".json"} else 32633)
    assert sorted(back["class_id"]) == [0, 1, 2]
    assert sorted(back["area_m2"].round(1)) == sorted(frame["area_m2"].round(1))
    assert sorted(frame["area_m2"])[:2] == [pytest.approx(10 * 35 * 100), pytest.approx(15 * 25 * 100)]
    if suffix == ".shp":
        assert (tmp_path / "classes.prj").exists() and (tmp_path / "classes.cpg").exists()
        assert "perimeter" in back.columns
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_bad_inputs_are_one_line_errors(make_geotiff, tmp_path) -> None:
    with pytest.raises(GeoSegError, match="fractional values"):
        polygonize(str(make_geotiff(np.full((4, 4), 0.5, np.float32), name="f.tif")))
    with pytest.raises(GeoSegError, match="no CRS"):
        polygonize(str(make_geotiff(np.zeros((4, 4), np.uint8), name="n.tif", crs=None)))
    frame = to_geodataframe(polygonize(str(make_geotiff(np.zeros((4, 4), np.uint8), name="ok.tif"))))
    with pytest.raises(GeoSegError, match="unknown vector format"):
        write_polygons(frame, tmp_path / "out.xyz")
    with pytest.raises(GeoSegError, match="not writable"):
        write_polygons(frame, tmp_path / "missing" / "out.gpkg")
