"""The stratified estimator against Olofsson et al. (2014), section 5, and hand-made cases.

The paper's worked example: a change map of 10 000 000 pixels of 30 m in four strata (deforestation 200 000 px,
forest gain 150 000, stable forest 3 200 000, stable non-forest 6 450 000), sampled 75 / 75 / 165 / 325 (the
allocation its section 5.1 derives from eq. 13 with expected user's accuracies 0.7, 0.6, 0.9, 0.95 and a target
standard error of 0.01 for overall accuracy, n = 641), and the error matrix of its Table 8. The paper prints the
results rounded (accuracies to 2 decimals, areas to the hectare); every printed figure agrees with its own
equations at that precision, so the test checks both: the printed figures at their precision and the equations'
values to 1e-9 (computed here from the equations written out independently of geoseg's vectorised code).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.areas.estimator import Z95, Stratum, allocate, estimate, sample_size

PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
NAMES = {1: "deforestation", 2: "forest gain", 3: "stable forest", 4: "stable non-forest"}
TABLE8 = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])  # rows: map, columns: reference
PIXEL_M2 = 900.0

# Printed in the paper's section 5 (accuracies +- 95 % half-widths; areas in ha +- 95 % half-widths).
PRINTED_USERS = {1: (0.88, 0.07), 2: (0.73, 0.10), 3: (0.93, 0.04), 4: (0.96, 0.02)}
PRINTED_PRODUCERS = {1: (0.75, 0.21), 2: (0.85, 0.25), 3: (0.93, 0.03), 4: (0.96, 0.02)}
PRINTED_OVERALL = (0.95, 0.02)
PRINTED_AREA_HA = {1: (21_158, 6_158), 2: (11_686, 3_756), 3: (285_770, 15_510), 4: (581_386, 16_282)}


def paper_strata() -> list[Stratum]:
    return [Stratum(i + 1, NAMES[i + 1], p, p * PIXEL_M2) for i, p in enumerate(PIXELS)]


def by_hand(counts: np.ndarray, pixels: list[int]) -> dict[str, list[float]]:
    """The paper's equations, one term at a time (loops, no numpy algebra): the reference for geoseg's code."""
    k = len(pixels)
    total = sum(pixels)
    w = [p / total for p in pixels]
    n = [sum(counts[i]) for i in range(k)]
    p = [[w[i] * counts[i][j] / n[i] for j in range(k)] for i in range(k)]
    col = [sum(p[i][j] for i in range(k)) for j in range(k)]
    users = [p[i][i] / sum(p[i]) for i in range(k)]
    overall = sum(p[i][i] for i in range(k))
    v_overall = sum(w[i] ** 2 * users[i] * (1 - users[i]) / (n[i] - 1) for i in range(k))
    producers, v_producers, area, se_area = [], [], [], []
    for j in range(k):
        pj = p[j][j] / col[j]
        n_dot_j = sum(pixels[i] / n[i] * counts[i][j] for i in range(k))
        first = pixels[j] ** 2 * (1 - pj) ** 2 * users[j] * (1 - users[j]) / (n[j] - 1)
        second = pj**2 * sum(
            pixels[i] ** 2 * counts[i][j] / n[i] * (1 - counts[i][j] / n[i]) / (n[i] - 1) for i in range(k) if i != j
        )
        producers.append(pj)
        v_producers.append((first + second) / n_dot_j**2)
        var_p = sum(w[i] ** 2 * (counts[i][j] / n[i]) * (1 - counts[i][j] / n[i]) / (n[i] - 1) for i in range(k))
        area.append(col[j] * total * PIXEL_M2)
        se_area.append(math.sqrt(var_p) * total * PIXEL_M2)
    return {
        "users": users,
        "users_se": [math.sqrt(u * (1 - u) / (n[i] - 1)) for i, u in enumerate(users)],
        "producers": producers,
        "producers_se": [math.sqrt(v) for v in v_producers],
        "overall": [overall, math.sqrt(v_overall)],
        "area": area,
        "area_se": se_area,
    }


def test_the_papers_worked_example() -> None:
    result = estimate(paper_strata(), NAMES, TABLE8)
    hand = by_hand(TABLE8, PIXELS)
    assert result.overall_accuracy == pytest.approx(hand["overall"][0], rel=1e-9)
    assert result.overall_se == pytest.approx(hand["overall"][1], rel=1e-9)
    assert round(result.overall_accuracy, 2) == PRINTED_OVERALL[0]
    assert round(Z95 * result.overall_se, 2) == PRINTED_OVERALL[1]
    for k, c in enumerate(result.classes):
        assert c.users_accuracy == pytest.approx(hand["users"][k], rel=1e-9)
        assert c.users_se == pytest.approx(hand["users_se"][k], rel=1e-9)
        assert c.producers_accuracy == pytest.approx(hand["producers"][k], rel=1e-9)
        assert c.producers_se == pytest.approx(hand["producers_se"][k], rel=1e-9)
        assert c.area_m2 == pytest.approx(hand["area"][k], rel=1e-9)
        assert c.area_se_m2 == pytest.approx(hand["area_se"][k], rel=1e-9)
        assert (round(c.users_accuracy, 2), round(Z95 * c.users_se, 2)) == PRINTED_USERS[c.id]
        assert (round(c.producers_accuracy, 2), round(Z95 * c.producers_se, 2)) == PRINTED_PRODUCERS[c.id]
        assert (round(c.area_m2 / 1e4), round(Z95 * c.area_se_m2 / 1e4)) == PRINTED_AREA_HA[c.id]
        assert c.mapped_area_m2 == PIXELS[k] * PIXEL_M2
    # the proportions matrix (the paper's Table 9) sums to 1 and its columns are the area shares
    assert result.proportions.sum() == pytest.approx(1.0)
    assert result.proportions[0, 0] == pytest.approx(0.02 * 66 / 75)
    assert result.no_variance == []


def test_sample_size_of_the_papers_example_is_641() -> None:
    weights = np.array(PIXELS) / sum(PIXELS)
    assert sample_size(weights, [0.7, 0.6, 0.9, 0.95], 0.01, sum(PIXELS)) == 641
    # the finite-population term matters only for small maps: 100 pixels can give at most ~100 samples
    assert sample_size(weights, [0.7, 0.6, 0.9, 0.95], 0.01, 100) == math.ceil(
        0.253085**2 / (0.01**2 + float(np.sum(weights * np.array([0.21, 0.24, 0.09, 0.0475]))) / 100) - 1e-3
    )


def test_allocation() -> None:
    proportional = allocate(641, PIXELS, minimum=50)
    assert sum(proportional) == 641 and proportional[:2] == [50, 50]  # the rare strata raised to the floor
    assert proportional[2] / proportional[3] == pytest.approx(PIXELS[2] / PIXELS[3], rel=0.01)
    assert allocate(641, PIXELS, minimum=0) == [13, 10, 205, 413]  # plain proportional, largest remainder
    assert allocate(640, PIXELS, equal=True) == [160, 160, 160, 160]
    assert allocate(10, [3, 100], minimum=5) == [3, 7]  # a stratum smaller than its floor gives all it has
    assert allocate(100, [1000, 1000, 1000], minimum=50) == [50, 50, 50]  # floors above the total: the floors
    assert allocate(1000, [5, 7], minimum=0) == [5, 7]  # never more than a stratum has


def test_a_stratum_of_one_sample_has_no_variance_and_an_unfound_class_no_producers_accuracy() -> None:
    strata = [Stratum(1, "a", 100, 100.0), Stratum(2, "b", 300, 300.0)]
    classes = {1: "a", 2: "b", 3: "c"}  # c: a legend class that is no stratum
    counts = np.array([[1, 0, 0], [2, 10, 0], [0, 0, 0]])
    result = estimate(strata, classes, counts)
    assert result.no_variance == [1]
    a, b, c = result.classes
    assert a.users_accuracy == 1.0 and a.users_se is None  # one sample: no variance, never 0
    assert result.overall_se is None and a.area_se_m2 is None and b.area_se_m2 is None
    assert b.users_se == pytest.approx(math.sqrt(10 / 12 * 2 / 12 / 11))
    assert c.producers_accuracy is None and c.area_m2 == 0.0 and c.mapped_area_m2 == 0.0 and c.users_accuracy is None
    # the areas are still estimated: a's reference area is its own stratum plus what b's samples say
    assert a.area_m2 == pytest.approx(100 + 300 * 2 / 12)
    assert a.area_m2 + b.area_m2 + c.area_m2 == pytest.approx(400.0)
