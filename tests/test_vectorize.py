"""Chunked polygonize equals whole-raster polygonize; exports open in GIS formats; bad input is clear."""

from __future__ import annotations

import os
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
from geoseg.vector.export import FORMATS, to_geodataframe, write_polygons
from geoseg.vector.polygonize import polygonize


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
    # Polygon by polygon: the same geometries (up to vertex order), all valid.
    assert shapely.is_valid(chunked.geometries).all()
    whole_geoms = np.array([g for g, _ in whole], dtype=object)
    whole_classes = np.array([v for _, v in whole])
    np.testing.assert_array_equal(
        shapely.equals(
            whole_geoms[_canonical_order(whole_geoms, whole_classes)],
            chunked.geometries[_canonical_order(chunked.geometries, chunked.class_ids)],
        ),
        True,
    )


def _canonical_order(geoms: np.ndarray, classes: np.ndarray) -> np.ndarray:
    bounds = shapely.bounds(geoms)
    area = np.round(shapely.area(geoms), 6)
    return np.lexsort((bounds[:, 3], bounds[:, 2], bounds[:, 1], bounds[:, 0], area, classes))


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
    write_polygons(frame, tmp_path / "missing" / "out.gpkg")  # a missing folder is made, as predict does
    assert len(gpd.read_file(tmp_path / "missing" / "out.gpkg")) == len(frame)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(GeoSegError, match="cannot create the output folder"):
        write_polygons(frame, tmp_path / "a_file" / "out.gpkg")
    (tmp_path / "folder.gpkg").mkdir()
    with pytest.raises(GeoSegError, match="is a folder"):
        write_polygons(frame, tmp_path / "folder.gpkg")
    with pytest.raises(GeoSegError, match=r"--format shp contradicts the file's extension \.gpkg"):
        write_polygons(frame, tmp_path / "x.gpkg", fmt="shp")
    assert write_polygons(frame, tmp_path / "named", fmt="fgb") == tmp_path / "named.fgb"


def test_a_local_crs_to_geojson_and_a_unit_above_the_raster_are_one_line(make_geotiff, tmp_path) -> None:
    """Both ended in "unexpected error" (ProjError; "size must be smaller than size of image"), exit 2."""
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    local = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    classes = np.random.default_rng(0).integers(0, 3, (40, 50)).astype(np.uint8)
    site = make_geotiff(classes, name="site.tif", crs=rasterio.crs.CRS.from_wkt(local))
    with pytest.raises(GeoSegError, match=r"CRS \(site grid\) cannot be transformed to EPSG:4326.*RFC 7946"):
        vectorize_raster(site, [tmp_path / "site.geojson"], VectorizeOptions())
    assert vectorize_raster(site, [tmp_path / "site.gpkg"], VectorizeOptions()) > 0  # its own CRS is fine
    utm = make_geotiff(classes, name="utm.tif")  # 10 m pixels: 200 000 m2
    with pytest.raises(GeoSegError, match=r"--min-area 200000 m2 is at least the whole raster's area"):
        vectorize_raster(utm, [tmp_path / "u.gpkg"], VectorizeOptions(min_area_m2=200_000))
    assert vectorize_raster(utm, [tmp_path / "u.gpkg"], VectorizeOptions(min_area_m2=100_000)) >= 1
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "site.geojson").exists()


def test_areas_across_the_antimeridian(make_geotiff) -> None:
    """A lon/lat raster from 179.8 E to 180.3 E: its polygons' areas sum to the geodesic area of its footprint
    (they were 359x too large: the equal-area CRS, centred on 0, cut them at 180 and wrapped them round the globe)."""
    from pyproj import Geod

    classes = np.random.default_rng(1).integers(0, 3, (40, 50)).astype(np.uint8)
    raster = make_geotiff(
        classes, name="east.tif", crs="EPSG:4326", transform=rasterio.Affine(0.01, 0, 179.8, 0, -0.01, 10)
    )
    frame = to_geodataframe(polygonize(str(raster)))
    lons = np.linspace(179.8, 180.3, 1001)  # along the parallels, densified
    lats = np.r_[np.full(lons.size, 10.0), np.full(lons.size, 9.6)]
    footprint = abs(Geod(ellps="WGS84").polygon_area_perimeter(np.r_[lons, lons[::-1]], lats)[0])
    assert frame["area_m2"].sum() == pytest.approx(footprint, rel=1e-6)


