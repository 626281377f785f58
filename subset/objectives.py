"""What a subset achieves, per class and in total: sum, minimum and mean-nearest cosine distances,
and upper bounds on the sum of distances a subset of that size can reach (how close max-sum
came to its optimum: docs/subset.md). Pure functions of features, labels and indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kilotune.subset.selection import check_inputs, cosine_distances


def sum_upper_bound(d: np.ndarray, k: int, chosen: np.ndarray | None = None) -> float:
    """An upper bound on the largest sum of pairwise distances of any ``k`` points of ``d``.

    The smaller of :func:`row_bound` and :func:`projection_bound` along the class mean and,
    when given, along the sum of ``chosen`` (any subset gives a valid bound; a good one a
    nearly tight bound).
    """
    bounds = [row_bound(d, k), projection_bound(d, k, np.arange(len(d)))]
    if chosen is not None:
        bounds.append(projection_bound(d, k, chosen))
    return min(bounds)


def row_bound(d: np.ndarray, k: int) -> float:
    """Each chosen point contributes at most the sum ``s_i`` of its ``k - 1`` largest distances
    and every pair is counted from both ends, so ``max <= 1/2 * (sum of the k largest s_i)``."""
    if k < 2:
        return 0.0
    n = len(d)
    # The zero diagonal never displaces a positive off-diagonal entry from a row's top k-1.
    s = np.partition(d, n - (k - 1), axis=1)[:, n - (k - 1) :].sum(axis=1, dtype=np.float64)
    return float(np.partition(s, n - k)[n - k :].sum() / 2)


def projection_bound(d: np.ndarray, k: int, direction: np.ndarray) -> float:
    """Bound from projecting onto the direction of the sum of the points ``direction``.

    ``G = 1 - d`` (unit diagonal) is the Gram matrix of unit vectors ``h_i`` (PSD: the
    feature Gram matrix plus a non-negative diagonal), and the sum of distances within a set
    S is ``(k^2 - |sum_S h|^2) / 2``. For a unit ``u``, ``|sum_S h| >= sum_S u.h_i >= m``, the
    sum of the ``k`` smallest ``u.h_i``, so ``max <= (k^2 - max(m, 0)^2) / 2``.
    """
    if k < 2:
        return 0.0
    direction = np.asarray(direction)
    # G a for the indicator a of ``direction``; then u.h_i = (G a)_i / sqrt(a.G a).
    ga = len(direction) - d[:, direction].sum(axis=1, dtype=np.float64)
    norm2 = ga[direction].sum()
    m = max(0.0, float(np.partition(ga, k - 1)[:k].sum() / np.sqrt(norm2))) if norm2 > 0 else 0.0
    return (k * k - m * m) / 2


def class_objectives(d: np.ndarray, chosen: np.ndarray, *, upper_bound: bool = False) -> dict[str, float | None]:
    """Objectives of ``chosen`` positions within one class's distance matrix ``d``.

    Returns:
        ``n`` (class size), ``k`` (chosen), ``sum_distance`` (pairs counted once),
        ``min_distance`` (None below 2 picks), ``mean_nearest`` (mean distance of the unchosen to their nearest chosen; 0 if none
        is left) and, with ``upper_bound``, ``sum_upper_bound`` (:func:`sum_upper_bound` with
        ``chosen``'s direction), ``sum_gap`` relative to it and ``sum_row_bound``.
    """
    k = len(chosen)
    sub = d[np.ix_(chosen, chosen)]
    unchosen = np.setdiff1d(np.arange(len(d)), chosen)
    out: dict[str, float | None] = {
        "n": int(len(d)),
        "k": int(k),
        "sum_distance": float(sub.sum(dtype=np.float64) / 2),
        "min_distance": float(sub[~np.eye(k, dtype=bool)].min()) if k > 1 else None,
        "mean_nearest": float(d[np.ix_(unchosen, chosen)].min(axis=1).mean()) if len(unchosen) else 0.0,
    }
    if upper_bound:
        row = row_bound(d, k)
        ub = min(row, projection_bound(d, k, np.arange(len(d))), projection_bound(d, k, chosen))  # = sum_upper_bound
        ub = max(ub, out["sum_distance"])  # The bound can be tight; only rounding puts it below.
        out["sum_row_bound"] = row
        out["sum_upper_bound"] = ub
        out["sum_gap"] = (ub - out["sum_distance"]) / ub if ub > 0 else 0.0
    return out


def objectives(features: np.ndarray, labels: np.ndarray, indices: np.ndarray, *, upper_bound: bool = False) -> dict[str, Any]:
    """Per-class and total objectives of a subset given as indices into ``features``.

    Totals: ``sum_distance`` and ``sum_upper_bound`` add over classes, ``min_distance`` is the
    smallest over classes, ``mean_nearest`` is the mean over all unchosen images, and
    ``sum_gap = (sum_upper_bound - sum_distance) / sum_upper_bound``.
    """
    features, labels = check_inputs(features, labels, 1)
    indices = np.asarray(indices)
    per_class: dict[str, dict] = {}
    for cls in np.unique(labels[indices]):
        members = np.flatnonzero(labels == cls)
        chosen = np.flatnonzero(np.isin(members, indices))
        per_class[str(cls)] = class_objectives(cosine_distances(features[members]), chosen, upper_bound=upper_bound)
    rows = list(per_class.values())
    mins = [r["min_distance"] for r in rows if r["min_distance"] is not None]
    unchosen = [r["n"] - r["k"] for r in rows]
    total: dict[str, Any] = {
        "sum_distance": sum(r["sum_distance"] for r in rows),
        "min_distance": min(mins) if mins else None,
        "mean_nearest": float(np.dot([r["mean_nearest"] for r in rows], unchosen) / max(1, sum(unchosen))),
    }
    if upper_bound:
        total["sum_row_bound"] = sum(r["sum_row_bound"] for r in rows)
        total["sum_upper_bound"] = sum(r["sum_upper_bound"] for r in rows)
        total["sum_gap"] = (total["sum_upper_bound"] - total["sum_distance"]) / total["sum_upper_bound"] if total["sum_upper_bound"] > 0 else 0.0
    return {"total": total, "per_class": per_class}
