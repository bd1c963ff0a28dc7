"""Pretrained ResNet encoders from checkpoints in the layouts people publish, built here (no download):
torchvision, timm (trainer checkpoint, DDP prefix), SSL4EO-S12 MoCo (13 Sentinel-2 bands, query and momentum
encoders, projector head) and SatlasPretrain (backbone.resnet. prefix beside other heads)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torchvision.models import resnet18, resnet34, resnet50

from geoseg.errors import GeoSegError
from geoseg.models import ResNetUNet
from geoseg.synth import make_archive
from geoseg.training.config import validate_config
from geoseg.training.loop import _prepare, initial_model

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _resnet(factory, bands: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = factory(weights=None)
    net.conv1 = torch.nn.Conv2d(bands, 64, 7, stride=2, padding=3, bias=False)
    for module in net.modules():  # non-default BN statistics, so a load that skipped them would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return net.state_dict()


def _layouts() -> dict[str, tuple[object, dict, list[str] | None, dict[str, torch.Tensor]]]:
    """name -> (encoder, file content, checkpoint bands, the plain torchvision-named weights inside)."""
    tv = _resnet(resnet18, 3, 1)
    timm = _resnet(resnet34, 3, 2)
    moco_q, moco_k = _resnet(resnet50, 13, 3), _resnet(resnet50, 13, 4)
    moco = {f"module.encoder_q.{k}": v for k, v in moco_q.items() if not k.startswith("fc.")}
    moco |= {f"module.encoder_k.{k}": v for k, v in moco_k.items() if not k.startswith("fc.")}
    moco |= {
        "module.encoder_q.fc.0.weight": torch.randn(2048, 2048),
        "module.encoder_q.fc.2.weight": torch.randn(128, 2048),
    }
    satlas = _resnet(resnet18, 9, 5)
    satlas_file = {f"backbone.resnet.{k}": v for k, v in satlas.items()}
    satlas_file |= {"intermediates.0.fpn.weight": torch.randn(128, 512, 1, 1), "heads.0.layers.weight": torch.randn(2)}
    return {
        "torchvision": ("resnet18", tv, None, tv),
        "timm": (
            "resnet34",
            {"epoch": 3, "arch": "resnet34", "state_dict": {f"module.{k}": v for k, v in timm.items()}},
            None,
            timm,
        ),
        "ssl4eo_moco": ("resnet50", {"state_dict": moco, "epoch": 99}, S2, moco_q),
        "satlas": ("resnet18", satlas_file, ["B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12"], satlas),
    }


@pytest.mark.parametrize("layout", ["torchvision", "timm", "ssl4eo_moco", "satlas"])
def test_each_layout_loads_every_encoder_weight(tmp_path, layout) -> None:
    encoder, content, checkpoint_bands, inner = _layouts()[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    bands = ["B02", "B03", "B04", "B08", "elevation"] if checkpoint_bands else None
    torch.manual_seed(0)
    model = ResNetUNet(in_channels=5, num_classes=3, encoder=encoder)
    decoder_before = model.head.weight.clone()
    from geoseg.models.pretrained import read_state_dict

    unknown = model.load_encoder(read_state_dict(path), path, bands, checkpoint_bands)
    # Every encoder tensor but the first conv is the checkpoint's own (the momentum copy and heads are not used).
    torch.testing.assert_close(model.stem[1].running_mean, inner["bn1.running_mean"])
    torch.testing.assert_close(model.layers[0][0].conv1.weight, inner["layer1.0.conv1.weight"])
    torch.testing.assert_close(
        model.layers[3][-1].bn2.running_var, inner[f"layer4.{len(model.layers[3]) - 1}.bn2.running_var"]
    )
    loaded = dict(model.state_dict())
    for key, tensor in inner.items():
        if key.startswith("layer"):
            stage, rest = key.split(".", 1)
            torch.testing.assert_close(loaded[f"layers.{int(stage[5:]) - 1}.{rest}"], tensor)
    torch.testing.assert_close(model.head.weight, decoder_before)  # the decoder keeps its initialisation
    stem = model.stem[0].weight
    ckpt = inner["conv1.weight"]
    scale = ckpt.shape[1] / 5
    if checkpoint_bands is None:  # RGB kernels cycled
        assert unknown == []
        for band, rgb in enumerate([0, 1, 2, 0, 1]):
            torch.testing.assert_close(stem[:, band], ckpt[:, rgb] * scale)
    else:  # by name; elevation is no band of the checkpoint: the mean kernel
        assert unknown == ["elevation"]
        for band, name in enumerate(bands[:4]):
            torch.testing.assert_close(stem[:, band], ckpt[:, checkpoint_bands.index(name)] * scale)
        torch.testing.assert_close(stem[:, 4], ckpt.mean(dim=1) * scale)


def test_wrong_checkpoints_are_refused_with_the_reason(tmp_path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(_resnet(resnet34, 3, 0), path)
    from geoseg.models.pretrained import read_state_dict

    model = ResNetUNet(in_channels=3, num_classes=2, encoder="resnet18")
    with pytest.raises(GeoSegError, match=r"r34\.pth: the weights are not a ResNet of this depth"):
        model.load_encoder(read_state_dict(path), path)
    path = tmp_path / "unet.pth"
    torch.save({"enc.0.weight": torch.zeros(3)}, path)
    with pytest.raises(GeoSegError, match="no ResNet in the weights file"):
        model.load_encoder(read_state_dict(path), path)
    path = tmp_path / "r18.pth"
    torch.save(_resnet(resnet18, 13, 0), path)
    with pytest.raises(GeoSegError, match="names 4 bands; the checkpoint's first convolution has 13"):
        model.load_encoder(read_state_dict(path), path, ["a", "b", "c"], ["B01", "B02", "B03", "B04"])


def test_training_starts_from_the_checkpoint_and_records_its_normalisation(tmp_path) -> None:
    """An ImageNet RGB checkpoint for 4-band scenes (blue, green, red, nir): RGB kernels and normalisation by
    name, NIR from the mean kernel and the scenes' statistics; the bundle says which came from where."""
    make_archive(tmp_path / "data", scenes=3, size=96, seed=0)
    weights = tmp_path / "imagenet_rgb.pth"
    torch.save(_resnet(resnet18, 3, 7), weights)
    cfg = validate_config(
        {
            "data": {
                "root": str(tmp_path / "data"),
                "scenes": [{"image": "scene_???.tif", "labels": "{stem}_labels.tif"}],
                "band_names": ["blue", "green", "red", "nir"],
            },
            "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(6)],
            "model": {
                "arch": "resnet_unet",
                "kwargs": {"encoder": "resnet18"},
                "pretrained": {
                    "weights": str(weights),
                    "bands": ["red", "green", "blue"],
                    "mean": [1200.0, 1100.0, 1000.0],
                    "std": [300.0, 250.0, 200.0],
                },
            },
        }
    )
    console = Console(file=io.StringIO(), width=200, record=True)
    cfg, spec, _ = _prepare(cfg, tmp_path / "run", console)
    assert "nir start from the mean kernel" in console.export_text()
    by_name = {b.name: b for b in spec.bands}
    assert (by_name["red"].mean, by_name["red"].std, by_name["blue"].mean) == (1200.0, 300.0, 1000.0)
    assert by_name["nir"].std not in (200.0, 250.0, 300.0) and 200 < by_name["nir"].mean < 5000  # the scenes'
    assert spec.pretrained is not None and spec.pretrained["bands_initialised"] == ["nir"]
    assert spec.pretrained["normalisation_from_checkpoint"] == ["blue", "green", "red"]
    model, initialised = initial_model(cfg, spec)
    ckpt = torch.load(weights, weights_only=True)["conv1.weight"]
    torch.testing.assert_close(model.stem[0].weight[:, 2], ckpt[:, 0] * 3 / 4)  # the scenes' red <- its red
    assert initialised == ["nir"]
    again, _ = initial_model(cfg, spec)  # every rank starts from the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert "weights" not in spec.architecture.kwargs  # the bundle holds weights, not a path to the checkpoint
    assert np.isfinite([b.mean for b in spec.bands]).all()


def test_pretrained_config_is_checked_before_anything_runs() -> None:
    base = {
        "data": {"scenes": [{"image": "x.tif", "labels": "y.tif"}]},
        "classes": [{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(2)],
    }
    with pytest.raises(GeoSegError, match="pretrained encoders are for arch: resnet_unet"):
        validate_config(base | {"model": {"arch": "unet", "pretrained": {"weights": "w.pth"}}})
    with pytest.raises(GeoSegError, match="mean has 2 values for 3 bands"):
        validate_config(
            base
            | {
                "model": {
                    "arch": "resnet_unet",
                    "pretrained": {"weights": "w.pth", "bands": ["a", "b", "c"], "mean": [0, 0], "std": [1]},
                }
            }
        )
