"""Training side of ``kilotune subset compare``: one fixed config, several subsets, several seeds.

Accuracy is measured on a fixed, class-balanced set of training images that belong to none of
the compared subsets, so every subset is judged on the same images and the test set stays
untouched for final reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import time
from typing import Any

import numpy as np

from kilotune.subset.datasets import ImageDataset
from kilotune.subset.files import count_of
from kilotune.subset.splits import class_balanced_sample
from kilotune.subset.subsetfile import check_dataset, SubsetFile
from kilotune.training.config import TrainConfig
from kilotune.training.train import TrainData, train

# Small enough for CPU: VGG-8 at half width (~1.2M parameters), 15 epochs of 1000 images.
COMPARE_CONFIG = TrainConfig(arch="vgg8", width=0.5, epochs=15, batch_size=64, learning_rate=0.05)
HOLDOUT_SEED = 0


def holdout_indices(labels: np.ndarray, exclude: np.ndarray, size: int, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """``size`` class-balanced indices of ``labels`` outside ``exclude``, sorted.

    Raises:
        ValueError: ``size`` is not a positive multiple of the number of classes, or a class
            has too few images left.
    """
    num_classes = len(np.unique(labels))
    if size <= 0 or size % num_classes:
        raise ValueError(f"holdout size must be a positive multiple of the {num_classes} classes, got {size=}")
    pool = np.setdiff1d(np.arange(len(labels)), exclude)
    return pool[class_balanced_sample(labels[pool], size // num_classes, seed)]


def compare_subsets(
    dataset: ImageDataset,
    subsets: Sequence[SubsetFile],
    config: TrainConfig,
    seeds: Sequence[int],
    holdout_size: int,
    *,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Trains ``config`` on every subset with every seed; accuracy on a shared held-out set.

    Args:
        dataset: The data every subset indexes (checked against each subset's checksum).
        subsets: Subset files to compare.
        config: The one configuration trained everywhere; its seed is replaced by each of ``seeds``.
        seeds: Training seeds (weights, order, augmentation); the subsets themselves are fixed.
        holdout_size: Class-balanced held-out images, disjoint from every subset.
        on_run: Called after every training run with ``{"subset", "seed", "accuracy", "seconds"}``.

    Returns:
        One row per subset: ``subset`` (path), ``method``, ``params``, ``checksum``,
        ``accuracies`` (per seed), ``mean``, ``std`` (sample std over seeds; 0 for one seed),
        ``seconds`` (total training time) and ``holdout_size``.
    """
    if not subsets or not seeds:
        raise ValueError(f"need at least one subset and one seed, got {count_of(len(subsets), 'subset')} and {count_of(len(seeds), 'seed')}")
    for s in subsets:
        check_dataset(s, dataset)
    holdout = holdout_indices(dataset.y_train, np.concatenate([s.indices for s in subsets]), holdout_size)
    x_val, y_val = dataset.x_train[holdout], dataset.y_train[holdout]
    rows = []
    for s in subsets:
        data = TrainData(dataset.x_train[s.indices], dataset.y_train[s.indices], x_val, y_val, dataset.num_classes)
        accuracies, seconds = [], 0.0
        for seed in seeds:
            started = time.perf_counter()
            result = train(config.replace(seed=int(seed)), data)
            elapsed = time.perf_counter() - started
            # A diverged run counts as 0 rather than vanishing from the mean.
            accuracy = result.val_accuracy if result.status == "complete" else 0.0
            accuracies.append(float(accuracy))
            seconds += elapsed
            if on_run is not None:
                on_run({"subset": str(s.path), "seed": int(seed), "accuracy": float(accuracy), "seconds": elapsed, "status": result.status})
        rows.append({
            "subset": str(s.path),
            "method": s.method,
            "params": s.params,
            "checksum": s.checksum,
            "accuracies": accuracies,
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
            "seconds": round(seconds, 1),
            "holdout_size": int(len(holdout)),
        })
    return rows
