"""Training data: spatial splits, band statistics, label sources (raster, polygons, datum-tag CRS), augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from geoseg.synth import make_archive
from geoseg.training.config import validate_config
from geoseg.training.data import PatchDataset, augmentation, band_statistics, split_scenes

CLASSES = [{"id": i, "name": f"c{i}", "color": [i, i, i]} for i in range(6)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    make_archive(folder, scenes=3, size=160, seed=3)
    return folder


def _config(root, labels="{stem}_labels.tif", split="scene"):
    return validate_config(
        {
            "data": {
                "root": str(root),
                "split": split,
                "val_fraction": 0.34,
                "scenes": [{"image": "scene_???.tif", "labels": labels}],
            },
            "classes": CLASSES,
        }
    )


def test_scene_and_region_splits_are_spatial(archive) -> None:
    split = split_scenes(_config(archive))
    assert [s.info.name for s in split.train] == ["scene_000", "scene_001"]
    assert [s.info.name for s in split.val] == ["scene_002"] and split.test == []
    split = split_scenes(_config(archive, split="region"), buffer=0)
    for t, v in zip(split.train, split.val, strict=True):
        assert t.info.path == v.info.path
        assert t.region.col_off + t.region.width == v.region.col_off  # west | east, no shared pixel
        assert v.region.col_off + v.region.width == 160
    buffered = split_scenes(_config(archive, split="region"), buffer=20)
    for t, v in zip(buffered.train, buffered.val, strict=True):
        assert v.region == split.val[0].region  # the buffer comes out of the lower set (training)
        assert t.region.col_off + t.region.width + 20 == v.region.col_off


def test_band_statistics_ignore_nodata(archive) -> None:
    train = split_scenes(_config(archive)).train
    mean, std = band_statistics(train, [1, 2, 3, 4])
    import rasterio

    values = []
    for scene in train:
        with rasterio.open(scene.info.path) as src:
            data, mask = src.read().astype(float), src.read_masks(1) > 0
            values.append(data[:, mask])
    pixels = np.concatenate(values, axis=1)
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-6)


def test_polygon_labels_equal_raster_labels(archive) -> None:
    raster = PatchDataset(*_dataset_args(archive, "{stem}_labels.tif"), 64, stride=64)
    vector = PatchDataset(*_dataset_args(archive, "{stem}_labels.gpkg"), 64, stride=64)
    assert len(raster) == len(vector) > 0
    for i in range(len(raster)):
        _, y_raster = raster[i]
        _, y_vector = vector[i]
        assert torch.equal(y_raster, y_vector)


def _dataset_args(archive, labels):
    train = split_scenes(_config(archive, labels)).train
    return train, list(range(6)), [1, 2, 3, 4], np.zeros(4), np.ones(4)


@pytest.mark.realdata
def test_labels_tagged_with_another_datum_realisation_are_used_as_is(real_data, tmp_path) -> None:
    cfg = validate_config(
        {
            "data": {
                "root": str(real_data / "nc_landsat"),
                "split": "region",
                "val_fraction": 0.5,
                "stacks_dir": str(tmp_path),
                "scenes": [
                    {"image": "+".join(f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70)), "labels": "strata.tif"}
                ],
            },
            "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(1, 8)],
        }
    )
    train = split_scenes(cfg, buffer=0).train
    dataset = PatchDataset(train, list(range(1, 8)), list(range(1, 7)), np.zeros(6), np.ones(6), 64, stride=64)
    import rasterio

    with rasterio.open(real_data / "nc_landsat" / "strata.tif") as src:
        truth = src.read(1)
    for i in range(len(dataset)):
        x, y = dataset[i]
        window = dataset.grid[i][1]
        r, c = int(window.row_off), int(window.col_off)
        expected = truth[r : r + 64, c : c + 64]
        labelled = y[: expected.shape[0], : expected.shape[1]].numpy()
        known = labelled != 255
        assert known.any()
        np.testing.assert_array_equal(labelled[known], expected[known].astype(int) - 1)  # ids 1..7 -> 0..6
        assert x.shape == (6, 64, 64)


def test_augmentation_moves_image_and_mask_together() -> None:
    torch.manual_seed(0)
    mask = torch.randint(0, 4, (32, 32))
    image = mask[None].float().repeat(3, 1, 1)
    transform = augmentation()
    agreement = []
    for _ in range(40):
        x, y = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        known = y != 255
        # Band jitter moves a value v to v * (0.9..1.1) + (-0.1..0.1): rounding recovers v (<= 3) exactly, so
        # image and mask agree wherever the mask is known, except along edges the random affine interpolates.
        agreement.append((torch.round(x[0])[known] == y[known]).float().mean().item())
    assert np.mean(agreement) > 0.95
    assert min(agreement) > 0.6


@pytest.mark.parametrize("vector", [False, True])
def test_class_balanced_sampling_finds_a_rare_class(make_geotiff, tmp_path, vector) -> None:
    from geoseg.vector.export import to_geodataframe, write_polygons
    from geoseg.vector.polygonize import polygonize

    make_geotiff(np.ones((1, 512, 512), np.uint16), name="scene_000.tif")
    labels = np.zeros((512, 512), np.uint8)
    labels[300:306, 100:106] = 1  # 36 of 262 144 pixels
    label_path = make_geotiff(labels, name="scene_000_labels.tif")
    if vector:
        write_polygons(to_geodataframe(polygonize(str(label_path))), tmp_path / "scene_000_labels.gpkg")
    classes = [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(2)]
    suffix = "gpkg" if vector else "tif"
    cfg = validate_config(
        {
            "data": {
                "root": str(tmp_path),
                "split": "region",
                "val_fraction": 0.1,
                "scenes": [{"image": "scene_000.tif", "labels": f"{{stem}}_labels.{suffix}"}],
            },
            "classes": classes,
        }
    )
    train = split_scenes(cfg, buffer=0).train

    def patches_with_rare_class(balance: bool) -> float:
        dataset = PatchDataset(train, [0, 1], [1], np.zeros(1), np.ones(1), 32, count=200, balance=balance, seed=2)
        return float(np.mean([(dataset[i][1] == 1).any().item() for i in range(len(dataset))]))

    plain, balanced = patches_with_rare_class(False), patches_with_rare_class(True)
    assert plain < 0.05 and 0.35 < balanced < 0.65, (plain, balanced)  # one class of two drawn: about half


def test_loader_processes_give_the_same_patches_and_follow_the_epoch(archive) -> None:
    """Two persistent DataLoader processes (their own file handles) give exactly the patches the training process
    reads itself, and see set_epoch() of the trainer (the epoch lives in shared memory)."""
    import torch
    from rasterio.windows import Window
    from torch.utils.data import DataLoader

    from geoseg.training.data import loader_worker_init

    dataset = PatchDataset(*_dataset_args(archive, "{stem}_labels.tif"), 64, count=12, augment=True, seed=4)
    dataset.labels[0].read(Window(0, 0, 8, 8))  # files already open in the parent must not be shared
    extra = {"persistent_workers": True, "worker_init_fn": loader_worker_init, "multiprocessing_context": "fork"}
    loader = DataLoader(dataset, batch_size=4, num_workers=2, **extra)

    def draw(epoch: int) -> list[torch.Tensor]:
        dataset.set_epoch(epoch)
        return [torch.cat([x.flatten(), y.flatten().float()]) for x, y in loader]

    dataset.transform = None  # exact comparison (augmentation draws differ per process): windows and reads
    batches = DataLoader(dataset, batch_size=4)  # the same batching, in this process
    dataset.set_epoch(0)
    in_process = torch.cat([torch.cat([x.flatten(), y.flatten().float()]) for x, y in batches])
    through_loader = torch.cat(draw(0))
    assert torch.equal(through_loader, in_process)
    assert not torch.equal(torch.cat(draw(1)), through_loader)  # epoch 1: other windows, in the processes too
    assert torch.equal(torch.cat(draw(0)), through_loader)


def test_patches_past_a_small_scenes_edge_are_padded_as_configured(make_geotiff, tmp_path) -> None:
    """A scene smaller than a patch: ``pad_mode`` decides what the model sees past its edge (prediction pads the
    same way by default); the labels there are never counted."""
    image = (np.arange(40 * 40, dtype=np.uint16).reshape(1, 40, 40) % 97 + 1).repeat(2, 0)
    make_geotiff(image, name="small.tif")
    make_geotiff(np.ones((40, 40), np.uint8), name="small_labels.tif")
    cfg = validate_config(
        {
            "data": {
                "root": str(tmp_path),
                "scenes": [{"image": "small.tif", "labels": "small_labels.tif"}],
                "split": "region",
                "val_fraction": 0.5,
                "buffer": 0,
            },
            "classes": CLASSES[:2],
        }
    )
    train = split_scenes(cfg).train
    patches = {}
    for mode in ("reflect", "nodata"):
        dataset = PatchDataset(train, [0, 1], [1, 2], np.zeros(2), np.ones(2), 64, count=1, pad_mode=mode)
        patches[mode] = dataset[0]
    (x_reflect, y_reflect), (x_nodata, y_nodata) = patches["reflect"], patches["nodata"]
    assert (x_nodata[:, 40:, :] == 0).all() and (x_nodata[:, :, 40:] == 0).all()
    assert (x_reflect[:, 40:, :20] > 0).all()  # mirrored rows of the scene's training part
    assert (x_reflect[:, :, 20:40] == 0).all() and (x_reflect[:, 40:, 20:40] == 0).all()  # validation: blanked
    # Past the east edge, columns 40..58 mirror validation columns 38..20 (blanked), 59..63 training ones.
    assert (x_reflect[:, :40, 40:59] == 0).all() and (x_reflect[:, :40, 59:] > 0).all()
    assert torch.equal(x_reflect[:, :20, :20], x_nodata[:, :20, :20])  # inside: the same pixels
    assert (y_reflect[40:] == 255).all() and (y_nodata[40:] == 255).all()


@pytest.mark.realdata
def test_a_training_patch_equals_the_prediction_input_of_the_same_window(real_data, tmp_path) -> None:
    """No train/serve skew: the NC Landsat stack (float32 bands, -99999 collars, an int16 band) read as a training
    patch and as a prediction block, over the same windows, gives the model the same numbers, bit for bit
    (normalisation, nodata masking, padding past the edge)."""
    import rasterio
    import torch
    from rasterio.windows import Window

    from geoseg.bundle import ClassSpec
    from geoseg.inference.worker import ModelWorker
    from geoseg.io.raster import read_tile
    from geoseg.training.loop import bundle_spec

    bands = "+".join(f"lsat7_2000_{b}.tif" for b in (10, 20, 30, 40, 50, 70))
    data = {"root": str(real_data / "nc_landsat"), "stacks_dir": str(tmp_path), "split": "region", "buffer": 0}
    cfg = validate_config(
        {
            "data": data | {"val_fraction": 0.1, "scenes": [{"image": bands, "labels": "strata.tif"}]},
            "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(1, 8)],
        }
    )
    train = split_scenes(cfg).train
    mean, std = band_statistics(train, list(range(1, 7)))
    spec = bundle_spec(cfg, mean, std, [f"b{i}" for i in range(1, 7)], 6)
    spec.classes = [ClassSpec(id=i, name=f"c{i}", color=(0, 0, 0)) for i in range(1, 8)]
    patches = PatchDataset(train, list(range(1, 8)), list(range(1, 7)), mean, std, 96, stride=96)
    patches.grid.append((0, Window(-40, 380, 96, 96)))  # past the west and south edges: reflect padding
    patches.count += 1
    norm = spec.normalisation()
    worker = ModelWorker(spec, spec.build().state_dict())
    saw_nodata = False
    with rasterio.open(train[0].info.path) as src:
        for k, (_, window) in enumerate(patches.grid):
            x_train, _ = patches[k]
            raw, valid = read_tile(src, window, list(norm.band_indexes), "reflect", native=True)  # as read_block
            norm.mask_assumed_nodata(raw, valid, src.nodata)
            x_pred = worker.normalise(torch.from_numpy(raw)[None], torch.from_numpy(valid)[None])[0]
            assert torch.equal(x_train, x_pred), window
            saw_nodata |= bool((~valid).any())
    assert saw_nodata and len(patches) > 10
