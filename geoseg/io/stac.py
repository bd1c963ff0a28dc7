"""STAC catalogues as scenes: one scene per Item, its bands chosen by name, read onto the finest band's grid.

Archives (Sentinel-2, Landsat, commercial) publish **STAC** Items whose assets are per-band COGs. An input that
is a STAC JSON file (an Item, an ItemCollection, or a static Catalog/Collection walked recursively; local, or
``s3://`` through :mod:`geoseg.io.objectstore`) becomes one scene per Item that passes the filter
(:class:`StacFilter`: a date range, a lon/lat box, a maximum ``eo:cloud_cover``, item ids).

**Bands by name.** The model bundle lists its bands by name (``B04``, ``red``, ...). For each, an Item asset is
found whose key, ``eo:bands`` name or common name, or STAC 1.1 ``bands`` name matches (case-insensitive), so the
same bundle reads Earth Search items (keys ``red``, ``nir``) and Planetary Computer items (keys ``B04``,
``B08``). An Item that lacks a band fails as its own scene, naming the band and the assets it has.

**Values as the archive defines them.** Each band's ``raster:bands`` scale, offset and nodata are applied
(Sentinel-2 L2A since baseline 04.00: reflectance = DN x 0.0001 - 0.1, DN 0 = nodata), so a model sees
physical values whatever the processing baseline: train it on the same values. Bands of other resolutions
(10/20/60 m) are read onto the grid of the finest one by nearest neighbour (a 20 m pixel becomes 2 x 2 10 m
pixels, values unchanged), through a VRT: nothing is copied or resampled ahead of the read.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pystac
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError

from geoseg import __version__
from geoseg.errors import GeoSegError
from geoseg.io.paths import gdal_path
from geoseg.io.stack import vrt_source, write_vrt

STAC_SUFFIXES = {".json"}
_TYPES = {"Feature", "FeatureCollection", "Catalog", "Collection"}


@dataclass(frozen=True)
class BandAsset:
    """One band of a STAC scene: where GDAL reads it and how its values become physical ones."""

    name: str  # the band name the model asked for
    href: str  # as GDAL opens it (s3:// -> /vsis3/, http(s) -> /vsicurl/)
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None


@dataclass(frozen=True)
class StacFilter:
    """Which Items of a catalogue become scenes (every condition must hold; unset ones always do)."""

    start: datetime | None = None
    end: datetime | None = None
    bbox: tuple[float, float, float, float] | None = None  # lon/lat: west, south, east, north
    max_cloud: float | None = None
    ids: frozenset[str] | None = None

    @classmethod
    def parse(cls, terms: Iterable[str]) -> StacFilter:
        """``datetime=2024-01-01/2024-06-30`` (``..`` for an open end), ``bbox=W,S,E,N``, ``max-cloud=20``,
        ``ids=a,b``; one-line errors naming the term."""
        fields: dict[str, Any] = {}
        for term in terms:
            key, sep, value = term.partition("=")
            key = key.strip().lower().replace("_", "-")
            try:
                if not sep:
                    raise ValueError("expected KEY=VALUE")
                if key == "datetime":
                    start, _, end = value.partition("/")
                    fields["start"] = _instant(start) if start not in ("", "..") else None
                    fields["end"] = _instant(end, end_of_day=True) if end not in ("", "..") else None
                    if fields["start"] and fields["end"] and fields["start"] > fields["end"]:
                        raise ValueError("the range ends before it starts (START/END)")
                elif key == "bbox":
                    numbers = tuple(float(v) for v in value.split(","))
                    # west > east is a box across the antimeridian (170,-10,-170,10), as STAC writes one
                    if len(numbers) != 4 or numbers[1] > numbers[3] or not all(math.isfinite(v) for v in numbers):
                        raise ValueError("expected west,south,east,north in degrees")
                    fields["bbox"] = numbers
                elif key == "max-cloud":
                    cloud = float(value)
                    if not 0 <= cloud <= 100:  # NaN too: it compared false with every item and filtered nothing
                        raise ValueError("a cloud cover in percent, 0 to 100")
                    fields["max_cloud"] = cloud
                elif key == "ids":
                    fields["ids"] = frozenset(v.strip() for v in value.split(",") if v.strip())
                else:
                    raise ValueError("known keys: datetime, bbox, max-cloud, ids")
            except ValueError as exc:
                raise GeoSegError(f"--stac-filter {term!r}: {exc}") from None
        return cls(**fields)

    def accepts(self, item: pystac.Item) -> bool:
        if self.ids is not None and item.id not in self.ids:
            return False
        if self.start is not None or self.end is not None:
            start = item.common_metadata.start_datetime or item.datetime
            end = item.common_metadata.end_datetime or item.datetime
            if start is None or end is None:
                return False
            if self.start is not None and _aware(end) < self.start:
                return False
            if self.end is not None and _aware(start) > self.end:
                return False
        if self.bbox is not None:
            if item.bbox is None:
                return False
            w, s, e, n = item.bbox[0], item.bbox[1], item.bbox[-2], item.bbox[-1]
            if s > self.bbox[3] or n < self.bbox[1]:
                return False
            if not _longitudes_meet((w, e), (self.bbox[0], self.bbox[2])):
                return False
        if self.max_cloud is not None:
            cloud = item.properties.get("eo:cloud_cover")
            if cloud is None or float(cloud) > self.max_cloud:
                return False
        return True


def _longitudes_meet(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two west-east spans meet, either of which may cross the antimeridian (west > east): each is
    split at 180 degrees, so an item from 170 E to 170 W is kept by a filter box inside it."""

    def parts(west: float, east: float) -> list[tuple[float, float]]:
        return [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]

    return any(w1 <= e2 and w2 <= e1 for w1, e1 in parts(*a) for w2, e2 in parts(*b))


