"""Selection methods on small clustered feature sets: contracts, objectives, bounds, errors."""

import itertools

import numpy as np
import pytest

from kilotune.subset.objectives import class_objectives, objectives, row_bound, sum_upper_bound
from kilotune.subset.selection import METHODS, cosine_distances, select

CLASSES, PER_CLASS_POINTS, DIM, K = 5, 60, 16, 10


@pytest.fixture(scope="module")
def data():
    """5 classes x 60 points in 16-D, each class a mix of 4 clusters of unequal size."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS_POINTS)
    rng.shuffle(labels)  # Classes interleaved, as in a real training set.
    centers = rng.normal(size=(CLASSES, 4, DIM))
    cluster = rng.choice(4, size=len(labels), p=[0.55, 0.25, 0.15, 0.05])
    features = centers[labels, cluster] + 0.35 * rng.normal(size=(len(labels), DIM))
    return features / np.linalg.norm(features, axis=1, keepdims=True), labels


def _params(method):
    return {"draws": 200} if method == "random-restarts" else {}


def _total(data, method, seed=0, **params):
    features, labels = data
    return objectives(features, labels, select(method, features, labels, K, seed, **params), upper_bound=True)["total"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_picks_exactly_per_class_sorted_distinct_and_seeded(data, method):
    features, labels = data
    chosen = select(method, features, labels, K, 3, **_params(method))
    assert chosen.dtype.kind == "i" and np.all(np.diff(chosen) > 0)  # sorted, no duplicates
    assert np.bincount(labels[chosen]).tolist() == [K] * CLASSES
    assert np.array_equal(chosen, select(method, features, labels, K, 3, **_params(method)))


def test_random_needs_no_features_and_depends_on_the_seed(data):
    _, labels = data
    assert not np.array_equal(select("random", None, labels, K, 0), select("random", None, labels, K, 1))


def test_max_sum_beats_the_reference_random_restarts_on_the_sum(data):
    assert _total(data, "max-sum")["sum_distance"] > _total(data, "random-restarts", draws=200)["sum_distance"]


def test_swaps_improve_greedy_max_sum_and_stay_under_the_upper_bound(data):
    greedy, swapped = _total(data, "max-sum", max_swaps=0), _total(data, "max-sum")
    assert swapped["sum_distance"] >= greedy["sum_distance"]
    assert swapped["sum_upper_bound"] >= swapped["sum_distance"] and 0 <= swapped["sum_gap"] < 1


def test_representative_is_nearer_to_the_unchosen_than_random(data):
    assert _total(data, "representative")["mean_nearest"] < _total(data, "random")["mean_nearest"]
    assert _total(data, "representative")["mean_nearest"] <= _total(data, "representative", max_swaps=0)["mean_nearest"]


def test_k_center_spreads_further_apart_than_random(data):
    assert _total(data, "k-center")["min_distance"] > _total(data, "random")["min_distance"]


def test_mixed_trades_diversity_for_representativeness(data):
    diverse, balanced, central = (_total(data, "mixed", weight=w) for w in (1.0, 0.5, 0.0))
    assert diverse["sum_distance"] >= balanced["sum_distance"] >= central["sum_distance"]
    assert diverse["mean_nearest"] >= central["mean_nearest"]


def test_upper_bound_and_max_sum_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(5):
        features = rng.normal(size=(11, 4))
        d = cosine_distances(features)
        best = max(d[np.ix_(c, c)].sum() / 2 for c in itertools.combinations(range(11), 4))
        picked = select("max-sum", features, np.zeros(11, int), 4, 0)  # one class: positions are indices
        value = class_objectives(d, picked)["sum_distance"]
        assert 0.95 * best <= value <= best + 1e-5
        assert sum_upper_bound(d, 4) >= best - 1e-5
        for direction in (picked, rng.choice(11, 4, replace=False)):  # any subset's direction is valid
            assert sum_upper_bound(d, 4, direction) >= best - 1e-5
        relu = np.abs(features)  # non-negative features, as after ReLU: the projection bound bites
        d = cosine_distances(relu)
        best = max(d[np.ix_(c, c)].sum() / 2 for c in itertools.combinations(range(11), 4))
        assert best - 1e-5 <= sum_upper_bound(d, 4, select("max-sum", relu, np.zeros(11, int), 4, 0)) < row_bound(d, 4)


def test_cosine_distances_are_a_clipped_symmetric_dissimilarity(data):
    d = cosine_distances(data[0][:50] * 3.0)  # Unnormalised rows are normalised first.
    assert d.dtype == np.float32 and d.shape == (50, 50)
    assert np.all(d >= 0) and np.all(np.diag(d) == 0) and np.allclose(d, d.T)


@pytest.mark.parametrize(
    ("method", "per_class", "params", "match"),
    [
        ("max-sum", PER_CLASS_POINTS + 1, {}, "per_class=61 is larger than class"),
        ("random", PER_CLASS_POINTS + 1, {}, "per_class=61 is larger than class"),
        ("max-sum", 0, {}, "per_class must be a positive integer"),
        ("farthest", K, {}, r"unknown selection method 'farthest'; choose one of k-center, "),
        ("max-sum", K, {"draws": 5}, r"takes no parameter\(s\) draws; it takes max_swaps"),
        ("mixed", K, {"weight": 1.5}, "weight=1.5 must be in"),
        ("random-restarts", K, {"draws": 0}, "draws=0 must be >= 1"),
    ],
)
def test_bad_input_is_a_one_line_value_error(data, method, per_class, params, match):
    features, labels = data
    with pytest.raises(ValueError, match=match):
        select(method, features, labels, per_class, 0, **params)


def test_features_and_labels_must_match_and_methods_need_features(data):
    features, labels = data
    with pytest.raises(ValueError, match="differ in length"):
        select("k-center", features[:-1], labels, K, 0)
    with pytest.raises(ValueError, match="needs feature vectors"):
        select("max-sum", None, labels, K, 0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_identical_features_still_give_distinct_picks(method):
    labels = np.repeat([0, 1], 10)
    chosen = select(method, np.ones((20, 4)), labels, 5, 0, **_params(method))
    assert len(set(chosen)) == 10 and np.bincount(labels[chosen]).tolist() == [5, 5]
