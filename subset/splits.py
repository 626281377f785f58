"""Class-balanced sampling and stratified splits: pure functions of labels that return indices."""

from __future__ import annotations

import numpy as np


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
            raise ValueError(f"{per_class=} is larger than class {cls}, which has {len(members)} images")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits positions 0..len(labels)-1 into (train, holdout) with ``fraction`` of each class held out.

    Each class keeps at least one training and, when ``fraction > 0``, one held-out item.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{fraction=} must be in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_out = 0 if fraction == 0 else min(len(members) - 1, max(1, round(fraction * len(members))))
        holdout.append(members[:n_out])
        train.append(members[n_out:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))
