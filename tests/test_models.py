"""One tester over every architecture (smp-style): shapes, gradients, odd sizes, determinism, round trips."""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.models import resnet18

from geoseg.errors import GeoSegError
from geoseg.models import MODELS, ResNetUNet, build_model
from geoseg.models.pretrained import first_conv

ARCHITECTURES = [
    ("unet", {"base_channels": 8, "depth": 3}),
    ("unet", {"base_channels": 8, "depth": 2, "norm": "none", "upsample": "bilinear"}),
    ("resnet_unet", {"encoder": "resnet18"}),
    ("resnet_unet", {"encoder": "resnet50"}),
    ("smp_unet", {"encoder": "resnet18"}),
]
IDS = [f"{name}-{'-'.join(map(str, kw.values()))}" for name, kw in ARCHITECTURES]


def test_registry_lists_both_architectures() -> None:
    assert set(MODELS) == {"unet", "resnet_unet", "smp_unet"}


@pytest.mark.parametrize(("name", "kwargs"), ARCHITECTURES, ids=IDS)
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (4, 6), (7, 3)])
def test_forward_shape_on_odd_sizes(name: str, kwargs: dict, in_channels: int, num_classes: int) -> None:
    model = build_model(name, in_channels=in_channels, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 97, 131))
    assert out.shape == (2, num_classes, 97, 131)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kwargs"), ARCHITECTURES, ids=IDS)
def test_backward_reaches_every_parameter(name: str, kwargs: dict) -> None:
    model = build_model(name, in_channels=4, num_classes=3, **kwargs).train()
    out = model(torch.randn(2, 4, 64, 64))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize(("name", "kwargs"), ARCHITECTURES, ids=IDS)
def test_eval_is_deterministic_and_state_dict_round_trips(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=4, **kwargs).eval()
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = build_model(name, in_channels=3, num_classes=4, **kwargs).eval()
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(clone(x), first)


def test_unet_handles_one_pixel_input() -> None:
    model = build_model("unet", in_channels=2, num_classes=3, base_channels=4, depth=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 1, 1)).shape == (1, 3, 1, 1)


def test_unet_rejects_bad_options() -> None:
    with pytest.raises(GeoSegError, match=r"bad arguments for architecture 'unet': .*norm"):
        build_model("unet", in_channels=1, num_classes=2, norm="group")
    with pytest.raises(GeoSegError, match="encoder must be one of"):
        build_model("resnet_unet", in_channels=3, num_classes=2, encoder="resnet101")
    with pytest.raises(GeoSegError, match="unknown architecture"):
        build_model("segformer", in_channels=1, num_classes=2)


def test_first_conv_adaptation_copies_rgb_cyclically_and_rescales() -> None:
    weight = torch.randn(64, 3, 7, 7)
    adapted, unknown = first_conv(weight, None, None, 5)
    assert adapted.shape == (64, 5, 7, 7) and unknown == []
    for band, rgb in enumerate([0, 1, 2, 0, 1]):
        torch.testing.assert_close(adapted[:, band], weight[:, rgb] * 3 / 5)
    torch.testing.assert_close(first_conv(weight, None, None, 3)[0], weight)


def test_resnet_unet_loads_local_pretrained_weights(tmp_path) -> None:
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = ResNetUNet(in_channels=6, num_classes=2, encoder="resnet18", weights=path)
    torch.testing.assert_close(model.stem[0].weight, first_conv(reference.conv1.weight, None, None, 6)[0])
    torch.testing.assert_close(model.layers[3][1].conv2.weight, reference.layer4[1].conv2.weight)


def test_resnet_unet_bad_weights_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(GeoSegError, match=r"broken\.pth: refused: the file holds objects other than tensors"):
        ResNetUNet(in_channels=3, num_classes=2, encoder="resnet18", weights=path)


def _gradient_radius(model: torch.nn.Module, size: int, stride: int) -> int:
    """Receptive-field radius measured, not derived: with all weights positive every path is live, so the input
    pixels with a non-zero gradient of one output pixel are exactly those that can change it (worst position
    on the pooling grid, along one axis)."""
    model = model.eval().double()
    for parameter in model.parameters():
        parameter.data.fill_(0.01)
    radius, centre = 0, size // 2 // stride * stride
    for x in range(stride):
        row = torch.ones(1, 1, 1, size, dtype=torch.float64, requires_grad=True)
        model(row.expand(1, 1, size, size))[0, 0, centre + x, centre + x].backward()
        reached = torch.nonzero(row.grad[0, 0, 0]).flatten()
        radius = max(radius, centre + x - int(reached.min()), int(reached.max()) - centre - x)
    return radius


