"""The seam merge core: ragged polygons, edge cancellation, pinches across seams (see geoseg/dissolve.py)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from bad_inputs import write_geotiff
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio import features
from shapely.geometry import box, shape

from geoseg.vector.dissolve import RaggedPolygons, ranges
from geoseg.vector.polygonize import polygonize


def test_ranges_is_a_concatenation_of_aranges() -> None:
    starts, stops = np.array([3, 0, 7, 7]), np.array([5, 4, 7, 9])
    expected = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
    np.testing.assert_array_equal(ranges(starts, stops), expected)


def test_ragged_polygons_round_trip_take_and_concat() -> None:
    donut = box(0, 0, 6, 6).difference(box(2, 2, 4, 4))
    geoms = np.array([box(0, 0, 1, 2), donut, box(10, 10, 13, 11)], dtype=object)
    ragged = RaggedPolygons.from_geoms(geoms)
    assert len(ragged) == 3 and ragged.coords.dtype == np.int32
    assert shapely.equals(ragged.to_geoms(), geoms).all()
    assert shapely.equals(ragged.take(np.array([2, 1])).to_geoms(), geoms[[2, 1]]).all()
    both = RaggedPolygons.concat([ragged.take(np.array([1])), ragged.take(np.array([0, 2]))])
    assert shapely.equals(both.to_geoms(), geoms[[1, 0, 2]]).all()
    np.testing.assert_array_equal(ragged.vertex_counts(), [5, 10, 5])


TRANSFORM = rasterio.Affine(1, 0, 100, 0, -1, 100)


CASES = {
    # A ring of class 1 cut by both seams into four pieces: one polygon with one hole.
    "ring": np.pad(np.pad(np.zeros((2, 2), np.uint8), 2, constant_values=1), 1),
    # Class 1 touches itself diagonally exactly at a seam corner (4-connectivity keeps the pieces apart there).
    "pinch_at_seam_corner": np.array(
        [[1, 1, 1, 1, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 0], [1, 1, 1, 0, 1], [0, 0, 0, 1, 1]], np.uint8
    ),
    # A region whose hole is pinched off by a diagonal touch on a seam: hole and shell touch at one point.
    "hole_pinched_on_seam": np.array(
        [[1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1], [1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]],
        np.uint8,
    ),
    # A comb: one region whose exterior crosses a seam many times.
    "comb": np.array([[1] * 9, [1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0, 1, 0, 1]], np.uint8),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_handmade_seam_cases_equal_whole_raster_polygons(tmp_path, name: str, chunk: int) -> None:
    data = CASES[name]
    path = tmp_path / "m.tif"
    write_geotiff(path, data[None], transform=TRANSFORM)
    whole = [(int(v), shape(g)) for g, v in features.shapes(data, connectivity=4, transform=TRANSFORM)]
    result = polygonize(str(path), chunk=chunk)
    assert len(result.geometries) == len(whole)
    assert shapely.is_valid(result.geometries).all()
    unmatched = list(range(len(whole)))
    for geom, value in zip(result.geometries, result.class_ids.tolist(), strict=True):
        match = next(i for i in unmatched if whole[i][0] == value and shapely.equals(whole[i][1], geom))
        unmatched.remove(match)
    assert not unmatched


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=120))
def test_union_find_gives_each_group_its_smallest_member(n: int, pairs: list[tuple[int, int]]) -> None:
    from geoseg.vector.polygonize import union_find

    pairs = [(x % n, y % n) for x, y in pairs]
    a = np.array([x for x, _ in pairs], dtype=np.int64)
    b = np.array([y for _, y in pairs], dtype=np.int64)
    # Reference: flood fill over the adjacency lists.
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for x, y in pairs:
        neighbours[x].add(y)
        neighbours[y].add(x)
    expected = np.arange(n)
    for start in range(n):
        if expected[start] != start:
            continue
        stack, seen = [start], {start}
        while stack:
            for nxt in neighbours[stack.pop()] - seen:
                seen.add(nxt)
                stack.append(nxt)
        for member in seen:
            expected[member] = min(seen)
    np.testing.assert_array_equal(union_find(n, a, b), expected)
