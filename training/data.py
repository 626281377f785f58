"""From a dataset and the chosen indices to the arrays the training core takes."""

from __future__ import annotations

import numpy as np

from kilotune.subset.datasets import ImageDataset
from kilotune.subset.splits import stratified_fold
from kilotune.training.train import TrainData


def holdout_data(dataset: ImageDataset, chosen: np.ndarray, val_fraction: float, seed: int, fold: int = 0) -> TrainData:
    """Trains on the chosen images less a stratified hold-out of ``val_fraction``, validated on that hold-out.

    The search validates on fold 0; cross-validating a candidate trains it on the other folds'
    splits (``subset.splits.stratified_fold``).
    """
    chosen = np.asarray(chosen)
    train_pos, val_pos = stratified_fold(dataset.y_train[chosen], val_fraction, seed, fold)
    train_idx, val_idx = chosen[train_pos], chosen[val_pos]
    return TrainData(
        x_train=dataset.x_train[train_idx],
        y_train=dataset.y_train[train_idx],
        x_val=dataset.x_train[val_idx],
        y_val=dataset.y_train[val_idx],
        num_classes=dataset.num_classes,
    )
