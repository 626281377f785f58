"""Class-balanced sampling and stratified splits: pure functions of labels that return indices."""

from __future__ import annotations

import numpy as np

from kilotune.subset.files import count_of


def class_balanced_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random indices from every class, sorted.

    Raises:
        ValueError: if a class has fewer than ``per_class`` members.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if per_class > len(members):
            raise ValueError(f"{per_class=} is larger than class {cls}, which has {count_of(len(members), 'image')}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions 0..len(labels)-1 into (train, holdout) with ``fraction`` of each class held out.

    Each class keeps at least one training and, when ``fraction > 0``, one held-out item. The
    hold-out is fold 0 of ``stratified_fold``.
    """
    return stratified_fold(labels, fraction, seed, 0)


def fold_count(fraction: float) -> int:
    """How many disjoint hold-outs of ``fraction`` fit: 5 for 0.2 (each trains on 80%)."""
    return max(1, int(1 / fraction + 1e-9))


def stratified_fold(labels: np.ndarray, fraction: float, seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``fold`` of a stratified k-fold: (train, holdout) positions, ``fraction`` of each class held out.

    Every class is shuffled once by ``seed``; fold f holds out its f-th block of
    ``round(fraction * size)`` members. So folds 0..fold_count(fraction)-1 are disjoint, each is
    stratified, and for fraction 0.2 they cover every item once.

    Raises:
        ValueError: if the fraction is out of range, or a class is too small for that fold.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{fraction=} must be in [0, 1)")
    folds = fold_count(fraction) if fraction else 1
    if not 0 <= fold < folds:
        raise ValueError(f"{fold=} is out of range; {fraction=} allows folds 0 to {folds - 1}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_out = 0 if fraction == 0 else min(len(members) - 1, max(1, round(fraction * len(members))))
        if (fold + 1) * n_out > len(members):
            raise ValueError(f"class {cls} has {len(members)} items, too few for {fold=} of hold-outs of {fraction=}")
        out = np.zeros(len(members), dtype=bool)
        out[fold * n_out : (fold + 1) * n_out] = True
        holdout.append(members[out])
        train.append(members[~out])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))
