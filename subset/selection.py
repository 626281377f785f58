"""Subset selection: pure functions from feature vectors and labels to training-set indices.

Every method has the signature ``(features, labels, per_class, seed, **params) -> indices``
and returns sorted indices, exactly ``per_class`` of every class, without duplicates, the
same for the same seed. Each class is handled alone on its cosine distance matrix
``D = 1 - F F^T`` (rows of F L2-normalised), computed once per class: 6000 images in
float32 is 144 MB.

Methods (:data:`METHODS`):

- ``random``: class-balanced uniform sample (needs no features).
- ``random-restarts``: the reference; best of ``draws`` random draws by sum of distances.
- ``max-sum``: greedy max-sum dispersion, then best-improvement swaps (within ~0.03% of
  optimal on CNN features, by :func:`projection_bound`).
- ``k-center``: farthest-point traversal (greedy max-min dispersion).
- ``representative``: facility location / k-medoids (Kabkab et al. 2016, "DCNNs on a
  Diet", arXiv:1606.04232): lazy greedy, then eager PAM swaps.
- ``mixed``: greedy on ``weight * diversity + (1 - weight) * representativeness``.
"""

from __future__ import annotations

from collections.abc import Callable
import inspect
from typing import Any

import numpy as np

from kilotune.models.names import listing
from kilotune.subset.files import count_of
from kilotune.subset.splits import class_balanced_sample

ClassPicker = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""Class-level routine: (D of one class, k, rng) -> k positions into that class."""


def cosine_distances(features: np.ndarray) -> np.ndarray:
    """``1 - F F^T`` in float32 with a zero diagonal; rows are L2-normalised first.

    Rounding makes some entries slightly negative (or the diagonal ~1e-7); they are clipped so
    that every objective sees a proper dissimilarity.
    """
    f = np.asarray(features, np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    d = f @ f.T
    np.subtract(np.float32(1), d, out=d)  # In place: at 6000 points every copy is 144 MB.
    np.clip(d, 0.0, 2.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


# --- the methods ---------------------------------------------------------------------


def random(features: np.ndarray | None, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Uniform class-balanced sample; ``features`` is ignored (may be None)."""
    check_inputs(features, labels, per_class)
    return class_balanced_sample(labels, per_class, seed)


def random_restarts(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int, *, draws: int = 10_000) -> np.ndarray:
    """The reference: per class, the best of ``draws`` random draws by sum of pairwise distances."""
    if draws < 1:
        raise ValueError(f"{draws=} must be >= 1")
    return _by_class(features, labels, per_class, seed, lambda d, k, rng: _best_of_draws(d, k, rng, draws))


def max_sum(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int, *, max_swaps: int = 2000) -> np.ndarray:
    """Greedy max-sum dispersion from the farthest pair, then best-improvement 1-swaps.

    Args:
        max_swaps: Cap on swaps per class; the search usually stops earlier, at a 1-swap
            local optimum. 0 keeps the greedy result.
    """
    if max_swaps < 0:
        raise ValueError(f"{max_swaps=} must be >= 0")
    return _by_class(features, labels, per_class, seed, lambda d, k, rng: _max_sum(d, k, max_swaps))


def k_center(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Farthest-point traversal from a random start: greedy max-min dispersion (a 2-approximation)."""
    return _by_class(features, labels, per_class, seed, _k_center)


def representative(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int, *, max_swaps: int = 1000) -> np.ndarray:
    """Facility location (k-medoids): minimise the mean distance of each image to its nearest pick.

    Args:
        max_swaps: Cap on PAM swaps per class after the greedy start; the search usually
            stops earlier, at a 1-swap local optimum (a few hundred swaps, seconds, for a
            6000-image class). 0 keeps the greedy result (a (1 - 1/e)-approximation of the
            facility-location gain).
    """
    if max_swaps < 0:
        raise ValueError(f"{max_swaps=} must be >= 0")
    return _by_class(features, labels, per_class, seed, lambda d, k, rng: _medoid_swaps(d, _facility_location(d, k), max_swaps))


def mixed(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int, *, weight: float = 0.5) -> np.ndarray:
    """Greedy on ``weight * diversity_gain + (1 - weight) * representativeness_gain``.

    Diversity gain is a candidate's summed distance to the chosen (max-sum's gain),
    representativeness gain its facility-location gain. At every step both are rescaled to
    [0, 1] over the candidates (diversity by its range, representativeness, which is >= 0,
    by its maximum), so ``weight`` trades them off whatever their units: 1 is greedy
    max-sum (from an arbitrary first pick), 0 greedy facility location.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{weight=} must be in [0, 1]")
    return _by_class(features, labels, per_class, seed, lambda d, k, rng: _mixed(d, k, weight))


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "random": random,
    "random-restarts": random_restarts,
    "max-sum": max_sum,
    "k-center": k_center,
    "representative": representative,
    "mixed": mixed,
}


