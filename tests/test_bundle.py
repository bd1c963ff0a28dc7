"""Bundles: round trip, and every way a bundle can be broken is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from geoseg.bundle import SPEC_FILE, WEIGHTS_FILE, init_bundle, load_bundle, load_spec
from geoseg.errors import GeoSegError


@pytest.fixture
def bundle(tmp_path):
    return init_bundle(tmp_path / "bundle", "unet", in_channels=3, num_classes=4, base_channels=4, depth=2)


def test_round_trip_gives_the_same_model(bundle) -> None:
    spec, model = load_bundle(bundle)
    assert [b.index for b in spec.bands] == [1, 2, 3] and len(spec.classes) == 4
    assert spec.architecture.kwargs == {"base_channels": 4, "depth": 2}
    _, again = load_bundle(bundle)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert not model.training


def test_resnet_bundle(tmp_path) -> None:
    path = init_bundle(tmp_path / "r", "resnet_unet", in_channels=5, num_classes=2, encoder="resnet18")
    spec, model = load_bundle(path)
    assert spec.architecture.name == "resnet_unet"
    assert model(torch.randn(1, 5, 40, 40)).shape == (1, 2, 40, 40)


def test_pickle_payload_is_refused(bundle, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Payload()}, bundle / WEIGHTS_FILE)  # a real torch file carrying the payload
    with pytest.raises(GeoSegError, match="refused to load weights") as info:
        load_bundle(bundle)
    assert str(info.value).startswith(str(bundle / WEIGHTS_FILE))
    assert not marker.exists()


def test_truncated_weights(bundle) -> None:
    data = (bundle / WEIGHTS_FILE).read_bytes()
    (bundle / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(GeoSegError, match="corrupt weights"):
        load_bundle(bundle)


def test_weights_of_another_architecture(bundle, tmp_path) -> None:
    other = init_bundle(tmp_path / "other", "unet", in_channels=3, num_classes=4, base_channels=8, depth=2)
    (bundle / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(GeoSegError, match="do not match the architecture"):
        load_bundle(bundle)


def test_incompatible_format_version(bundle) -> None:
    spec = json.loads((bundle / SPEC_FILE).read_text())
    spec["format_version"] = 99
    (bundle / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(GeoSegError, match="bundle format 99 is not supported"):
        load_spec(bundle)


def test_not_a_bundle(tmp_path) -> None:
    with pytest.raises(GeoSegError, match="not a model bundle"):
        load_spec(tmp_path)
