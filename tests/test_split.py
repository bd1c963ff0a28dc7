"""Train / validation / test as spatial sets: role grids, buffers, named regions, and patches that never see the
test region."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from geoseg.errors import GeoSegError
from geoseg.training.config import validate_config
from geoseg.training.data import PatchDataset, split_scenes
from geoseg.training.split import BUFFER, TEST, TRAIN, VAL, RoleMap, apply_buffer, block_roles, dilate, strip_roles

SIZE = 192
ORIGIN = Affine(10.0, 0, 500_000, 0, -10.0, 4_100_000)  # 10 m pixels, EPSG:32633


def test_dilate_is_a_square_neighbourhood() -> None:
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    grown = dilate(mask, 2)
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(dilate(mask, 0), mask)


def test_the_buffer_comes_out_of_the_lower_set() -> None:
    roles = np.full((1, 10), TRAIN, np.uint8)
    roles[0, 4:7] = VAL
    roles[0, 7:] = TEST
    out = apply_buffer(roles, 2)
    # test keeps its three cells; validation loses the two next to test; training the two next to validation
    assert out.tolist() == [[TRAIN, TRAIN, BUFFER, BUFFER, VAL, BUFFER, BUFFER, TEST, TEST, TEST]]


def test_random_blocks_take_exact_shares_and_checkerboard_stripes() -> None:
    free = np.ones((40, 50), bool)
    roles = block_roles(free, 10, (0.2, 0.2), "random", seed=3)
    blocks = roles[::10, ::10]
    assert blocks.shape == (4, 5) and (blocks == VAL).sum() == 4 and (blocks == TEST).sum() == 4
    assert np.array_equal(block_roles(free, 10, (0.2, 0.2), "random", seed=3), roles)  # seeded
    assert not np.array_equal(block_roles(free, 10, (0.2, 0.2), "random", seed=4), roles)
    free[:, 30:] = False  # the east two block columns are a named region: 12 blocks drawn, not 20
    blocks = block_roles(free, 10, (0.25, 0.25), "random", seed=3)[::10, ::10]
    assert (blocks[:, :3] == VAL).sum() == 3 and (blocks[:, :3] == TEST).sum() == 3 and (blocks[:, 3:] == 0).all()
    board = block_roles(np.ones((30, 30), bool), 10, (0.25, 0.25), "checkerboard", seed=0)[::10, ::10]
    assert board.tolist() == [[VAL, TRAIN, TEST], [TRAIN, TEST, TRAIN], [TEST, TRAIN, VAL]]


def test_strips_split_what_named_regions_leave() -> None:
    free = np.ones((2, 10), bool)
    assert strip_roles(free, (0.2, 0.3)).tolist()[0] == [TRAIN] * 5 + [VAL] * 2 + [TEST] * 3
    free[:, 8:] = False  # a named test region in the east: validation is the strip west of it
    assert strip_roles(free, (0.25, 0.0)).tolist()[0][:8] == [TRAIN] * 6 + [VAL] * 2


def test_role_map_samples_cells_and_places_windows_only_where_they_fit() -> None:
    roles = np.full((4, 4), TRAIN, np.uint8)
    roles[:, 3] = TEST  # cells of 8 px: test is columns 24..29 of a 30-px-wide scene
    rm = RoleMap(roles, 8, 30, 32)
    sampled = rm.sample(Window(20, 0, 12, 1))
    assert sampled.tolist() == [[TRAIN] * 4 + [TEST] * 6 + [BUFFER] * 2]  # 30.. is outside the scene
    assert rm.count(TEST) == 6 * 32 and rm.count(TRAIN) == 24 * 32
    positions = rm.window_positions(TRAIN, 8)
    # A window may start anywhere in its corner cell, so it must fit in two cells: corners at columns 0 and 8.
    assert sorted({int(c) for c in positions[:, 1]}) == [0, 8]
    assert rm.bounding_window(TEST) == Window(24, 0, 6, 32) and rm.bounding_window(VAL) is None


def _scene(make_geotiff, tmp_path, sentinel: np.ndarray | None = None):
    """A scene with labels everywhere; ``sentinel`` pixels hold a value no other pixel comes near."""
    rng = np.random.default_rng(0)
    image = (100 + rng.integers(0, 50, (3, SIZE, SIZE))).astype(np.uint16)
    if sentinel is not None:
        image[:, sentinel] = 60_000
    make_geotiff(image, name="scene.tif", transform=ORIGIN)
    labels = (np.arange(SIZE)[None, :] // 48 % 3).repeat(SIZE, 0).astype(np.uint8)
    make_geotiff(labels, name="labels.tif", transform=ORIGIN)
    return tmp_path


def _config(root, **data):
    return validate_config(
        {
            "data": {"root": str(root), "scenes": [{"image": "scene.tif", "labels": "labels.tif"}], **data},
            "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(3)],
        }
    )


@pytest.mark.parametrize("named", ["scene crs", "lon/lat", "polygons"])
def test_no_pixel_of_a_training_or_validation_patch_lies_in_the_test_region(make_geotiff, tmp_path, named) -> None:
    root = _scene(make_geotiff, tmp_path)
    x0, y_top = ORIGIN.c + 128 * 10, ORIGIN.f  # the sentinel third: columns 128..191
    bounds = (x0, y_top - SIZE * 10, ORIGIN.c + SIZE * 10, y_top)
    if named == "scene crs":
        region = {"bounds": list(bounds)}
    elif named == "lon/lat":
        # A lon/lat box is no rectangle in UTM: one whose west edge lies 3 px inside the third, past the scene's
        # other edges.
        inner = (bounds[0] + 30, bounds[1] - 1000, bounds[2] + 1000, bounds[3] + 1000)
        region = {"bounds": list(transform_bounds("EPSG:32633", "EPSG:4326", *inner)), "crs": "EPSG:4326"}
    else:
        gpd.GeoDataFrame(geometry=[box(*bounds)], crs="EPSG:32633").to_file(tmp_path / "test.gpkg")
        region = {"polygons": "test.gpkg"}
    # A validation strip (15 px, 3 left by the buffer) narrower than a patch (32 px): its windows reach into the
    # test set, blanked there.
    cfg = _config(root, split="region", val_fraction=0.12, test_region=region, buffer=12)
    split = split_scenes(cfg)
    (test,) = split.test
    whole = Window(0, 0, SIZE, SIZE)
    roles = test.roles.sample(whole)
    in_test = roles == TEST
    if named != "lon/lat":
        assert in_test[:, 128:].all() and not in_test[:, :128].any()  # exactly the named region
    else:
        assert in_test[:, :128].sum() == 0 and in_test[:, 136:].all()
    _scene(make_geotiff, tmp_path, sentinel=in_test)  # the test pixels now hold the sentinel (files open lazily)
    # Every training or validation pixel is farther than the buffer from the test set, on both axes' grid.
    used = (roles == TRAIN) | (roles == VAL)
    cols_used = np.nonzero(used.any(axis=0))[0]
    cols_test = np.nonzero(in_test.any(axis=0))[0]
    assert cols_test.min() - cols_used.max() > 12
    mean, std = np.full(3, 100.0), np.full(3, 10.0)
    sentinel = (60_000 - 100) / 10  # a test pixel after normalisation
    for role_scenes, kwargs in ((split.train, {"count": 64, "augment": True}), (split.val, {"stride": 16})):
        dataset = PatchDataset(role_scenes, [0, 1, 2], [1, 2, 3], mean, std, 32, **kwargs)
        for i in range(len(dataset)):
            x, _ = dataset[i]
            assert x.abs().max() < sentinel / 2, "a test pixel reached a patch"
        if "count" in kwargs:  # training windows are drawn where they touch no other set
            windows = [dataset._window(i)[1] for i in range(len(dataset))]
            assert all(not (test.roles.sample(w) == TEST).any() for w in windows)
            assert all((test.roles.sample(w) != VAL).all() for w in windows)


def test_validation_and_test_regions_named_together_leave_the_rest_to_training(make_geotiff, tmp_path) -> None:
    root = _scene(make_geotiff, tmp_path)
    col = lambda c: ORIGIN.c + c * 10  # noqa: E731
    cfg = _config(
        root,
        val_region={"bounds": [col(64), ORIGIN.f - SIZE * 10, col(100), ORIGIN.f]},
        test_region={"bounds": [col(128), ORIGIN.f - SIZE * 10, col(SIZE), ORIGIN.f]},
        buffer=8,
    )
    split = split_scenes(cfg)
    roles = split.train[0].roles.sample(Window(0, 0, SIZE, SIZE))[0]
    expected = [TRAIN] * 56 + [BUFFER] * 8 + [VAL] * 36 + [BUFFER] * 8 + [TRAIN] * 12 + [BUFFER] * 8 + [TEST] * 64
    assert roles.tolist() == expected


def test_a_region_outside_every_scene_is_one_clear_error(make_geotiff, tmp_path) -> None:
    root = _scene(make_geotiff, tmp_path)
    cfg = _config(root, split="region", test_region={"bounds": [0, 0, 10, 10]}, buffer=0)
    with pytest.raises(GeoSegError, match="leaves no test pixel"):
        split_scenes(cfg)
    with pytest.raises(GeoSegError, match=r"data.test_region: .*either bounds or polygons"):
        _config(root, test_region={"bounds": [0, 0, 1, 1], "polygons": "x.gpkg"})
    with pytest.raises(GeoSegError, match="leave a share for training"):
        _config(root, val_fraction=0.6, test_fraction=0.4)


@pytest.mark.realdata
def test_the_shipped_nc_config_keeps_its_test_region_out_of_training(real_data, tmp_path) -> None:
    """configs/nc_landsat.yaml on the real scene: the test set is the lon/lat box, nothing of it (and nothing
    within the receptive field of it) is in a training or validation patch."""
    from pathlib import Path

    from rasterio.warp import transform as transform_xy

    from geoseg.training.config import load_config
    from geoseg.training.loop import receptive_field

    config = Path(__file__).resolve().parents[1] / "configs" / "nc_landsat.yaml"
    cfg = load_config(config, [f"data.root={real_data / 'nc_landsat'}", f"data.stacks_dir={tmp_path}"])
    field = receptive_field(cfg)
    split = split_scenes(cfg, buffer=field)
    (test,) = split.test
    info = test.info
    roles = test.roles.sample(Window(0, 0, info.width, info.height))
    # Pixel centres inside the configured lon/lat box are test, all others are not.
    rows, cols = np.mgrid[0 : info.height, 0 : info.width]
    xs, ys = info.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    lon, lat = transform_xy(info.crs, "EPSG:4326", xs, ys)
    west, south, east, north = cfg.data.test_region.bounds
    inside = (np.array(lon) >= west) & (np.array(lon) <= east) & (np.array(lat) >= south) & (np.array(lat) <= north)
    inside = inside.reshape(info.height, info.width)
    edge = inside ^ dilate(inside, 1)  # a pixel centre on the box's edge may round either way
    assert ((roles == TEST) == inside)[~edge].all() and (roles == TEST).mean() > 0.2
    # No training or validation pixel within the receptive field of a test pixel.
    near_test = dilate(roles == TEST, field)
    assert not (near_test & ((roles == TRAIN) | (roles == VAL))).any()
    mean, std = np.zeros(6), np.ones(6)
    train = PatchDataset(split.train, list(range(1, 8)), list(range(1, 7)), mean, std, 64, count=200, seed=1)
    for i in range(len(train)):
        _, window = train._window(i)
        assert not (test.roles.sample(window) == TEST).any()
    val = PatchDataset(split.val, list(range(1, 8)), list(range(1, 7)), mean, std, 64, stride=64)
    for _, window in val.grid:
        patch_roles = test.roles.sample(window)
        x, _ = val[val.grid.index((0, window))]
        assert (x.numpy()[:, patch_roles == TEST] == 0).all()  # blanked where a validation window reaches in