def _instant(text: str, end_of_day: bool = False) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if end_of_day and len(text.strip()) == 10:  # a date: the whole day
        value = value.replace(hour=23, minute=59, second=59, microsecond=999999)
    return _aware(value)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_stac(text: str) -> bool:
    """Whether an input names a STAC document (a ``.json`` file; a local one must say it is STAC)."""
    if Path(text.split("?", 1)[0]).suffix.lower() not in STAC_SUFFIXES:
        return False
    if text.startswith(("s3://", "/vsis3/", "http://", "https://")):
        return True
    try:
        with open(text, "rb") as f:
            head = f.read(4096)
    except OSError:
        return True  # missing: reading it gives the one-line error
    return b"stac_version" in head or b'"type"' in head


@dataclass(frozen=True)
class BadItem:
    """A feature of an ItemCollection that is no valid STAC Item: its scene fails alone, naming it."""

    id: str
    error: str


def read_items(href: str, stac_io: pystac.StacIO | None = None) -> list[pystac.Item | BadItem]:
    """Every Item ``href`` holds: itself, an ItemCollection's features, or a Catalog/Collection's items at any
    depth. One-line errors for what is not readable STAC; an ItemCollection's invalid feature (a null
    datetime without a start and end, say) is a :class:`BadItem`, so it fails alone instead of the collection."""
    try:
        obj: Any = pystac.read_file(href, stac_io=stac_io)
    except pystac.STACTypeError:  # an ItemCollection is no STACObject
        return _collection_items(href, stac_io)
    except GeoSegError:
        raise
    except Exception as exc:
        raise GeoSegError(f"cannot read the STAC document: {_cause(exc)}", href) from exc
    if isinstance(obj, pystac.Item):
        return [obj]
    if isinstance(obj, pystac.Catalog):
        try:
            return list(obj.get_items(recursive=True))
        except RecursionError:
            raise GeoSegError("the catalogue links back to itself (a cycle of child links)", href) from None
        except Exception as exc:
            raise GeoSegError(f"cannot walk the STAC catalogue: {_cause(exc)}", href) from exc
    raise GeoSegError(f"a STAC {type(obj).__name__} holds no items", href)


