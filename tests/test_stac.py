"""STAC inputs: Sentinel-2 L2A-shaped items (10 and 20 m band assets, scale/offset/nodata in raster:bands),
bands chosen by name, catalogues walked, filters, and items that fail alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from bad_inputs import write_geotiff
from click.testing import CliRunner

from geoseg.bundle import BandSpec, init_bundle
from geoseg.errors import GeoSegError
from geoseg.io.stac import StacFilter, build_item_vrt, item_bands, read_items

ORIGIN_X, ORIGIN_Y = 600_000.0, 5_000_040.0
BANDS_10M = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
BANDS_20M = {"B11": "swir16"}


def s2_item(
    folder: Path,
    item_id: str,
    *,
    size: int = 64,
    seed: int = 0,
    style: str = "pc",
    cloud: float = 10.0,
    day: int = 5,
    drop: str | None = None,
) -> pystac.Item:
    """A Sentinel-2 L2A-shaped item: 10 m assets of ``size`` px, a 20 m asset of half that, DN with 0 = nodata,
    reflectance = DN x 0.0001 - 0.1. ``style``: ``pc`` (asset keys B04...) or ``earth-search`` (keys red...)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    for resolution, bands in ((10, BANDS_10M), (20, BANDS_20M)):
        n = size * 10 // resolution
        for band, common in bands.items():
            if band == drop:
                continue
            dn = rng.integers(1000, 4000, (1, n, n)).astype(np.uint16)
            dn[:, :2, :3] = 0  # a nodata corner
            path = folder / f"{item_id}_{band}.tif"
            write_geotiff(
                path,
                dn,
                crs="EPSG:32633",
                transform=Affine(resolution, 0, ORIGIN_X, 0, -resolution, ORIGIN_Y),
                nodata=None,
            )
            key = band if style == "pc" else common
            asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"])
            asset.extra_fields["eo:bands"] = [{"name": band, "common_name": common}]
            asset.extra_fields["raster:bands"] = [
                {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1, "spatial_resolution": resolution}
            ]
            assets[key] = asset
    assets["thumbnail"] = pystac.Asset(href=str(folder / "thumb.png"), roles=["thumbnail"])
    item = pystac.Item(
        id=item_id,
        geometry={
            "type": "Polygon",
            "coordinates": [[[15.0, 45.1], [15.01, 45.1], [15.01, 45.11], [15.0, 45.11], [15.0, 45.1]]],
        },
        bbox=[15.0, 45.1, 15.01, 45.11],
        datetime=datetime(2024, 6, day, 10, 0, tzinfo=UTC),
        properties={"eo:cloud_cover": cloud},
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_an_item_is_read_with_scale_offset_nodata_and_its_20m_band_on_the_10m_grid(tmp_path) -> None:
    item = s2_item(tmp_path, "S2A_T33TWL_20240605", size=40)
    bands = item_bands(item, ["B04", "B11"])
    vrt = build_item_vrt(bands, tmp_path / "scene.vrt")
    with (
        rasterio.open(vrt) as scene,
        rasterio.open(tmp_path / "S2A_T33TWL_20240605_B04.tif") as b04,
        rasterio.open(tmp_path / "S2A_T33TWL_20240605_B11.tif") as b11,
    ):
        assert (scene.width, scene.height, scene.count) == (40, 40, 2) and scene.transform.a == 10
        red, swir = scene.read(1), scene.read(2)
        dn_red, dn_swir = b04.read(1).astype(np.float64), b11.read(1).astype(np.float64)
        valid = dn_red > 0
        np.testing.assert_allclose(red[valid], dn_red[valid] * 0.0001 - 0.1, rtol=1e-6)
        assert np.isnan(red[~valid]).all() and (scene.read_masks(1)[~valid] == 0).all()  # DN 0 is nodata
        expected = np.kron(dn_swir, np.ones((2, 2))) * 0.0001 - 0.1  # each 20 m pixel: 2 x 2 10 m pixels
        known = np.kron(dn_swir > 0, np.ones((2, 2), bool))
        np.testing.assert_allclose(swir[known], expected[known], rtol=1e-6)


@pytest.mark.parametrize("style", ["pc", "earth-search"])
def test_bands_are_found_by_key_band_name_or_common_name(tmp_path, style) -> None:
    item = s2_item(tmp_path, "x", style=style)
    assert [b.href.rsplit("_", 1)[-1] for b in item_bands(item, ["B08", "red", "b02"])] == [
        "B08.tif",
        "B04.tif",
        "B02.tif",
    ]
    with pytest.raises(GeoSegError, match=r"item 'x' has no asset for band B09 \(nor 1 more\); its data assets: "):
        item_bands(item, ["B09", "B04", "coastal"])


def test_the_filter_keeps_dates_places_clouds_and_ids(tmp_path) -> None:
    item = s2_item(tmp_path, "a", cloud=30, day=10)
    assert StacFilter.parse(["datetime=2024-06-10/2024-06-10"]).accepts(item)
    assert not StacFilter.parse(["datetime=2024-06-11/.."]).accepts(item)
    assert StacFilter.parse(["datetime=../2024-06-10", "max-cloud=30", "ids=a,b"]).accepts(item)
    assert not StacFilter.parse(["max-cloud=29.9"]).accepts(item)
    assert StacFilter.parse(["bbox=14.9,45.0,15.005,45.2"]).accepts(item)
    assert not StacFilter.parse(["bbox=16,45,17,46"]).accepts(item)
    assert not StacFilter.parse(["ids=b"]).accepts(item)
    with pytest.raises(GeoSegError, match=r"--stac-filter 'cloud=3': known keys"):
        StacFilter.parse(["cloud=3"])
    with pytest.raises(GeoSegError, match=r"--stac-filter 'bbox=1,2,3': expected west,south,east,north"):
        StacFilter.parse(["bbox=1,2,3"])


def test_filters_refuse_what_filters_nothing_and_see_across_the_antimeridian(tmp_path) -> None:
    """max-cloud=nan or -5 filtered nothing, a reversed range said "no input scenes found", and an item whose
    bbox crosses 180 degrees was dropped by a box inside it (issue 23)."""
    for term, cause in (
        ("max-cloud=nan", "a cloud cover in percent"),
        ("max-cloud=-5", "a cloud cover in percent"),
        ("datetime=2024-06-30/2024-06-01", "the range ends before it starts"),
    ):
        with pytest.raises(GeoSegError, match=rf"--stac-filter '{term}': {cause}"):
            StacFilter.parse([term])
    item = s2_item(tmp_path, "across")
    item.bbox = [179.5, -10.0, -179.5, 10.0]  # west > east: it crosses 180
    assert StacFilter.parse(["bbox=179.6,-1,179.9,1"]).accepts(item)
    assert StacFilter.parse(["bbox=-179.9,-1,-179.6,1"]).accepts(item)
    assert not StacFilter.parse(["bbox=170,-1,179,1"]).accepts(item)
    assert StacFilter.parse(["bbox=178,-1,-178,1"]).accepts(item)  # both across
    plain = s2_item(tmp_path, "plain")  # 15 E
    assert not StacFilter.parse(["bbox=178,-1,-178,1"]).accepts(plain)


def test_items_fail_alone_for_their_own_fields(tmp_path) -> None:
    """A null raster:bands scale ended the whole job (exit 2); file:// hrefs were not found; an ItemCollection
    with one item of null datetime was refused whole without naming it; a catalogue cycle said "maximum
    recursion depth"."""
    import json

    item = s2_item(tmp_path / "a", "nullscale")
    item.assets["B04"].extra_fields["raster:bands"][0]["scale"] = None
    with pytest.raises(GeoSegError, match=r"STAC item 'nullscale': asset 'B04' raster:bands scale is None, not a"):
        item_bands(item, ["B04"])
    uri = s2_item(tmp_path / "b", "uri")
    local = uri.assets["B04"].href
    uri.assets["B04"].href = Path(local).as_uri()
    assert item_bands(uri, ["B04"])[0].href == local
    good, bad = s2_item(tmp_path / "c", "good").to_dict(), s2_item(tmp_path / "c", "undated").to_dict()
    bad["properties"]["datetime"] = None
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [good, bad]}))
    found = read_items(str(collection))
    assert isinstance(found[0], pystac.Item) and found[0].id == "good"
    assert found[1].id == "undated" and "STAC item 'undated'" in found[1].error and "datetime" in found[1].error
    root = pystac.Catalog(id="loop", description="a cycle")
    root.normalize_hrefs(str(tmp_path / "loop"))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    document = json.loads((tmp_path / "loop" / "catalog.json").read_text())
    document["links"].append({"rel": "child", "href": "./catalog.json", "type": "application/json"})
    (tmp_path / "loop" / "catalog.json").write_text(json.dumps(document))
    with pytest.raises(GeoSegError, match="links back to itself"):
        read_items(str(tmp_path / "loop" / "catalog.json"))


