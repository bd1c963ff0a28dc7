"""Bundles: round trip, and every way a bundle can be broken is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

from geoseg.bundle import PALETTE, SPEC_FILE, WEIGHTS_FILE, init_bundle, load_bundle, load_spec
from geoseg.errors import GeoSegError


@pytest.fixture
def bundle(tmp_path):
    return init_bundle(tmp_path / "bundle", "unet", in_channels=3, num_classes=4, base_channels=4, depth=2)


def test_round_trip_gives_the_saved_model(tmp_path) -> None:
    """What is loaded is the model that was saved: every tensor, BatchNorm statistics included, and its outputs."""
    from geoseg.bundle import ArchitectureSpec, BandSpec, BundleSpec, default_classes, save_bundle

    spec = BundleSpec(
        architecture=ArchitectureSpec(name="unet", kwargs={"base_channels": 4, "depth": 2}),
        bands=[BandSpec(name=f"b{i}", index=i, mean=0.0, std=1.0) for i in (1, 2, 3)],
        input_band_count=3,
        classes=default_classes(4),
    )
    torch.manual_seed(7)
    saved = spec.build()
    with torch.no_grad():
        for module in saved.modules():  # statistics a fresh model does not have
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    saved.eval()
    save_bundle(tmp_path / "b", spec, saved)
    loaded_spec, model = load_bundle(tmp_path / "b")
    assert [b.index for b in loaded_spec.bands] == [1, 2, 3] and len(loaded_spec.classes) == 4
    assert loaded_spec.architecture.kwargs == {"base_channels": 4, "depth": 2}
    assert set(model.state_dict()) == set(saved.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.state_dict().items())
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x), saved(x))
    assert not model.training


def test_resnet_bundle(tmp_path) -> None:
    path = init_bundle(tmp_path / "r", "resnet_unet", in_channels=5, num_classes=2, encoder="resnet18")
    spec, model = load_bundle(path)
    assert spec.architecture.name == "resnet_unet"
    assert model(torch.randn(1, 5, 40, 40)).shape == (1, 2, 40, 40)


def test_a_from_scratch_unet_is_loaded_and_run_without_importing_torchvision(bundle) -> None:
    """Importing torchvision imports torch._dynamo: 1.2 s of CPU at the start of every prediction process (an
    in-process job, each Ray model actor). Only a ResNet encoder needs it, so a U-Net's worker goes without."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from geoseg.bundle import load_bundle\n"
        "from geoseg.inference.worker import ModelWorker\n"
        f"spec, model = load_bundle({str(bundle)!r})\n"
        "worker = ModelWorker(spec, model.state_dict(), threads=1)\n"
        "assert worker.logits(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)\n"
        "print(sorted(name for name in sys.modules if name.startswith('torchvision')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    resnet = subprocess.run(  # the check above can fail: a ResNet encoder does import it
        [
            sys.executable,
            "-c",
            "import sys; from geoseg.models import build_model; "
            "build_model('resnet_unet', in_channels=3, num_classes=2, encoder='resnet18'); "
            "print('torchvision.models.resnet' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert resnet.stdout.strip() == "True"


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
    with pytest.raises(
        GeoSegError, match=r"weights are not this architecture's: \S+ is \(8, 3, 3, 3\), the model's is \(4, 3"
    ):
        load_bundle(bundle)


def test_incompatible_format_version(bundle) -> None:
    spec = json.loads((bundle / SPEC_FILE).read_text())
    spec["format_version"] = 99
    (bundle / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(GeoSegError, match="bundle format 99 is not supported"):
        load_spec(bundle)


@pytest.mark.parametrize(
    ("edit", "cause"),
    [
        (lambda s: s["classes"][1].update(id=0), "class id 0 is given twice"),  # were merged into one class
        (lambda s: s["classes"][1].update(name=s["classes"][0]["name"]), "class name 'class_0' is given twice"),
        (lambda s: s["classes"][0].update(color=[300, 0, 0]), "classes.0.color.0: Input should be less than or equal"),
        (lambda s: s["bands"][0].update(std=float("inf")), "bands.0.std: Input should be a finite number"),
        (lambda s: s.update(input_band_count=2), "band 'band_3' is read from band 3, but input_band_count is 2"),
        (lambda s: s["bands"][2].update(index=7), "band 'band_3' is read from band 7, but input_band_count is 3"),
        (lambda s: s["architecture"]["kwargs"].update(base_channels=0), "base_channels must be >= 1, got 0"),
    ],
)
def test_inconsistent_specs_are_refused_in_one_line(bundle, edit, cause) -> None:
    """Each was accepted, merged or ended in a cut message or a traceback (issue 23)."""
    spec = json.loads((bundle / SPEC_FILE).read_text())
    edit(spec)
    (bundle / SPEC_FILE).write_text(json.dumps(spec).replace("Infinity", "1e999"))
    with pytest.raises(GeoSegError) as caught:
        load_bundle(bundle)
    assert cause in str(caught.value) and str(caught.value).startswith(str(bundle / SPEC_FILE))
    assert "\n" not in str(caught.value)


def test_not_a_bundle(tmp_path) -> None:
    with pytest.raises(GeoSegError, match="not a model bundle"):
        load_spec(tmp_path)


def test_a_model_trained_elsewhere_becomes_a_bundle_with_its_classes_and_bands(tmp_path) -> None:
    """A Lightning-style checkpoint ({"state_dict": {"model.<name>": tensor}}) of the same architecture, with
    class names/colours and band statistics given on the command line, as a user who trained elsewhere does."""
    import subprocess
    import sys

    from geoseg.models import build_model

    trained = build_model("unet", in_channels=3, num_classes=2, base_channels=4, depth=2)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    checkpoint = tmp_path / "epoch=9.ckpt"
    torch.save({"epoch": 9, "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, checkpoint)
    args = [sys.executable, "-m", "geoseg", "bundle", "init", "--arch", "unet", "--in-channels", "3"]
    args += ["--num-classes", "2", "--base-channels", "4", "--depth", "2", "--weights", str(checkpoint)]
    args += ["--class", "water=#0000ff", "--class", "land", "--band", "B04:812.5:410", "--band", "B03:700:300"]
    args += ["--band", "B02:650:250", "--out", str(tmp_path / "b")]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    spec, model = load_bundle(tmp_path / "b")
    assert [(c.name, c.color) for c in spec.classes] == [("water", (0, 0, 255)), ("land", PALETTE[1])]
    assert [(b.name, b.index, b.mean, b.std) for b in spec.bands] == [
        ("B04", 1, 812.5, 410.0),
        ("B03", 2, 700.0, 300.0),
        ("B02", 3, 650.0, 250.0),
    ]
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # Another architecture's weights: one line, no bundle (a partial load would predict with random layers).
    wrong = subprocess.run([*args[:-1], str(tmp_path / "c"), "--depth", "3"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "the weights are not this architecture's" in wrong.stderr
    assert str(checkpoint) in wrong.stderr and not (tmp_path / "c").exists()
    bad_colour = subprocess.run([*args[:-1], str(tmp_path / "d"), "--class", "x=#12"], capture_output=True, text=True)
    assert bad_colour.returncode == 1 and "--class takes NAME or NAME=#RRGGBB" in bad_colour.stderr


def test_a_torchgeo_checkpoint_of_an_smp_unet_predicts_as_it_did_there(tmp_path) -> None:
    """TorchGeo's SemanticSegmentationTask saves ``model.*`` (an smp.Unet) beside ``criterion.*``: the model's
    part is found and loaded, and the bundle's model gives the smp model's logits."""
    from geoseg.models import build_model

    # smp's own Unet has this module's names and shapes (test_models.py checks it against a stored smp
    # reference), so its state dict stands for one here and the test runs without smp installed.
    torch.manual_seed(1)
    theirs = build_model("smp_unet", in_channels=3, num_classes=4, encoder="resnet18").eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {f"model.{k}": v for k, v in theirs.state_dict().items()} | {"criterion.weight": torch.ones(4)}
    checkpoint = tmp_path / "torchgeo.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state}, checkpoint)
    bundle = init_bundle(tmp_path / "b", "smp_unet", 3, 4, encoder="resnet18", weights=checkpoint)
    spec, model = load_bundle(bundle)
    assert spec.receptive_field == model.receptive_field() > 0 and spec.output_stride == 32
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), rtol=1e-4, atol=1e-4)