def _collection_items(href: str, stac_io: pystac.StacIO | None) -> list[pystac.Item | BadItem]:
    io = stac_io or pystac.StacIO.default()
    try:
        document = io.read_json(href)
    except Exception as exc:
        raise GeoSegError(f"cannot read the STAC document: {_cause(exc)}", href) from exc
    features = document.get("features") if isinstance(document, dict) else None
    if document.get("type") != "FeatureCollection" or not isinstance(features, list):
        raise GeoSegError("not a STAC Item, ItemCollection or Catalog", href)
    items: list[pystac.Item | BadItem] = []
    for number, feature in enumerate(features):
        name = str(feature.get("id")) if isinstance(feature, dict) and feature.get("id") else f"feature {number}"
        try:
            item = pystac.Item.from_dict(feature, href=href, preserve_dict=False)
            if item.datetime is None and (
                item.common_metadata.start_datetime is None or item.common_metadata.end_datetime is None
            ):
                raise ValueError("datetime is null and start_datetime/end_datetime are not both given")
            items.append(item)
        except Exception as exc:
            items.append(BadItem(name, f"STAC item {name!r} in {href} is not valid STAC: {_cause(exc)}"))
    return items


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _asset_names(key: str, asset: pystac.Asset) -> tuple[set[str], dict[str, Any]]:
    """Names an asset answers to, and its (first) raster:bands / bands entry."""
    names = {key.casefold()}
    for band in asset.extra_fields.get("eo:bands") or []:
        for field in ("name", "common_name"):
            if isinstance(band.get(field), str):
                names.add(band[field].casefold())
    bands = asset.extra_fields.get("bands") or []  # STAC 1.1: eo/raster fields inside "bands"
    for band in bands:
        for field in ("name", "eo:common_name"):
            if isinstance(band.get(field), str):
                names.add(band[field].casefold())
    raster = (asset.extra_fields.get("raster:bands") or [{}])[0]
    if bands:
        raster = {k.removeprefix("raster:"): v for k, v in bands[0].items()} | raster
    nodata = raster.get("nodata", asset.extra_fields.get("nodata"))
    return names, {"scale": raster.get("scale", 1.0), "offset": raster.get("offset", 0.0), "nodata": nodata}


def item_bands(item: pystac.Item, names: Sequence[str]) -> list[BandAsset]:
    """The asset of every band in ``names`` (in that order); a missing band is one line naming what exists."""
    found: dict[str, BandAsset] = {}
    keys = []
    for key, asset in item.assets.items():
        if asset.roles and not {"data", "reflectance"} & set(asset.roles):
            continue  # thumbnails, metadata, overviews
        keys.append(key)
        answers, values = _asset_names(key, asset)
        href = _gdal_href(asset.get_absolute_href() or asset.href)
        nodata = values["nodata"]
        for name in names:
            if name.casefold() in answers and name not in found:
                found[name] = BandAsset(
                    name,
                    href,
                    _number(values["scale"], item, key, "scale"),
                    _number(values["offset"], item, key, "offset"),
                    None if nodata is None or (isinstance(nodata, str) and nodata != "nan") else float(nodata),
                )
    missing = [n for n in names if n not in found]
    if missing:
        raise GeoSegError(
            f"STAC item {item.id!r} has no asset for band {missing[0]}"
            f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}; its data assets: "
            f"{', '.join(keys) or 'none'}"
        )
    return [found[n] for n in names]


def item_assets(item: pystac.Item) -> tuple[tuple[str, str], ...]:
    """Every asset of an item as (key, GDAL path): a mask (``SCL``, ``qa_pixel``) is found among them."""
    return tuple((key, _gdal_href(asset.get_absolute_href() or asset.href)) for key, asset in item.assets.items())


