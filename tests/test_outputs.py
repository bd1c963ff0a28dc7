"""Inputs taken as written, output names unique and stable, inputs never written: the rules, case by case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from geoseg.errors import GeoSegError
from geoseg.inference.outputs import guard_inputs, input_paths, remove_stale_partials, scene_names, scene_outputs
from geoseg.io.sources import SceneSource, expand_inputs, read_list


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"raster")
    return path


def _names(*texts: str) -> list[str]:
    return scene_names(expand_inputs(list(texts)))


def test_existing_paths_are_literal_before_globs_and_virtual_paths_pass_unchanged(tmp_path) -> None:
    literal = _touch(tmp_path / "a[1].tif")
    _touch(tmp_path / "a1.tif")  # what the pattern a[1].tif would match
    assert [s.bands for s in expand_inputs([str(literal)])] == [(str(literal),)]
    url = "/vsicurl/https://example.org/scenes//x.tif?token=a+b"
    assert [s.bands for s in expand_inputs([url])] == [(url,)]  # no normalisation, no stack split
    assert [s.bands for s in expand_inputs(["s3://bucket/k/x.tif"])] == [("/vsis3/bucket/k/x.tif",)]
    assert [s.bands for s in expand_inputs([str(tmp_path / "a?.tif")])] == [(str(tmp_path / "a1.tif"),)]
    plus = _touch(tmp_path / "a+b.tif")  # an existing file with '+' in its name is that file, not a stack
    assert [s.bands for s in expand_inputs([str(plus)])] == [(str(plus),)]


def test_list_files_follow_csv_rules(tmp_path) -> None:
    comma = _touch(tmp_path / "with, comma.tif")
    listing = tmp_path / "lists" / "scenes.csv"
    listing.parent.mkdir()
    listing.write_text(f'path,note\n"{comma}",x\n# skipped\n\nrelative.tif,y\n"/vsis3/b/k.tif",z\n')
    assert read_list(listing) == [str(comma), str(listing.parent / "relative.tif"), "/vsis3/b/k.tif"]
    sources = expand_inputs([str(listing)])
    assert [s.text for s in sources] == [str(comma), str(listing.parent / "relative.tif"), "/vsis3/b/k.tif"]


def test_a_txt_list_is_one_path_per_line_in_any_editors_encoding(tmp_path) -> None:
    """A path holding a comma in a .txt list was cut at the comma and not found; a BOM and CRLF are an editor's."""
    comma = _touch(tmp_path / "with, comma.tif")
    listing = tmp_path / "scenes.txt"
    listing.write_bytes(f"\ufeff{comma}\r\n# a comment\r\n\r\n  relative, too.tif  \r\n".encode())
    assert read_list(listing) == [str(comma), str(tmp_path / "relative, too.tif")]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("sc\xe8ne.tif\n".encode("latin-1"))
    with pytest.raises(GeoSegError, match="not UTF-8 text"):
        read_list(latin)


def test_names_are_unique_case_insensitively_and_never_take_another_scenes_products(tmp_path) -> None:
    x, xp = _touch(tmp_path / "p" / "x.tif"), _touch(tmp_path / "p" / "x_probabilities.tif")
    names = _names(str(x), str(xp))
    assert names[0] != "x" and names[1] != "x_probabilities"  # x's probability raster would be x_probabilities.tif
    products = [p.name.casefold() for n in names for p in scene_outputs(tmp_path, n, "shp")]
    assert len(products) == len(set(products))
    upper, lower = _touch(tmp_path / "q" / "A.tif"), _touch(tmp_path / "r" / "a.tif")
    assert len({n.casefold() for n in _names(str(upper), str(lower))}) == 2  # same file on macOS/Windows otherwise


def test_stacks_with_equal_file_names_in_different_folders_get_different_names(tmp_path) -> None:
    stacks = ["+".join(str(_touch(tmp_path / folder / f"B0{k}.tif")) for k in (2, 3, 4)) for folder in ("a", "bb")]
    names = _names(*stacks)
    assert len(set(names)) == 2 and all(n.startswith("B0-") for n in names)
    assert _names(*reversed(stacks)) == list(reversed(names))  # independent of input order
    assert _names(*stacks) == names  # stable on every rerun