@pytest.mark.parametrize(("depth", "upsample"), [(1, "transpose"), (2, "bilinear"), (3, "transpose"), (3, "bilinear")])
def test_unet_receptive_field_is_exact(depth: int, upsample: str) -> None:
    model = build_model("unet", in_channels=1, num_classes=1, base_channels=1, depth=depth, upsample=upsample)
    assert model.output_stride == 2**depth
    assert model.receptive_field() == _gradient_radius(model, 256, 2**depth)


def test_known_receptive_fields() -> None:
    """The depth-4 U-Net's ~107 px that tiles must cover, and the ResNet encoders' far larger fields."""
    unet = build_model("unet", in_channels=1, num_classes=1, base_channels=1, depth=4)
    assert unet.receptive_field() == 107
    fields = {
        e: build_model("resnet_unet", in_channels=3, num_classes=2, encoder=e).receptive_field()
        for e in ("resnet18", "resnet34")
    }
    assert fields == {"resnet18": 341, "resnet34": 573}


@pytest.mark.parametrize(("name", "kwargs"), ARCHITECTURES, ids=IDS)
def test_folded_batch_norms_change_nothing_but_rounding(name: str, kwargs: dict) -> None:
    import copy

    from geoseg.models.fuse import fold_batch_norms

    torch.manual_seed(0)
    model = build_model(name, in_channels=5, num_classes=4, **kwargs).eval()
    for module in model.modules():  # statistics far from the defaults, so a wrong fold cannot hide
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    folded = fold_batch_norms(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 5, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(build_model(name, in_channels=5, num_classes=4, **kwargs).train())


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_smp_unet_is_segmentation_models_pytorch_weight_for_weight(encoder: str) -> None:
    """The weights of a real ``smp.Unet`` (as TorchGeo trains it) load unchanged and give the same logits.

    Needs segmentation_models_pytorch (not a geoseg dependency; ``pip install segmentation-models-pytorch``);
    where it is missing, :func:`test_smp_unet_matches_a_stored_smp_reference` checks the same from a file."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    theirs = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=4, classes=5).eval()
    with torch.no_grad():  # trained-looking batch-norm statistics, so that eval mode uses them
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    ours = build_model("smp_unet", in_channels=4, num_classes=5, encoder=encoder).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every name and shape matches
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def seeded_weights(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic non-trivial weights for any state dict, in key order (also used to make the stored
    reference below with segmentation_models_pytorch itself)."""
    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            filled[name] = tensor.clone()
        elif name.endswith("running_var"):
            filled[name] = torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5
        else:
            filled[name] = torch.randn(tensor.shape, generator=generator) * 0.1
    return filled


# Every registered architecture, small: (constructor arguments, input shape) for the stored reference outputs.
REFERENCE_CASES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "unet": ({"in_channels": 3, "num_classes": 4, "base_channels": 4, "depth": 3}, (1, 3, 48, 40)),
    "resnet_unet": ({"in_channels": 5, "num_classes": 3, "encoder": "resnet18"}, (1, 5, 64, 64)),
    "smp_unet": ({"in_channels": 3, "num_classes": 2, "encoder": "resnet18"}, (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_architecture_reproduces_its_stored_reference_outputs(name: str) -> None:
    """segmentation_models_pytorch's rule: reference logits per architecture, stored, so that a refactor that
    changes numerics (a layer order, a padding, an interpolation) fails here. A new architecture must add its
    case (REFERENCE_CASES) and rerun tests/data/make_references.py."""
    from pathlib import Path

    references = torch.load(Path(__file__).parent / "data" / "model_references.pt", weights_only=True)
    assert name in REFERENCE_CASES and name in references, f"no stored reference for {name}"
    case = references[name]
    model = build_model(name, **case["kwargs"]).eval()
    model.load_state_dict(seeded_weights(model.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(model(case["input"]), case["logits"], rtol=1e-4, atol=1e-5)


def test_smp_unet_matches_a_stored_smp_reference() -> None:
    """Stored from segmentation_models_pytorch 0.6.0 (smp.Unet, resnet18, 3 bands, 2 classes, weights from
    :func:`seeded_weights`): the same parameter names and shapes in the same order, and the same logits. Runs
    without smp installed, so a change to smp_unet that breaks compatibility fails everywhere."""
    from pathlib import Path

    reference = torch.load(Path(__file__).parent / "data" / "smp_unet_resnet18_reference.pt", weights_only=True)
    ours = build_model("smp_unet", in_channels=3, num_classes=2, encoder="resnet18").eval()
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [tuple(k) for k in reference["keys"]]
    ours.load_state_dict(seeded_weights(ours.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(ours(reference["input"]), reference["logits"], rtol=1e-4, atol=1e-4)