def _number(value: Any, item: pystac.Item, key: str, field: str) -> float:
    """A ``raster:bands`` scale or offset: a finite number (``null`` ended the whole job with exit 2)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GeoSegError(f"STAC item {item.id!r}: asset {key!r} raster:bands {field} is {value!r}, not a number")
    return float(value)


def _gdal_href(href: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):  # file:///data/x.tif (RFC 8089): GDAL wants the path
        return unquote(urlparse(href).path)
    return gdal_path(href)


def build_item_vrt(bands: Sequence[BandAsset], out: Path) -> Path:
    """A VRT of ``bands`` on the finest band's grid, scale/offset applied, nodata kept as NaN (see module)."""
    opened = []
    for band in bands:
        try:
            with rasterio.open(band.href) as src:
                if src.count != 1:
                    raise GeoSegError(f"band {band.name} has {src.count} bands; one asset per band is read", band.href)
                opened.append((band, src.crs, src.transform, src.width, src.height, src.dtypes[0], src.nodata))
        except RasterioIOError as exc:
            raise GeoSegError(f"band {band.name} cannot be read ({_cause(exc)})", band.href) from exc
    reference = min(opened, key=lambda o: abs(o[2].a))
    _, crs, ref_t, *_ = reference
    west = min(o[2].c for o in opened)
    north = max(o[2].f for o in opened)
    east = max(o[2].c + o[3] * o[2].a for o in opened)
    south = min(o[2].f + o[4] * o[2].e for o in opened)
    width, height = round((east - west) / ref_t.a), round((north - south) / -ref_t.e)
    parts = []
    for i, (band, band_crs, t, w, h, _dtype, file_nodata) in enumerate(opened, start=1):
        if band_crs != crs:
            raise GeoSegError(f"band {band.name} is in another CRS than band {reference[0].name}", band.href)
        if t.b or t.d:
            raise GeoSegError(f"band {band.name} is rotated; STAC bands must be north-up", band.href)
        x_off, y_off = (t.c - west) / ref_t.a, (north - t.f) / -ref_t.e
        x_size, y_size = w * t.a / ref_t.a, h * t.e / ref_t.e
        if not all(math.isclose(v, round(v), abs_tol=1e-6) for v in (x_off, y_off, x_size, y_size)):
            raise GeoSegError(f"band {band.name} is not aligned with band {reference[0].name}'s pixels", band.href)
        nodata = band.nodata if band.nodata is not None else file_nodata
        parts.append(
            f'<VRTRasterBand dataType="Float32" band="{i}"><NoDataValue>nan</NoDataValue>'
            f"<Description>{html.escape(band.name)}</Description>"
            f'<ComplexSource resampling="nearest">{vrt_source(band.href)}<SourceBand>1</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{round(x_off)}" yOff="{round(y_off)}" xSize="{round(x_size)}" ySize="{round(y_size)}"/>'
            f"{'<NODATA>' + repr(float(nodata)) + '</NODATA>' if nodata is not None else ''}"
            f"<ScaleOffset>{band.offset!r}</ScaleOffset><ScaleRatio>{band.scale!r}</ScaleRatio>"
            "</ComplexSource></VRTRasterBand>"
        )
    return write_vrt(out, width, height, crs, Affine(ref_t.a, 0.0, west, 0.0, ref_t.e, north), parts)


@dataclass(frozen=True)
class ResultScene:
    """A finished scene of a job, as its STAC Item describes it."""

    name: str
    outputs: dict[str, str]  # role ("classes", "probabilities", "vectors") -> path or URL
    acquired: datetime | None  # when the source image was taken (its item's or its metadata's), if known
    processed: datetime  # when the job ran


# Media types of what a job writes, by suffix (IANA where registered, else the community's usual one).
MEDIA_TYPES = {
    ".gpkg": "application/geopackage+sqlite3",
    ".geojson": "application/geo+json",
    ".json": "application/geo+json",
    ".fgb": "application/vnd.flatgeobuf",
    ".parquet": "application/vnd.apache.parquet",
    ".shp": "application/vnd.shp",
    ".qml": "text/xml",
    ".xml": "application/xml",
    ".png": "image/png",
}
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
_UNKNOWN_START = datetime(1, 1, 1, tzinfo=UTC)  # RFC 3339's earliest instant: "no earlier bound known"


