"""Config validation: unknown keys and bad values name the key; --set overrides; YAML only, safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.errors import GeoSegError
from geoseg.inference.jobfile import load_predict_config
from geoseg.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_validate() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.stem.startswith("predict"):  # job files for `geoseg predict --config`
            job = load_predict_config(path)
            assert job.model and job.input and job.output, path
        else:
            cfg = load_config(path)
            assert cfg.classes and cfg.data.scenes, path


def test_predict_job_file_and_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line wins over the job file; the file fills in what the command line leaves out."""
    from click.testing import CliRunner

    from geoseg import cli

    seen = {}
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: m\ninput: [a.tif, b.tif]\noutput: out\ntile: 128\npad: nodata\nvectorize: fgb\ncompile: true\n"
        "stac_filter: [max-cloud=20]\n"
    )

    def fake_predict_archive(
        bundle, inputs, out, options, workers, address, console, compile, in_process, stac_filter, stac_items
    ):
        seen.update(
            stac_filter=stac_filter,
            bundle=bundle,
            inputs=inputs,
            out=out,
            options=options,
            workers=workers,
            compile=compile,
            in_process=in_process,
            stac_items=stac_items,
        )
        return []

    monkeypatch.setattr("geoseg.inference.job.predict_archive", fake_predict_archive)
    result = CliRunner().invoke(cli.cli, ["predict", "--config", str(job), "--tile", "96", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert seen["bundle"] == Path("m") and seen["inputs"] == ["a.tif", "b.tif"] and seen["out"] == Path("out")
    assert seen["options"].tile == 96 and seen["options"].pad_mode == "nodata"
    assert seen["options"].vector_format == "fgb" and seen["workers"] == 3 and seen["compile"] is True
    assert seen["stac_filter"].max_cloud == 20 and seen["stac_filter"].ids is None  # from the job file
    # what the job file turns on, the command line turns off; scenes on the command line replace the file's,
    # whether given positionally or with --input (positional ones were added to the file's, --input replaced them)
    job.write_text(job.read_text() + "probabilities: true\nstac_items: true\n")
    for scenes in (["c.tif"], ["--input", "c.tif"]):
        off = ["--no-probabilities", "--no-vectorize", "--no-compile", "--no-stac-items"]
        result = CliRunner().invoke(cli.cli, ["predict", "--config", str(job), *off, *scenes])
        assert result.exit_code == 0, result.output
        assert seen["inputs"] == ["c.tif"] and seen["compile"] is False and seen["stac_items"] is False
        assert seen["options"].probabilities is False and seen["options"].vectors is None
    result = CliRunner().invoke(cli.cli, ["predict", "--config", str(job), "--input", "c.tif", "d.tif"])
    assert seen["inputs"] == ["c.tif", "d.tif"] and seen["options"].probabilities is True
    assert seen["options"].vector_format == "fgb"
    # a file name where a job folder goes was made into a folder of that name without a word
    result = CliRunner().invoke(cli.cli, ["predict", "--config", str(job), "--output", str(tmp_path / "classes.tif")])
    assert result.exit_code != 0 and "predict writes a job folder" in str(result.exception)
    assert not (tmp_path / "classes.tif").exists()


def test_set_overrides_nested_keys_with_yaml_values() -> None:
    cfg = load_config(
        REPO / "configs" / "synthetic.yaml",
        ["optim.epochs=3", "model.kwargs={base_channels: 8, depth: 2}", "scaling.use_gpu=true"],
    )
    assert cfg.optim.epochs == 3 and cfg.model.kwargs == {"base_channels": 8, "depth": 2}
    assert cfg.scaling.use_gpu is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochz=3", "config key optim.epochz: Extra inputs are not permitted"),
        ("optim.lr=-1", "config key optim.lr: Input should be greater than 0"),
        ("model.arch=evil.module", "config key model.arch"),
        ("name=../../escape", "config key name"),
        ("optim=3", "config key optim"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message) -> None:
    with pytest.raises(GeoSegError, match=message.replace(".", r"\.")):
        load_config(REPO / "configs" / "synthetic.yaml", [override])


def test_yaml_keys_given_twice_are_refused_and_editors_encodings_read(tmp_path) -> None:
    """YAML keeps the last of two equal keys without a word: a job file with two `tile:` lines ran with the
    second. Windows editors write a BOM and CRLF; those are read (issue 23)."""
    from geoseg.inference.jobfile import load_predict_config

    twice = tmp_path / "twice.yaml"
    twice.write_text("model: m\ntile: 256\noutput: out\ntile: 512\n")
    with pytest.raises(GeoSegError, match=r"twice.yaml: key 'tile' is given twice \(again at line 4\)"):
        load_predict_config(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text((REPO / "configs" / "synthetic.yaml").read_text() + "\noptim:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(GeoSegError, match="is given twice"):
        load_config(nested)
    windows = tmp_path / "windows.yaml"
    windows.write_bytes("\ufeffmodel: m\r\ntile: 256\r\noutput: out\r\n".encode())
    assert load_predict_config(windows).tile == 256


def test_bad_yaml_and_python_tags(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(GeoSegError, match=r"bad.yaml: invalid YAML at line"):
        load_config(bad)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(GeoSegError, match="invalid YAML"):
        load_config(tagged)
    with pytest.raises(GeoSegError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("labels/{name}_labels.tif", r"holds the placeholder \{name\}; the one placeholder is \{stem\}"),
        ("labels/{0}.tif", r"holds the placeholder \{0\}"),
        ("labels/{stem.tif", r"is not a valid pattern"),
        ("labels/{stem}}.tif", r"is not a valid pattern"),
    ],
)
def test_label_placeholders_are_checked_where_the_config_is_read(labels, message) -> None:
    """Only ``{stem}`` is replaced; any other brace failed per scene with a KeyError traceback mid-run (issue 23)."""
    with pytest.raises(GeoSegError, match=r"config key data\.scenes\.0\.labels: .*" + message):
        load_config(REPO / "configs" / "synthetic.yaml", [f"data.scenes=[{{image: a.tif, labels: '{labels}'}}]"])
    ok = load_config(REPO / "configs" / "synthetic.yaml", ["data.scenes=[{image: a.tif, labels: 'l/{stem}_x.tif'}]"])
    assert ok.data.scenes[0].labels == "l/{stem}_x.tif"
