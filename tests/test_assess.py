"""``geoseg assess``: the paper's worked example end to end, unbiasedness in simulation, and bad sheets."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from affine import Affine
from class_maps import write_class_map
from test_cli import _one_line_error, run
from test_estimator import NAMES, PIXELS, PRINTED_AREA_HA, PRINTED_OVERALL, PRINTED_PRODUCERS, PRINTED_USERS, TABLE8

from geoseg.areas.estimator import Z95, Stratum, estimate
from geoseg.areas.maps import opened
from geoseg.areas.sample import SampleDesign, draw


def label(sheet: Path, reference: dict[int, int] | list[int | None]) -> None:
    """Fill in ``reference_class`` as an interpreter would (by sample id), rewriting only the samples layer."""
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    values = [reference.get(int(i)) for i in frame["id"]] if isinstance(reference, dict) else reference
    frame["reference_class"] = np.array(values, dtype=object)
    pyogrio.write_dataframe(frame, sheet, layer="samples", driver="GPKG")


def paper_map(path: Path) -> Path:
    """The paper's map at 1/100 of its pixels, each pixel 100x the area (300 m): the same areas in hectares."""
    flat = np.repeat([1, 2, 3, 4], [p // 100 for p in PIXELS]).astype(np.uint8)
    return write_class_map(path, flat.reshape(250, 400), NAMES, transform=Affine(300, 0, 600_000, 0, -300, 4e6))


def test_the_papers_worked_example_through_the_command_line(tmp_path: Path) -> None:
    """Olofsson et al. (2014) section 5: a map with its strata's areas, the sample its section 5.1 allocates,
    labelled as its Table 8 says, gives the accuracies and areas the paper prints."""
    cmap = paper_map(tmp_path / "map.tif")
    sheet = tmp_path / "sheet.gpkg"
    result = run("sample", str(cmap), "--output", str(sheet), "--per-class", "1=75", "2=75", "3=165", "4=325")
    assert result.returncode == 0, result.stderr
    samples = pyogrio.read_dataframe(sheet, layer="samples").sort_values("id")
    reference: dict[int, int] = {}
    for row, stratum in enumerate(NAMES):
        ids = samples.loc[samples["map_class"] == stratum, "id"].tolist()
        labels = np.repeat([1, 2, 3, 4], TABLE8[row])
        assert len(ids) == len(labels)
        reference.update(zip(ids, labels.tolist(), strict=True))
    label(sheet, reference)
    out = tmp_path / "assessment.json"
    result = run("assess", str(sheet), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["error_matrix"]["counts"] == TABLE8.tolist()
    assert (round(report["overall_accuracy"], 2), round(report["overall_ci95"], 2)) == PRINTED_OVERALL
    expected = estimate(
        [Stratum(i + 1, NAMES[i + 1], p // 100, p * 900.0) for i, p in enumerate(PIXELS)], NAMES, TABLE8
    )
    for c in expected.classes:
        row = report["classes"][str(c.id)]
        assert (round(row["users_accuracy"], 2), round(row["users_ci95"], 2)) == PRINTED_USERS[c.id]
        assert (round(row["producers_accuracy"], 2), round(row["producers_ci95"], 2)) == PRINTED_PRODUCERS[c.id]
        assert (round(row["area_m2"] / 1e4), round(row["area_ci95_m2"] / 1e4)) == PRINTED_AREA_HA[c.id]
        assert row["area_m2"] == pytest.approx(c.area_m2, rel=1e-9)
        assert row["area_ci95_m2"] == pytest.approx(Z95 * c.area_se_m2, rel=1e-9)
        assert row["mapped_area_m2"] == pytest.approx(PIXELS[c.id - 1] * 900.0)
        assert row["n"] == TABLE8[c.id - 1].sum()
    csv = (tmp_path / "assessment_matrices.csv").read_text().splitlines()
    assert csv[1] == "deforestation,66,0,5,4,75" and csv[5] == "total,69,56,175,340,640"
    assert "deforestation" in result.stdout and "0.880" in result.stdout  # the console table


def test_area_estimates_are_unbiased_and_their_intervals_cover_the_truth(tmp_path: Path) -> None:
    """A map with known truth, 500 seeded samples drawn by geoseg's sampler: the mean estimated area of each
    class is within one standard error of its true area, and the 95 % intervals cover it 93-97 % of the time.

    The interval is the normal approximation the paper uses, so the design keeps each stratum's expected count
    of every error type at 10 or more (error rates 10-20 %, 150 samples a stratum). With only ~3 expected errors
    in a stratum (a 2 % omission into a large stratum) the same intervals covered 91-92 %: that is the
    approximation, not a bias, and the mean estimates stayed unbiased.
    """
    rng = np.random.default_rng(42)
    truth = np.repeat(np.arange(3, dtype=np.uint8), [20_000, 12_000, 8_000])
    truth = rng.permutation(truth).reshape(200, 200)
    mapped = truth.copy()
    errors = rng.random(truth.shape)
    mapped[(truth == 0) & (errors < 0.10)] = 1
    mapped[(truth == 1) & (errors < 0.15)] = 2
    mapped[(truth == 2) & (errors < 0.20)] = 0
    names = {0: "a", 1: "b", 2: "c"}
    path = write_class_map(tmp_path / "map.tif", mapped, names, block=256)
    true_area = np.bincount(truth.ravel(), minlength=3) * 900.0
    estimates, covered, ses = [], [], []
    design = SampleDesign(per_class={0: 150, 1: 150, 2: 150}, allocation="explicit")
    with opened(path) as cmap:
        for seed in range(500):
            drawn = draw(cmap, SampleDesign(**{**design.__dict__, "seed": seed}))
            counts = np.zeros((3, 3), dtype=np.int64)
            np.add.at(counts, (drawn.classes, truth[drawn.rows, drawn.cols]), 1)
            result = estimate(drawn.strata, names, counts)
            area = np.array([c.area_m2 for c in result.classes])
            se = np.array([c.area_se_m2 for c in result.classes])
            estimates.append(area)
            ses.append(se)
            covered.append(np.abs(area - true_area) <= Z95 * se)
    estimates_a, ses_a, coverage = np.array(estimates), np.array(ses), np.mean(covered, axis=0)
    mean = estimates_a.mean(axis=0)
    assert np.all(np.abs(mean - true_area) <= ses_a.mean(axis=0)), (mean, true_area)
    # and tighter: within 3 standard errors of the mean of 500 estimates (a bias test, not just a loose bound)
    assert np.all(np.abs(mean - true_area) <= 3 * estimates_a.std(axis=0) / np.sqrt(500)), (mean, true_area)
    assert np.all((coverage >= 0.93) & (coverage <= 0.97)), coverage
    # the map's own pixel counts are biased; the estimates' mean is far closer to the truth for every class
    mapped_area = np.bincount(mapped.ravel(), minlength=3) * 900.0
    assert np.all(np.abs(mean - true_area) < 0.2 * np.abs(mapped_area - true_area)), (mean, mapped_area, true_area)


def test_unlabelled_rows_are_skipped_and_counted_and_a_single_sample_stratum_has_null_variance(tmp_path: Path):
    cmap = write_class_map(tmp_path / "map.tif", np.repeat([[0], [1], [2]], 40, axis=1).repeat(20, axis=0), None)
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(cmap), "--output", str(sheet), "--per-class", "0=5", "1=5", "2=1").returncode == 0
    frame = pyogrio.read_dataframe(sheet, layer="samples").sort_values("id")
    labels = [int(c) if n % 4 else None for n, c in enumerate(frame["map_class"])]
    labels[int(np.flatnonzero(frame["map_class"].to_numpy() == 2)[0])] = 2
    label(sheet, labels)
    out = tmp_path / "a.json"
    result = run("assess", str(sheet), "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["samples_unlabelled"] == sum(v is None for v in labels) > 0
    assert report["samples_labelled"] == sum(v is not None for v in labels)
    assert report["classes"]["2"]["users_ci95"] is None and report["overall_ci95"] is None
    assert report["classes"]["2"]["area_ci95_m2"] is None  # null, never 0
    assert "warning: stratum 2" in result.stderr and "no variance" in result.stderr
    assert report["classes"]["0"]["mapped_area_m2"] == 20 * 40 * 900.0


def test_bad_sheets_are_one_line_and_never_written(tmp_path: Path) -> None:
    cmap = write_class_map(tmp_path / "map.tif", np.repeat([[0], [1]], 30, axis=1).repeat(30, axis=0), {0: "x", 1: "y"})
    sheet = tmp_path / "sheet.gpkg"
    assert run("sample", str(cmap), "--output", str(sheet), "--size", "20", "--min-per-class", "5").returncode == 0
    before = sheet.read_bytes()
    _one_line_error(run("assess", str(sheet)), str(sheet), "no labelled sample")
    frame = pyogrio.read_dataframe(sheet, layer="samples")
    only_x = [0 if c == 0 else None for c in frame["map_class"]]
    label(sheet, only_x)
    _one_line_error(run("assess", str(sheet)), str(sheet), "no labelled sample in the strata 1 (y)")
    label(sheet, [7] * len(frame))
    _one_line_error(run("assess", str(sheet)), str(sheet), "reference_class 7 is not one of the sheet's classes")
    labelled = sheet.read_bytes()
    # --out naming the sheet itself, or a file assess did not write, is refused before anything is read
    _one_line_error(run("assess", str(sheet), "--out", str(sheet)), str(sheet), "would write over the input")
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    _one_line_error(run("assess", str(sheet), "--out", str(other)), str(other), "did not write; refusing")
    assert other.read_text() == '{"mine": 1}' and sheet.read_bytes() == labelled and labelled != before
    no_strata = tmp_path / "no_strata.gpkg"
    no_strata.write_bytes(labelled)
    with sqlite3.connect(no_strata) as db:
        db.execute("DROP TABLE strata")
        db.execute("DELETE FROM gpkg_contents WHERE table_name = 'strata'")
    _one_line_error(run("assess", str(no_strata)), str(no_strata), "has no 'strata' table")
    not_a_sheet = tmp_path / "x.gpkg"
    not_a_sheet.write_text("not a geopackage")
    _one_line_error(run("assess", str(not_a_sheet)), str(not_a_sheet), "cannot read as a GeoPackage")
    _one_line_error(run("assess", str(tmp_path / "missing.gpkg")), "missing.gpkg", "no such sheet")