def test_names_stay_readable_when_nothing_clashes(tmp_path) -> None:
    files = [_touch(tmp_path / n) for n in ("lsat7_2000_10.tif", "lsat7_2000_20.tif")]
    stack = "+".join(map(str, files))
    evil = _touch(tmp_path / "..evil name.tif")
    assert _names(stack, str(evil), "/vsis3/bucket/k/scene.tif") == ["lsat7_2000", "evil_name", "scene"]


def test_a_job_that_would_write_over_an_input_is_refused_before_it_starts(tmp_path) -> None:
    folder = tmp_path / "d"
    scene = _touch(folder / "a.tif")
    plan = list(zip(expand_inputs([str(folder)]), ["a"], strict=True))
    with pytest.raises(GeoSegError, match=r"d/a\.tif: the job would write over the input .*a\.tif"):
        guard_inputs(folder, plan, None)  # --output d d: a.tif would be replaced by its class raster
    guard_inputs(tmp_path / "job", plan, None)  # elsewhere: fine
    other = _touch(folder / "b.tif")
    guard_inputs(folder, list(zip(expand_inputs([str(other)]), ["b-out"], strict=True)), None)  # no clash: allowed
    # A hard link or a symbolic link under an output name is the input too.
    os.link(scene, tmp_path / "linked.tif")
    (tmp_path / "symlinked.tif").symlink_to(scene)
    for alias in ("linked", "symlinked"):
        with pytest.raises(GeoSegError, match="would write over the input"):
            guard_inputs(tmp_path, list(zip(expand_inputs([str(scene)]), [alias], strict=True)), None)
    # The inputs a stack or an input VRT reads are guarded too.
    vrt = tmp_path / "v" / "scene.vrt"
    vrt.parent.mkdir()
    vrt.write_text('<VRTDataset><SourceFilename relativeToVRT="1">../d/a.tif</SourceFilename></VRTDataset>')
    source = SceneSource(str(vrt), (str(vrt),))
    assert Path(os.path.realpath(source.local_files()[1])) == scene.resolve()
    with pytest.raises(GeoSegError, match="would write over the input"):
        guard_inputs(folder, [(source, "a")], None)
    assert scene.read_bytes() == b"raster"


def test_only_the_jobs_own_temporary_files_are_removed(tmp_path) -> None:
    ours = _touch(tmp_path / ".a.tif.0123abcd.partial")
    theirs = _touch(tmp_path / ".notes.partial")  # not our pattern
    looks_like_ours = _touch(tmp_path / ".input.tif.89abcdef.partial")  # our pattern, but an input
    build = _touch(tmp_path / ".b.tif.4567cdef.partial" / "b.tif")  # a COG's build folder (publish_cog)
    holder = _touch(tmp_path / ".c.tif.fedc4567.partial" / "c.tif")  # our pattern, but it holds an input
    scratch = _touch(tmp_path / ".m.tif.0123abcd.partial.ovr.tmp")  # a COG build's overviews, killed beside it
    tiles = _touch(tmp_path / "tiles" / ".t.tif.0123abcd.partial")  # in a subfolder named by the command
    plan = list(zip(expand_inputs([str(looks_like_ours), str(holder)]), ["input", "c"], strict=True))
    remove_stale_partials(tmp_path, input_paths(plan))
    assert not ours.exists() and theirs.exists() and looks_like_ours.exists() and not scratch.exists()
    assert tiles.exists()  # not a folder this job writes
    remove_stale_partials(tmp_path, input_paths(plan), subfolders=("tiles",))
    assert not tiles.exists()
    assert not build.parent.exists() and holder.exists()


def test_every_product_name_of_a_large_archive_is_unique(tmp_path) -> None:
    rng = np.random.default_rng(0)
    texts = [
        f"/vsis3/b/{rng.choice(['x', 'X', 'x_probabilities', 'y'])}/{k % 7}/{rng.choice(['a', 'A', 'b'])}.tif"
        for k in range(300)
    ]
    sources = expand_inputs(texts)
    names = scene_names(sources)
    products = [p.name.casefold() for n in names for p in scene_outputs(tmp_path, n, "gpkg")]
    assert len(products) == len(set(products))