def test_two_items_of_one_id_are_two_scenes(tmp_path) -> None:
    """A collection merged from two holding one id twice ran one item and dropped the other at exit 0."""
    import json

    from geoseg.inference.outputs import scene_names
    from geoseg.io.sources import stac_scenes

    first, second = s2_item(tmp_path / "x", "same", seed=1), s2_item(tmp_path / "y", "same", seed=2)
    collection = tmp_path / "merged.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [first.to_dict(), second.to_dict()]}))
    sources = stac_scenes(str(collection), ["B04"], None)
    assert len(sources) == 2 and sources[0].bands != sources[1].bands
    names = scene_names(sources)
    assert len(set(names)) == 2 and all(n.startswith("same") for n in names)


def catalog(folder: Path) -> Path:
    """A static self-contained catalogue: a collection holding three items, one cloudy, one without B08."""
    root = pystac.Catalog(id="archive", description="test archive")
    collection = pystac.Collection(
        id="s2-l2a",
        description="Sentinel-2 L2A",
        extent=pystac.Extent(pystac.SpatialExtent([[15.0, 45.1, 15.01, 45.11]]), pystac.TemporalExtent([[None, None]])),
    )
    root.add_child(collection)
    data = folder / "data"
    collection.add_item(s2_item(data, "clear", seed=1, cloud=5))
    collection.add_item(s2_item(data, "cloudy", seed=2, cloud=80))
    collection.add_item(s2_item(data, "no-nir", seed=3, drop="B08"))
    root.normalize_hrefs(str(folder / "catalog"))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog" / "catalog.json"