def _write_mask(path, data, transform=None):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype.name,
        crs="EPSG:32633",
        transform=transform or rasterio.Affine(2, 0, 0, 0, -2, 0),
    ) as dst:
        dst.write(data, 1)
    return path


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(2, 40), chunk=st.integers(1, 17))
def test_eight_connectivity_matches_whole_raster(tmp_path_factory, seed, size, chunk) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.random((size, size)) < 0.4).astype(np.uint8)
    path = _write_mask(tmp_path_factory.mktemp("c8") / "m.tif", data)
    whole = [
        (shape(g), int(v))
        for g, v in features.shapes(data, connectivity=8, transform=rasterio.Affine(2, 0, 0, 0, -2, 0))
    ]
    chunked = polygonize(str(path), chunk=chunk, connectivity=8)
    assert Counter(v for _, v in whole) == Counter(chunked.class_ids.tolist())
    for value in (0, 1):
        a = shapely.union_all([g for g, v in whole if v == value])
        b = shapely.union_all(chunked.geometries[chunked.class_ids == value])
        assert a.symmetric_difference(b).area == pytest.approx(0, abs=1e-9)


@pytest.mark.realdata
def test_same_polygons_as_gdal_polygonize(real_data, tmp_path) -> None:
    import shutil
    import subprocess

    if shutil.which("gdal_polygonize.py") is None:
        if os.environ.get("GEOSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail("gdal_polygonize.py (Debian gdal-bin) is missing; .ci/run installs it")
        pytest.skip("gdal_polygonize.py (Debian gdal-bin) is not installed")
    mask = real_data / "nc_landsat" / "strata.tif"
    gdal_out = tmp_path / "gdal.gpkg"
    subprocess.run(
        ["gdal_polygonize.py", "-q", str(mask), "-f", "GPKG", str(gdal_out), "strata", "class_id"], check=True
    )
    gdal = gpd.read_file(gdal_out)
    ours = to_geodataframe(polygonize(str(mask), chunk=37))
    assert Counter(gdal["class_id"].astype(int)) == Counter(ours["class_id"].astype(int))
    for value in sorted(set(ours["class_id"])):
        a = shapely.union_all(gdal.geometry[gdal["class_id"] == value].to_numpy())
        b = shapely.union_all(ours.geometry[ours["class_id"] == value].to_numpy())
        assert a.symmetric_difference(b).area == pytest.approx(0, abs=1e-3)


def test_simplification_keeps_shared_edges(tmp_path) -> None:
    from geoseg.vector.refine import simplify_shared_edges

    rng = np.random.default_rng(1)
    small = rng.integers(0, 3, (8, 8)).astype(np.uint8)
    data = np.kron(small, np.ones((9, 9), np.uint8))
    data[rng.random(data.shape) < 0.02] = 3
    polys = polygonize(str(_write_mask(tmp_path / "m.tif", data)), chunk=20)
    simplified = simplify_shared_edges(polys, tolerance=5.0)
    vertices = shapely.get_num_coordinates(simplified.geometries).sum()
    assert vertices < shapely.get_num_coordinates(polys.geometries).sum()
    assert shapely.coverage_is_valid(simplified.geometries)  # no gaps or overlaps appeared
    total = shapely.area(simplified.geometries).sum()
    assert total == pytest.approx(data.size * 4, rel=1e-9)


def test_min_area_and_hole_filling_keep_a_partition(tmp_path) -> None:
    """Hand-made: a 4-pixel hole, a 1-pixel speck and a 3-pixel island inside a 12-pixel hole."""
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    data = np.zeros((30, 30), np.uint8)
    data[5:25, 5:25] = 1
    data[10:12, 10:12] = 0  # a 4-pixel hole (16 m2 at 2 m pixels)
    data[0, 29] = 2  # a 1-pixel speck on the class-0 background
    data[16:20, 16:20] = 3  # a 16-pixel hole (64 m2) ...
    data[17:19, 17:19] = 2  # ... holding a 4-pixel island
    mask = _write_mask(tmp_path / "m.tif", data)

    def run(**options):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.gpkg"
        vectorize_raster(mask, [out], VectorizeOptions(**options), workers=1)
        frame = gpd.read_file(out)
        assert shapely.coverage_is_valid(frame.geometry.values)  # no overlaps
        assert frame.area.sum() == pytest.approx(data.size * 4)  # no gaps: still every pixel, once
        return frame

    sieved = run(min_area_m2=20)  # 5 pixels: the speck, the hole and the island merge into their neighbours
    assert sorted(sieved.class_id) == [0, 1, 3] and sieved.area.min() >= 20
    assert sieved[sieved.class_id == 1].area.iloc[0] == (400 - 16) * 4  # the 4-pixel hole is now class 1
    assert sieved[sieved.class_id == 3].area.iloc[0] == 16 * 4  # the island merged into what surrounds it
    filled = run(fill_holes_m2=70)  # both holes filled, the island absorbed (it overlapped the filled polygon before)
    square = filled[filled.class_id == 1].geometry.iloc[0]
    assert len(square.interiors) == 0 and square.area == 20 * 20 * 4
    assert sorted(filled.class_id) == [0, 1, 2]  # the background and the speck are untouched
    both = run(min_area_m2=20, fill_holes_m2=70)
    assert sorted(both.class_id) == [0, 1]


def test_the_minimum_mapping_unit_is_gdal_sieve(tmp_path) -> None:
    """The sieved polygons are exactly GDAL's: rasterio.features.sieve of the whole array, polygonized."""
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    rng = np.random.default_rng(5)
    data = rng.integers(0, 4, (60, 70)).astype(np.uint8)
    data[rng.random(data.shape) < 0.5] = 1
    data[:3, :3] = 255
    mask = _write_mask(tmp_path / "m.tif", data)
    with rasterio.open(mask, "r+") as dst:
        dst.nodata = 255
    vectorize_raster(mask, [tmp_path / "v.gpkg"], VectorizeOptions(min_area_m2=24, chunk=16), workers=1)
    ours = gpd.read_file(tmp_path / "v.gpkg")
    expected = features.sieve(data, 6, mask=data != 255, connectivity=4)
    theirs = [
        (shape(g), v)
        for g, v in features.shapes(expected, mask=expected != 255, transform=rasterio.Affine(2, 0, 0, 0, -2, 0))
    ]
    assert len(ours) == len(theirs) and ours.area.min() >= 24
    assert sorted(zip(ours.class_id, np.round(ours.area, 6), strict=True)) == sorted(
        (int(v), round(g.area, 6)) for g, v in theirs
    )


def test_confidence_attribute_from_a_probability_raster(tmp_path) -> None:
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    data = np.zeros((20, 20), np.uint8)
    data[:, 10:] = 1
    mask = _write_mask(tmp_path / "scene.tif", data)
    probs = np.zeros((3, 20, 20), np.uint8)
    probs[2, :, :10], probs[2, :, 10:] = 254, 127
    with rasterio.open(
        tmp_path / "scene_probabilities.tif",
        "w",
        driver="GTiff",
        width=20,
        height=20,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=rasterio.Affine(2, 0, 0, 0, -2, 0),
    ) as dst:
        dst.write(probs)
        dst.descriptions = ("a", "b", "confidence")
    vectorize_raster(mask, [tmp_path / "out.gpkg"], VectorizeOptions(chunk=7), workers=1)
    frame = gpd.read_file(tmp_path / "out.gpkg").sort_values("class_id")
    assert frame["confidence"].tolist() == [1.0, 0.5]


@pytest.mark.realdata
def test_streamed_outputs_hold_exactly_the_whole_raster_polygons(real_data, tmp_path) -> None:
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    mask = real_data / "nc_landsat" / "strata.tif"
    whole, data, valid, transform = _whole(mask)
    outputs = [tmp_path / "s.gpkg", tmp_path / "s.shp", tmp_path / "s.fgb"]
    count = vectorize_raster(mask, outputs, VectorizeOptions(chunk=37), workers=1)
    assert count == len(whole)
    for out in outputs:
        frame = gpd.read_file(out)
        assert Counter(frame["class_id"].astype(int)) == Counter(v for _, v in whole)
        burned = features.rasterize(
            zip(frame.geometry, frame["class_id"].astype(int), strict=True),
            out_shape=data.shape,
            transform=transform,
            fill=-1,
            dtype="int32",
        )
        np.testing.assert_array_equal(burned[valid], data[valid])
    assert not list(tmp_path.glob(".*partial"))


def test_a_raster_without_polygons_gives_an_empty_layer(make_geotiff, tmp_path) -> None:
    from geoseg.vector.job import VectorizeOptions, vectorize_raster

    mask = make_geotiff(np.full((20, 30), 255, np.uint8), nodata=255)
    assert vectorize_raster(mask, [tmp_path / "e.gpkg"], VectorizeOptions(chunk=8), workers=1) == 0
    frame = gpd.read_file(tmp_path / "e.gpkg")
    assert len(frame) == 0 and {"class_id", "area_m2"} <= set(frame.columns)


def test_large_uint32_ids_are_carried_exactly_and_ids_beyond_int32_refused(make_geotiff) -> None:
    """uint32 ids up to 2**31 - 1 come out as they went in (they wrapped to negative values before); larger ones
    cannot be a GeoPackage/Shapefile integer field and are refused with the id, not changed."""
    data = np.array([[70_000, 70_000, 2**31 - 1], [5, 5, 2**31 - 1]], dtype=np.uint32)
    polys = polygonize(str(make_geotiff(data, name="big.tif")), chunk=2)
    assert sorted(polys.class_ids.tolist()) == [5, 70_000, 2**31 - 1]
    data[0, 0] = 3_000_000_000
    with pytest.raises(GeoSegError, match="class id 3000000000 does not fit"):
        polygonize(str(make_geotiff(data, name="bigger.tif")), chunk=2)


@pytest.mark.realdata
def test_the_issues_land_cover_command_keeps_a_partition(real_data, tmp_path) -> None:
    """`vectorize strata.tif --simplify 30 --min-area 10000 --fill-holes 50000` on the real NC land-cover raster
    (float32 class ids, as GRASS exports them): it left 1 161 holes and overlapping polygons; now a partition of
    exactly the valid pixels, with no region below the unit that had a neighbour to merge into."""
    from geoseg.vector.job import VectorizeOptions, vectorize_raster
    from geoseg.vector.refine import absorb_holes

    strata = real_data / "nc_landsat" / "strata.tif"
    plain = polygonize(str(strata))
    valid_m2 = float(shapely.area(plain.geometries).sum())  # every valid pixel, once
    with rasterio.open(strata) as src:
        nodata_m2 = src.width * src.height * abs(src.transform.a * src.transform.e) - valid_m2
    # Filling holes may absorb enclosed nodata, never lose area. (A filled polygon whose own point fell in its
    # former hole used to remove itself: 0.43 km2 lost here.)
    filled_m2 = float(shapely.area(absorb_holes(plain, 50_000).geometries).sum())
    assert valid_m2 <= filled_m2 <= valid_m2 + nodata_m2
    for simplify in (0, 30):
        out = tmp_path / f"s{simplify}.gpkg"
        options = VectorizeOptions(simplify=simplify, min_area_m2=10_000, fill_holes_m2=50_000)
        vectorize_raster(strata, [out], options, workers=1)
        frame = gpd.read_file(out, layer=out.stem)
        # No overlaps, simplified or not (noded at pixel corners: shapely wants shared edges to share vertices).
        assert shapely.coverage_is_valid(shapely.segmentize(frame.geometry.values, 28.5))
        if not simplify:  # no gaps: every valid pixel once (simplifying moves the outer boundary too)
            assert valid_m2 <= frame.area.sum() <= valid_m2 + nodata_m2
            assert (frame.area >= 10_000).mean() > 0.99  # the unit holds (GDAL leaves unmergeable specks)


def test_a_vector_files_style_is_never_a_rasters(tmp_path) -> None:
    """Removing an earlier run's ``<scene>.shp`` (it stood beside ``<scene>.tif``) must not take the raster's
    ``<scene>.qml`` with it; polygons of their own stem own their ``.qml``; a GeoPackage's style is inside."""
    from geoseg.vector.formats import vector_files, vector_style

    (tmp_path / "s.tif").write_bytes(b"")
    assert tmp_path / "s.qml" not in vector_files(tmp_path / "s.shp") and vector_style(tmp_path / "s.shp") is None
    assert vector_files(tmp_path / "s_polygons.fgb") == [tmp_path / "s_polygons.fgb", tmp_path / "s_polygons.qml"]
    assert vector_files(tmp_path / "s.gpkg") == [tmp_path / "s.gpkg"]
    assert tmp_path / "v.qml" in vector_files(tmp_path / "v.shp")  # no raster of that stem: the style is its own
