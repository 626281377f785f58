import numpy as np
import pytest

from kilotune.subset.splits import class_balanced_sample, fold_count, stratified_fold, stratified_split

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


def test_folds_are_stratified_disjoint_and_cover_every_item():
    assert fold_count(0.2) == 5 and fold_count(0.1) == 10 and fold_count(0.3) == 3
    holdouts = [stratified_fold(LABELS, 0.2, 7, fold) for fold in range(5)]
    for train, holdout in holdouts:
        assert np.bincount(LABELS[holdout]).tolist() == [5, 5, 5, 5], "each fold holds out 20% of every class"
        assert sorted(np.concatenate([train, holdout]).tolist()) == list(range(100))
    everything = np.concatenate([holdout for _, holdout in holdouts])
    assert sorted(everything.tolist()) == list(range(100)), "the five hold-outs are disjoint and cover all"


def test_fold_zero_is_the_search_split_that_studies_always_had():
    assert all(np.array_equal(a, b) for a, b in zip(stratified_fold(LABELS, 0.2, 3, 0), stratified_split(LABELS, 0.2, 3)))
    # The hold-out studies were created with: the first 20% of each class's seeded permutation.
    rng = np.random.default_rng(3)
    first = np.sort(np.concatenate([rng.permutation(np.flatnonzero(LABELS == c))[:5] for c in range(4)]))
    assert np.array_equal(stratified_split(LABELS, 0.2, 3)[1], first)


def test_a_fold_out_of_range_or_too_big_for_a_class_is_refused():
    with pytest.raises(ValueError, match="fold=5 is out of range; fraction=0.2 allows folds 0 to 4"):
        stratified_fold(LABELS, 0.2, 0, 5)
    small = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])  # class 0: 3 items, one held out a fold: no fourth fold
    with pytest.raises(ValueError, match="class 0 has 3 items, too few for fold=3"):
        stratified_fold(small, 0.25, 0, 3)