@pytest.fixture
def s2_bundle(tmp_path) -> Path:
    bands = [BandSpec(name=n, index=i, mean=0.1, std=0.1) for i, n in enumerate(["B02", "B03", "B04", "B08", "B11"], 1)]
    return init_bundle(tmp_path / "bundle", "unet", 5, 3, bands=bands, base_channels=4, depth=2)


def test_predict_runs_a_catalogue_by_item_with_its_filter_and_an_item_failing_alone(tmp_path, s2_bundle) -> None:
    from geoseg import cli

    root = catalog(tmp_path)
    assert sorted(i.id for i in read_items(str(root))) == ["clear", "cloudy", "no-nir"]
    result = CliRunner().invoke(
        cli.cli,
        [
            "predict",
            "--model",
            str(s2_bundle),
            "--input",
            str(root),
            "--output",
            str(tmp_path / "out"),
            "--stac-filter",
            "max-cloud=50",
            "--in-process",
            "--stac-items",
        ],
    )
    assert result.exit_code == 1, result.output  # one scene failed
    assert "item 'no-nir' has no asset for band B08" in result.output
    assert (tmp_path / "out" / "clear.tif").exists() and not (tmp_path / "out" / "cloudy.tif").exists()
    with rasterio.open(tmp_path / "out" / "clear.tif") as out:
        assert (out.width, out.height) == (64, 64) and out.crs.to_epsg() == 32633
        assert out.read_masks(1)[0, 0] == 0 and out.read_masks(1)[10, 10] == 255  # the nodata corner stays nodata
    # The results as a catalogue of their own: one item for the finished scene, its class list, its raster.
    results = pystac.Catalog.from_file(str(tmp_path / "out" / "stac" / "catalog.json"))
    (result,) = list(results.get_items(recursive=True))
    assert result.id == "clear" and result.datetime == datetime(2024, 6, 5, 10, 0, tzinfo=UTC)
    classes = result.assets["classes"].extra_fields["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "class_0"), (1, "class_1"), (2, "class_2")]
    assert Path(result.assets["classes"].get_absolute_href()).resolve() == (tmp_path / "out" / "clear.tif").resolve()
    from rasterio.warp import transform_bounds

    with rasterio.open(tmp_path / "out" / "clear.tif") as out:
        expected = transform_bounds(out.crs, "EPSG:4326", *out.bounds, densify_pts=21)
    assert result.bbox == pytest.approx(list(expected)) and result.properties["proj:code"] == "EPSG:32633"


def test_a_job_never_writes_over_what_it_reads(tmp_path) -> None:
    """Chaining jobs on a results catalogue: reading `out/stac/catalog.json` while writing `out/stac/` is refused
    before anything runs; so is an input inside the bucket prefix the job publishes to."""
    from geoseg.inference.job import guard_remote_inputs, guard_stac_folder
    from geoseg.io.objectstore import S3Url
    from geoseg.io.sources import SceneSource

    catalogue = tmp_path / "out" / "stac" / "catalog.json"
    catalogue.parent.mkdir(parents=True)
    catalogue.write_text("{}")
    source = SceneSource(f"{catalogue}#clear", (str(tmp_path / "data" / "clear_B02.tif"),), name="clear")
    with pytest.raises(GeoSegError, match="is an input inside the job's STAC folder"):
        guard_stac_folder(tmp_path / "out" / "stac", [(source, "clear")])
    guard_stac_folder(tmp_path / "other" / "stac", [(source, "clear")])  # elsewhere: fine
    inside = SceneSource("s3://results/job/a.tif", ("/vsis3/results/job/a.tif",))
    with pytest.raises(GeoSegError, match="is an input inside the output prefix s3://results/job/"):
        guard_remote_inputs(S3Url.parse("s3://results/job/"), [(inside, "a")])
    deeper = SceneSource("s3://results/job/in/a.tif", ("/vsis3/results/job/in/a.tif",))
    guard_remote_inputs(S3Url.parse("s3://results/job/"), [(deeper, "a")])  # a sub-folder is not written
    results = SceneSource("s3://results/job/stac/catalog.json#a", ("/vsis3/archive/a_B02.tif",), name="a")
    guard_remote_inputs(S3Url.parse("s3://results/job/"), [(results, "a")])  # ... unless --stac-items writes it
    with pytest.raises(GeoSegError, match=r"s3://results/job/stac/catalog\.json: is an input inside the output"):
        guard_remote_inputs(S3Url.parse("s3://results/job/"), [(results, "a")], stac_items=True)


def test_an_edited_item_reruns_its_scene_and_only_it(tmp_path, s2_bundle) -> None:
    """A rerun skipped a scene whose item had been edited (a corrected ``raster:bands`` offset): 84 % of its
    pixels differed from a fresh run. The identity now holds what the item told the reader (issue 23, rule 2)."""
    import json

    from geoseg import cli

    root = catalog(tmp_path)
    args = ["predict", "--model", str(s2_bundle), "--input", str(root), "--output", str(tmp_path / "out")]
    args += ["--stac-filter", "max-cloud=50", "--in-process"]
    first = CliRunner().invoke(cli.cli, args)
    assert first.exit_code == 1 and "ok" in first.output  # 'no-nir' fails alone, as above
    again = CliRunner().invoke(cli.cli, args)
    assert "0 ok, 1 failed, 1 skipped" in again.output, again.output
    item_file = next((tmp_path / "catalog").rglob("clear.json"))
    doc = json.loads(item_file.read_text())
    doc["assets"]["B04"]["raster:bands"][0]["offset"] = -0.2  # a corrected offset: the reflectance changes
    item_file.write_text(json.dumps(doc))
    edited = CliRunner().invoke(cli.cli, args)
    assert "1 ok, 1 failed, 0 skipped" in edited.output, edited.output
