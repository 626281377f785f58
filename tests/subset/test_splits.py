import numpy as np
import pytest

from kilotune.subset.splits import class_balanced_sample, stratified_split

LABELS = np.repeat(np.arange(4), 25)


def test_class_balanced_sample_takes_exactly_per_class_and_is_seeded():
    chosen = class_balanced_sample(LABELS, 10, seed=3)
    assert np.bincount(LABELS[chosen]).tolist() == [10, 10, 10, 10]
    assert len(set(chosen)) == 40
    assert np.array_equal(chosen, class_balanced_sample(LABELS, 10, seed=3))
    assert not np.array_equal(chosen, class_balanced_sample(LABELS, 10, seed=4))


def test_class_balanced_sample_refuses_more_than_a_class_holds():
    with pytest.raises(ValueError, match="per_class=26 is larger than class 0, which has 25"):
        class_balanced_sample(LABELS, 26, seed=0)


def test_stratified_split_is_a_partition_with_the_fraction_per_class():
    train, holdout = stratified_split(LABELS, 0.2, seed=1)
    assert sorted(np.concatenate([train, holdout]).tolist()) == list(range(100))
    assert np.bincount(LABELS[holdout]).tolist() == [5, 5, 5, 5]


def test_stratified_split_without_holdout_and_bad_fraction():
    train, holdout = stratified_split(LABELS, 0.0, seed=1)
    assert len(train) == 100 and len(holdout) == 0
    with pytest.raises(ValueError, match="fraction=1.0"):
        stratified_split(LABELS, 1.0, seed=1)