def select(method: str, features: np.ndarray | None, labels: np.ndarray, per_class: int, seed: int, **params: Any) -> np.ndarray:
    """Runs ``METHODS[method]``, turning an unknown method or parameter into a clear ValueError."""
    fn = METHODS.get(method)
    if fn is None:
        raise ValueError(f"unknown selection method {method!r}; choose one of {listing(sorted(METHODS))}")
    allowed = sorted(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)
    if unknown := sorted(set(params) - set(allowed)):
        raise ValueError(f"method {method!r} takes no parameter(s) {listing(unknown, 'and')}; it takes {listing(allowed, 'and')}")
    return fn(features, labels, per_class, seed, **params)


# --- plumbing -------------------------------------------------------------------------


def check_inputs(features: np.ndarray | None, labels: np.ndarray, per_class: int) -> tuple[np.ndarray | None, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if features is not None:
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (images, dims), got shape {features.shape}")
        if len(features) != len(labels):
            raise ValueError(f"features and labels differ in length: {len(features)=} != {len(labels)=}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class=}")
    if len(labels):
        classes, counts = np.unique(labels, return_counts=True)
        if per_class > counts.min():
            small = classes[np.argmin(counts)]
            raise ValueError(f"{per_class=} is larger than class {small}, which has {count_of(int(counts.min()), 'image')}")
    return features, labels


def _by_class(features: np.ndarray, labels: np.ndarray, per_class: int, seed: int, pick: ClassPicker) -> np.ndarray:
    """Applies a class-level routine to every class's distance matrix; sorted global indices."""
    features, labels = check_inputs(features, labels, per_class)
    if features is None:
        raise ValueError("this selection method needs feature vectors, got features=None")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked = np.asarray(pick(cosine_distances(features[members]), per_class, rng))
        assert len(np.unique(picked)) == per_class, "a class-level routine returned duplicates"
        chosen.append(members[picked])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _best_of_draws(d: np.ndarray, k: int, rng: np.random.Generator, draws: int) -> np.ndarray:
    n = len(d)
    # Chunks bound the (chunk, k, k) gathered blocks to ~20 MB; the gather is the cost.
    chunk = max(1, min(draws, 5_000_000 // (k * k)))
    best, best_sum = None, -np.inf
    for start in range(0, draws, chunk):
        c = min(chunk, draws - start)
        # Generator.choice shuffles only a k-element tail (or runs Floyd's algorithm): ~7x faster
        # here than argpartition over n random keys per draw.
        idx = np.stack([rng.choice(n, k, replace=False, shuffle=False) for _ in range(c)])
        sums = d[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2), dtype=np.float64)
        if sums.max() > best_sum:
            best_sum, best = sums.max(), idx[np.argmax(sums)]
    return best


def _max_sum(d: np.ndarray, k: int, max_swaps: int) -> np.ndarray:
    n = len(d)
    first, second = (int(i) for i in np.unravel_index(np.argmax(d), d.shape))
    if first == second:  # All distances are zero: any two distinct points are a farthest pair.
        second = (first + 1) % n
    chosen = [first] if k == 1 else [first, second]
    in_set = np.zeros(n, bool)
    in_set[chosen] = True
    g = d[chosen].sum(axis=0, dtype=np.float64)  # g[j]: summed distance from j to the chosen set.
    while len(chosen) < k:
        j = int(np.argmax(np.where(in_set, -np.inf, g)))
        chosen.append(j)
        in_set[j] = True
        g += d[j]
    chosen = np.array(chosen)
    # Swapping chosen i for unchosen j changes the sum by g[j] - d[i, j] - g[i]: O(1) per pair
    # given g, so all k (n - k) pairs are scored in one vectorised step.
    tol = 1e-9 * max(1.0, g[chosen].sum())
    for _ in range(max_swaps):
        delta = g[None, :] - d[chosen] - g[chosen][:, None]
        delta[:, in_set] = -np.inf
        i, j = np.unravel_index(np.argmax(delta), delta.shape)
        if delta[i, j] <= tol:
            break
        g += d[j].astype(np.float64) - d[chosen[i]]
        in_set[chosen[i]], in_set[j] = False, True
        chosen[i] = j
    return chosen


def _k_center(d: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    chosen = [int(rng.integers(len(d)))]
    nearest = d[chosen[0]].copy()  # Distance from each point to its nearest chosen one.
    nearest[chosen[0]] = -np.inf  # Never pick a point twice, even among exact duplicates.
    for _ in range(k - 1):
        j = int(np.argmax(nearest))
        chosen.append(j)
        np.minimum(nearest, d[j], out=nearest)
        nearest[j] = -np.inf
    return np.array(chosen)


class _FacilityGains:
    """Facility-location gains ``sum_o max(nearest_o - d_jo, 0)`` of every candidate ``j``, lazily.

    Gains only shrink as picks are added (submodularity), so a gain computed before the last
    pick is an upper bound on the current one; only candidates whose bound could win are
    recomputed, ``batch`` rows of ``d`` at a time.
    """

    def __init__(self, d: np.ndarray, batch: int = 64) -> None:
        self.d, self.batch = d, min(batch, len(d))
        # Before any pick every point counts as "as far as anything", so the first pick is the medoid.
        self.nearest = np.full(len(d), d.max(), np.float32)
        self.bound = len(d) * float(d.max()) - d.sum(axis=1, dtype=np.float64)  # exact; d is symmetric
        self.fresh = np.ones(len(d), bool)
        self.chosen = np.zeros(len(d), bool)

    def argmax(self, score: Callable[[np.ndarray], np.ndarray]) -> int:
        """The unchosen candidate maximising ``score(gains)``, for ``score`` non-decreasing in the gains."""
        while True:
            s = np.where(self.chosen, -np.inf, score(self.bound))
            j = int(np.argmax(s))
            if self.fresh[j]:  # An exact value at least every other upper bound: the true best.
                return j
            top = np.argpartition(-s, self.batch - 1)[: self.batch]
            top = top[~self.fresh[top]]
            # sum_o max(nearest_o - d_jo, 0) = sum_o nearest_o - sum_o min(nearest_o, d_jo)
            self.bound[top] = self.nearest.sum(dtype=np.float64) - np.minimum(self.d[top], self.nearest).sum(axis=1, dtype=np.float64)
            self.fresh[top] = True

    def add(self, j: int) -> None:
        self.chosen[j] = True
        np.minimum(self.nearest, self.d[j], out=self.nearest)
        self.fresh[:] = False


def _facility_location(d: np.ndarray, k: int) -> np.ndarray:
    gains = _FacilityGains(d)
    chosen = []
    for _ in range(k):
        chosen.append(gains.argmax(lambda b: b))
        gains.add(chosen[-1])
    return np.array(chosen)


def _medoid_swaps(d: np.ndarray, chosen: np.ndarray, max_swaps: int, chunk: int = 512) -> np.ndarray:
    """PAM swaps, eager: candidates are scanned ``chunk`` at a time against all medoids (FastPAM1's
    nearest / second-nearest decomposition, Schubert & Rousseeuw 2019) and the best improving
    swap of a chunk is made at once, until a full cycle finds none or ``max_swaps`` are made."""
    chosen = np.array(chosen)
    n, k = len(d), len(chosen)
    if k >= n or k < 2:
        return chosen
    is_chosen = np.zeros(n, bool)
    is_chosen[chosen] = True
    swaps, start, unimproved = 0, 0, 0
    d1, d2, owner, removal = _assignment(d, chosen)
    tol = 1e-6 * max(1.0, float(d1.sum()))
    while swaps < max_swaps and unimproved < n:
        a = d[start : start + chunk]  # rows: candidates j; columns: points o (d is symmetric)
        # Replacing medoid i by j changes point o's distance by min(d_oj - d1, 0) if i is not
        # its medoid, else by min(d_oj, d2) - d1 = min(d_oj - d1, 0) + (d2 - d1) + (clip(d_oj, d1, d2) - d2).
        shared = np.minimum(a, d1).sum(axis=1, dtype=np.float64) - d1.sum(dtype=np.float64)
        corr = np.clip(a, d1, d2)
        corr -= d2
        delta = shared[:, None] + removal[None, :] + corr @ owner  # (candidates, medoids)
        delta[is_chosen[start : start + chunk]] = np.inf
        j, i = np.unravel_index(np.argmin(delta), delta.shape)
        if delta[j, i] < -tol:
            is_chosen[chosen[i]], is_chosen[start + j] = False, True
            chosen[i] = start + j
            d1, d2, owner, removal = _assignment(d, chosen)
            swaps, unimproved = swaps + 1, 0
        else:
            unimproved += len(a)
        start = start + chunk if start + chunk < n else 0
    return chosen


def _assignment(d: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest medoid distances, one-hot owner (n, k), and each medoid's
    removal loss (what its points pay to fall back to their second nearest)."""
    n, k = len(d), len(chosen)
    to_chosen = d[:, chosen]
    two = np.argpartition(to_chosen, 1, axis=1)[:, :2]
    d12 = np.take_along_axis(to_chosen, two, axis=1)
    near = two[np.arange(n), np.argmin(d12, axis=1)]
    d1, d2 = d12.min(axis=1), d12.max(axis=1)
    owner = np.zeros((n, k), np.float32)
    owner[np.arange(n), near] = 1
    return d1, d2, owner, np.bincount(near, weights=d2 - d1, minlength=k)


def _mixed(d: np.ndarray, k: int, weight: float) -> np.ndarray:
    gains = _FacilityGains(d)
    g = np.zeros(len(d), np.float64)  # Summed distance to the chosen set: the diversity gain.
    chosen = []
    for _ in range(k):
        # Representativeness is scaled by its exact maximum (gains are >= 0), which the lazy
        # search finds cheaply; diversity, exact for all, by its range over the candidates.
        best_gain = gains.bound[gains.argmax(lambda b: b)]
        candidates = g[~gains.chosen]
        lo, hi = candidates.min(), candidates.max()
        diversity = (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)
        scale = (1 - weight) / best_gain if best_gain > 0 else 0.0
        chosen.append(gains.argmax(lambda b: weight * diversity + scale * b))
        gains.add(chosen[-1])
        g += d[chosen[-1]]
    return np.array(chosen)