def _raster_item(item_id: str, raster: str, when: datetime | None, properties: dict[str, Any]) -> pystac.Item:
    """An Item for a class raster: lon/lat footprint and bbox, projection (code, shape, transform) read from it."""
    from pystac.extensions.projection import ProjectionExtension
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import box, mapping

    with rasterio.open(gdal_path(raster)) as src:
        bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        footprint = transform_geom(src.crs, "EPSG:4326", mapping(box(*src.bounds)))
        epsg, shape, transform = src.crs.to_epsg(), [src.height, src.width], list(src.transform)[:6]
    item = pystac.Item(id=item_id, geometry=footprint, bbox=list(bounds), datetime=when, properties=properties)
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.epsg, projection.shape, projection.transform = epsg, shape, transform
    return item


def _class_list(classes: Sequence[tuple[int, str, tuple[int, int, int]]]) -> list[Any]:
    """The classification extension's list: ``name`` a code of ``[0-9A-Za-z-_]`` (its schema's pattern; a
    name with spaces broke it), the display name in ``title``."""
    from pystac.extensions.classification import Classification

    codes: set[str] = set()
    listed = []
    for i, name, color in classes:
        code = re.sub(r"[^0-9A-Za-z_-]+", "-", name).strip("-") or f"class-{i}"
        code = code if code not in codes else f"{code}-{i}"
        codes.add(code)
        listed.append(
            Classification.create(value=i, name=code, title=name, color_hint="{:02X}{:02X}{:02X}".format(*color))
        )
    return listed


def _exists(href: str) -> bool:
    return href.startswith(("s3://", "/vsi", "http")) or os.path.isfile(href)


def _raster_bands(href: str) -> list[dict[str, Any]]:
    """The raster extension's ``raster:bands`` as the file itself states them: type, nodata, scale, offset."""
    with rasterio.open(gdal_path(href)) as src:
        bands = []
        for i in range(src.count):
            band: dict[str, Any] = {"data_type": src.dtypes[i], "scale": src.scales[i], "offset": src.offsets[i]}
            if src.nodata is not None:
                band["nodata"] = src.nodata
            bands.append(band)
    return bands


def _result_assets(outputs: dict[str, str]) -> dict[str, pystac.Asset]:
    """Every file of a finished scene as an asset: the class COG, its QGIS style, its GDAL categories and
    colours, its quicklook (the thumbnail), the probabilities (their 1/254 scale stated), the polygons and
    their style."""
    classes = outputs["classes"]
    stem = os.path.splitext(classes)[0]
    assets = {"classes": pystac.Asset(classes, "classes", media_type=pystac.MediaType.COG, roles=["data"])}
    sidecars = [
        ("style", f"{stem}.qml", "QGIS style of the class raster", ".qml", "metadata"),
        ("categories", f"{classes}.aux.xml", "GDAL category names and colour table (PAM)", ".xml", "metadata"),
        ("thumbnail", f"{stem}.png", "quicklook of the classes", ".png", "thumbnail"),
    ]
    for key, href, title, suffix, role in sidecars:
        if _exists(href):
            assets[key] = pystac.Asset(href, title, media_type=MEDIA_TYPES[suffix], roles=[role])
    if "probabilities" in outputs:
        probabilities = pystac.Asset(
            outputs["probabilities"],
            "class probabilities (value / 254) and confidence",
            media_type=pystac.MediaType.COG,
            roles=["data"],
        )
        probabilities.extra_fields["raster:bands"] = _raster_bands(outputs["probabilities"])
        assets["probabilities"] = probabilities
    if "vectors" in outputs:
        polygons = outputs["vectors"]
        suffix = os.path.splitext(polygons)[1].lower()
        polygons_type = MEDIA_TYPES.get(suffix)
        assets["polygons"] = pystac.Asset(polygons, "class polygons", media_type=polygons_type, roles=["data"])
        style = os.path.splitext(polygons)[0] + ".qml"
        if suffix != ".gpkg" and _exists(style):  # a GeoPackage holds its style inside
            assets["polygons-style"] = pystac.Asset(
                style, "QGIS style of the polygons", media_type=MEDIA_TYPES[".qml"], roles=["metadata"]
            )
    return assets


