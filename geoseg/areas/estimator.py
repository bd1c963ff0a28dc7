"""The stratified estimator of accuracy and area (Olofsson et al. 2014, Remote Sensing of Environment 148: 42-57).

A map's pixel counts are biased by its errors; a probability sample of the map with reference labels corrects
them. Under stratified random sampling with the map classes as strata (the paper's recommended design), with
``W_i`` the share of the mapped area in stratum ``i``, ``n_i`` its sample size and ``n_ij`` the samples mapped
``i`` whose reference class is ``j``:

* eq. 4, the error matrix in estimated area proportions: ``p_ij = W_i n_ij / n_i``;
* eq. 1-3, overall ``O = sum_j p_jj``, user's ``U_i = p_ii / p_i.`` and producer's ``P_j = p_jj / p_.j`` accuracy;
* eq. 5-7, their variances: ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i - 1)``, ``V(U_i) = U_i (1 - U_i) / (n_i - 1)``
  and, with ``N_i`` the stratum's size and ``N_.j = sum_i N_i n_ij / n_i`` the estimated size of reference
  class ``j``, ``V(P_j) = [N_j^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j - 1)
  + P_j^2 sum_{i != j} N_i^2 (n_ij / n_i)(1 - n_ij / n_i) / (n_i - 1)] / N_.j^2``;
* eq. 9-12, the area of reference class ``k``: ``A_k = A p_.k`` with standard error
  ``A sqrt(sum_i W_i^2 (n_ik / n_i)(1 - n_ik / n_i) / (n_i - 1))``;
* eq. 13, the sample size for a target standard error ``S(O)`` of overall accuracy, with ``S_i = sqrt(U_i (1 - U_i))``
  from expected user's accuracies: ``n = (sum_i W_i S_i)^2 / (S(O)^2 + sum_i W_i S_i^2 / N)``.

95 % intervals are ``estimate +- 1.96 SE``. A stratum with fewer than two samples has no variance estimate: every
standard error it enters is None (never 0, which would claim certainty), and the caller says so. Strata are
weighted by *area* (``W_i = A_i / A``): on a projected grid that is the pixel share; on a geographic grid each
pixel's own area is counted. Pure numpy: no I/O, so the paper's worked example is tested on it directly and
through the command line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.96  # the paper's multiplier for 95 % intervals (its printed half-widths use 1.96, not 1.95996)


@dataclass(frozen=True)
class Stratum:
    """One stratum of the design: a map class (or a change map's transition) and its mapped extent."""

    id: int
    name: str
    pixels: int
    area_m2: float


@dataclass(frozen=True)
class ClassEstimate:
    """Accuracy and error-adjusted area of one class (``None``: not estimable; see the module docstring)."""

    id: int
    name: str
    n: int  # samples mapped as this class (its stratum's labelled sample)
    reference_n: int  # samples whose reference label is this class
    users_accuracy: float | None
    users_se: float | None
    producers_accuracy: float | None
    producers_se: float | None
    mapped_area_m2: float
    area_m2: float
    area_se_m2: float | None

    @staticmethod
    def ci95(se: float | None) -> float | None:
        return None if se is None else Z95 * se


@dataclass(frozen=True)
class Estimate:
    """The whole assessment: overall accuracy, per-class estimates and both error matrices."""

    class_ids: list[int]  # rows (map) and columns (reference) of the matrices
    counts: np.ndarray  # n_ij
    proportions: np.ndarray  # p_ij (eq. 4)
    overall_accuracy: float
    overall_se: float | None
    classes: list[ClassEstimate]
    total_area_m2: float
    no_variance: list[int]  # strata with fewer than two samples


def estimate(strata: Sequence[Stratum], classes: Mapping[int, str], counts: np.ndarray) -> Estimate:
    """The stratified estimator over ``counts[i, j]`` (map class ``class_ids[i]``, reference ``class_ids[j]``).

    ``classes``: every class id a reference label may take, with its name; the matrix's rows and columns are
    these ids in order. Every stratum must be one of them and have samples (checked by the caller, which knows
    the file to name); classes that are not strata have a mapped area of 0.
    """
    ids = list(classes)
    k = len(ids)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (k, k):
        raise ValueError(f"counts must be {k}x{k}, got {counts.shape}")
    index = {c: i for i, c in enumerate(ids)}
    area = np.zeros(k)
    for s in strata:
        area[index[s.id]] = s.area_m2
    total = float(area.sum())
    weights = area / total
    n = counts.sum(axis=1)
    if np.any((area > 0) & (n == 0)):
        raise ValueError("every stratum needs samples")
    share = np.divide(counts, n[:, None], out=np.zeros_like(counts), where=n[:, None] > 0)  # n_ij / n_i
    proportions = weights[:, None] * share  # eq. 4
    stratum = area > 0  # a class of no mapped area weighs nothing, whatever its samples
    known = n >= 2  # strata with a variance estimate
    no_variance = [ids[i] for i in range(k) if stratum[i] and not known[i]]
    denominator = np.where(known, n - 1, 1.0)

    def variance_sum(terms: np.ndarray, rows: np.ndarray) -> float | None:
        """Sum over the strata in ``rows`` of their variance terms; None when one of them has no variance."""
        rows = rows & stratum
        if np.any(rows & ~known):
            return None
        return float(np.sum(np.where(rows, terms, 0.0)))

    users = np.diag(share)  # eq. 2: U_i = p_ii / p_i. = n_ii / n_i
    overall = float(np.trace(proportions))  # eq. 1
    overall_var = variance_sum(weights**2 * users * (1 - users) / denominator, np.ones(k, bool))  # eq. 5
    column = proportions.sum(axis=0)  # p_.j (eq. 9)
    # Eq. 7's population sizes N_i: stratum areas (proportional to pixel counts on a projected grid, and the
    # formula is invariant to their scale); N_.j = sum_i N_i n_ij / n_i.
    size_by_column = (area[:, None] * share).sum(axis=0)
    results = []
    for j, cid in enumerate(ids):
        users_var = float(users[j] * (1 - users[j]) / (n[j] - 1)) if stratum[j] and known[j] else None  # eq. 6
        producers = float(proportions[j, j] / column[j]) if column[j] > 0 else None  # eq. 3
        producers_var: float | None = None
        if producers is not None:
            own = variance_sum(area**2 * (1 - producers) ** 2 * users * (1 - users) / denominator, np.arange(k) == j)
            rest = variance_sum(area**2 * share[:, j] * (1 - share[:, j]) / denominator, np.arange(k) != j)
            if own is not None and rest is not None:
                producers_var = (own + producers**2 * rest) / float(size_by_column[j]) ** 2  # eq. 7
        area_var = variance_sum(weights**2 * share[:, j] * (1 - share[:, j]) / denominator, np.ones(k, bool))
        results.append(
            ClassEstimate(
                id=cid,
                name=classes[cid],
                n=int(n[j]),
                reference_n=int(counts[:, j].sum()),
                users_accuracy=float(users[j]) if n[j] > 0 else None,
                users_se=_sqrt(users_var),
                producers_accuracy=producers,
                producers_se=_sqrt(producers_var),
                mapped_area_m2=float(area[j]),
                area_m2=float(total * column[j]),  # eq. 11
                area_se_m2=None if area_var is None else total * math.sqrt(area_var),  # eq. 10, 12
            )
        )
    return Estimate(
        class_ids=ids,
        counts=counts.astype(np.int64),
        proportions=proportions,
        overall_accuracy=overall,
        overall_se=_sqrt(overall_var),
        classes=results,
        total_area_m2=total,
        no_variance=no_variance,
    )


def _sqrt(value: float | None) -> float | None:
    return None if value is None else math.sqrt(max(value, 0.0))


def sample_size(
    weights: Sequence[float] | np.ndarray, expected_users: Sequence[float], target_se: float, population: int
) -> int:
    """Eq. 13: the total sample size for a standard error ``target_se`` of overall accuracy, rounded up.

    ``weights``: each stratum's share of the map; ``expected_users``: its expected user's accuracy;
    ``population``: the number of sampling units (pixels), for the finite-population term.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.sqrt(np.asarray(expected_users, dtype=np.float64) * (1 - np.asarray(expected_users, dtype=np.float64)))
    n = float(np.sum(w * s)) ** 2 / (target_se**2 + float(np.sum(w * s**2)) / population)
    return max(1, math.ceil(n - 1e-9))


def allocate(total: int, sizes: Sequence[int], minimum: int = 0, equal: bool = False) -> list[int]:
    """Samples per stratum: ``total`` split in proportion to ``sizes`` (or equally), each stratum given at
    least ``minimum`` (Olofsson et al. recommend 50-100 for rare classes) and never more than its size.

    A stratum whose share falls below its floor is pinned to the floor (above its size, to its size) and the
    rest is shared again among the others, so the total stays ``total`` unless the floors alone exceed it
    (then each stratum gets its floor). Rounding is by largest remainder, ties to the earlier stratum: the
    result is exact and deterministic.
    """
    size = np.asarray(sizes, dtype=np.int64)
    k = len(size)
    total = int(min(total, size.sum()))
    floors = np.minimum(minimum, size)
    if floors.sum() >= total:
        return [int(v) for v in floors]
    weight = np.ones(k) if equal else size.astype(np.float64)
    pinned = np.full(k, -1, dtype=np.int64)
    while True:
        free = np.flatnonzero(pinned < 0)
        left = total - int(pinned[pinned >= 0].sum())
        ideal = weight[free] / weight[free].sum() * left if len(free) else np.zeros(0)
        low, high = ideal < floors[free], ideal > size[free]
        if not (low.any() or high.any()):
            break
        pinned[free[low]] = floors[free[low]]
        pinned[free[high]] = size[free[high]]
    counts = pinned.copy()
    whole = np.floor(ideal).astype(np.int64)
    counts[free] = whole
    order = sorted(range(len(free)), key=lambda i: (-(ideal[i] - whole[i]), int(free[i])))
    for i in order[: left - int(whole.sum())]:
        counts[free[i]] += 1
    return [int(v) for v in counts]