def _save_relative(root: pystac.Catalog, folder: Path) -> list[Path]:
    """Save ``root`` self-contained under ``folder``, local asset hrefs relative to their item (the folder can
    move); returns the item files written."""
    root.normalize_hrefs(str(folder))
    written = []
    for item in root.get_items(recursive=True):
        for asset in item.assets.values():
            if not asset.href.startswith(("s3://", "/vsi", "http")):
                asset.href = os.path.relpath(asset.href, Path(item.self_href).parent)
        written.append(Path(item.self_href))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return written


def write_result_catalog(
    folder: Path, scenes: Sequence[ResultScene], classes: Sequence[tuple[int, str, tuple[int, int, int]]]
) -> list[Path]:
    """One STAC Item per finished scene (every file of it as an asset, the class list in the classification
    extension, footprint and projection from the class raster) and ``catalog.json`` linking them, under
    ``folder``: the results form a catalogue of their own. Returns the files written.

    An item's ``datetime`` is when its *image* was taken (the source item's, or the scene's own metadata's);
    when nothing says, it is null with the range ``start_datetime`` .. the job's time (the image existed
    then: the one bound known), never the job's time as an acquisition. The job's time is
    ``processing:datetime``."""
    from pystac.extensions.classification import ClassificationExtension

    catalog = pystac.Catalog(id="geoseg-results", description="Class rasters and polygons written by geoseg predict")
    for scene in scenes:
        processed = scene.processed.astimezone(UTC).isoformat().replace("+00:00", "Z")
        properties: dict[str, Any] = {"processing:datetime": processed, "processing:software": {"geoseg": __version__}}
        if scene.acquired is None:
            start = _UNKNOWN_START.isoformat().replace("+00:00", "Z")
            properties |= {"start_datetime": start, "end_datetime": processed}
        item = _raster_item(scene.name, scene.outputs["classes"], scene.acquired, properties)
        item.stac_extensions += [PROCESSING_SCHEMA, RASTER_SCHEMA]
        for key, asset in _result_assets(scene.outputs).items():
            item.add_asset(key, asset)
        ClassificationExtension.ext(item.assets["classes"], add_if_missing=True).classes = _class_list(classes)
        catalog.add_item(item)
    written = _save_relative(catalog, folder)
    return [folder / "catalog.json", *written]


def write_mosaic_collection(
    folder: Path,
    tiles: Sequence[tuple[str, Path, Path]],
    classes: Sequence[tuple[int, str, tuple[int, int, int]]],
    period: tuple[datetime, datetime],
    description: str,
) -> list[Path]:
    """A mosaic as a STAC Collection (``folder/collection.json``) with one Item per tile ``(name, class COG, stats
    COG)``: the period as the items' start and end, the class list, projection and footprint from each tile.
    Returns the files written."""
    from pystac.extensions.classification import ClassificationExtension

    start, end = period
    collection = pystac.Collection(
        id="geoseg-mosaic",
        description=description,
        extent=pystac.Extent(
            pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[start, end]])
        ),
        license="other",
    )
    for name, class_cog, stats_cog in tiles:
        item = _raster_item(
            name, str(class_cog), None, {"start_datetime": start.isoformat(), "end_datetime": end.isoformat()}
        )
        item.add_asset("classes", pystac.Asset(href=str(class_cog), media_type=pystac.MediaType.COG, roles=["data"]))
        stats = pystac.Asset(
            href=str(stats_cog),
            media_type=pystac.MediaType.COG,
            roles=["metadata"],
            title="count, confidence, agreement, date (days since 1970)",
        )
        item.add_asset("stats", stats)
        ClassificationExtension.ext(item.assets["classes"], add_if_missing=True).classes = _class_list(classes)
        collection.add_item(item)
    collection.update_extent_from_items()
    collection.extent.temporal = pystac.TemporalExtent([[start, end]])
    written = _save_relative(collection, folder)
    return [folder / "collection.json", *written]
