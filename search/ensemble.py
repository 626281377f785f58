"""The ensemble a user takes home: members chosen from the cross-validated trials, by validation only.

Every complete trial records its validation predictions (``val_predictions``: the softmax on its
fold's hold-out and those images' labels, compact: float16 and uint8, base64). A cross-validated
candidate therefore has out-of-fold predictions on the folds it was validated on, which are the
same folds for every candidate (0 to ``cv_folds - 1``). ``choose_members`` picks an ensemble from
them, never from the test set:

    top       the best ``k`` candidates by their cross-validated mean, equal weights;
    greedy    Caruana et al.'s ensemble selection (auto-sklearn's): start from the best candidate,
              add, with replacement, the one that most raises the ensemble's out-of-fold accuracy,
              ``k`` picks; a candidate picked twice weighs twice;
    seeds     the winner ``k`` times, with seeds ``seed``, ``seed + 1``, ...: no validation
              predictions needed.

``bench/ensemble_selection.py`` compares them on the folds of recorded studies (cross-fitted: chosen
on some folds, scored on another), which is how the default was chosen (docs/benchmarks.md).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from kilotune.models.names import ENSEMBLE_SELECTIONS
from kilotune.search.settings import ExportOptions
from kilotune.search.attrs import CONFIG, CV_OF, FOLD, VAL_PREDICTIONS
from kilotune.search.winner import CrossValidated, StudyTrials, ranking
from kilotune.subset.datasets import accuracy

SELECTIONS = ENSEMBLE_SELECTIONS
DEFAULT_SELECTION = ExportOptions.selection


def encode_predictions(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """``val_predictions`` as a trial stores it: about 5 kB for 200 images of 10 classes."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    return {
        "shape": list(probabilities.shape),
        "probabilities": base64.b64encode(probabilities.astype(np.float16).tobytes()).decode(),
        "labels": base64.b64encode(labels.astype(np.uint8).tobytes()).decode(),
    }


def decode_predictions(trial: FrozenTrial) -> tuple[np.ndarray, np.ndarray] | None:
    """A trial's validation ``(probabilities, labels)``; None if it recorded none."""
    stored = trial.user_attrs.get(VAL_PREDICTIONS)
    if not stored:
        return None
    shape = tuple(stored["shape"])
    probabilities = np.frombuffer(base64.b64decode(stored["probabilities"]), np.float16).reshape(shape).astype(np.float32)
    return probabilities, np.frombuffer(base64.b64decode(stored["labels"]), np.uint8).astype(np.int64)


@dataclass(frozen=True)
class Candidate:
    """A cross-validated trial with its out-of-fold predictions, fold by fold."""

    evaluated: CrossValidated
    folds: dict[int, tuple[np.ndarray, np.ndarray]]  # fold -> (probabilities, labels)

    @property
    def number(self) -> int:
        return self.evaluated.trial.number


def candidates(trials: StudyTrials, k: int) -> list[Candidate]:
    """The cross-validated trials (``winner.ranking``, best first) with every fold's predictions,
    on the folds they all share; those without predictions (older studies) are left out."""
    folds_of: dict[int, dict[int, FrozenTrial]] = {}
    for t in trials.folds:
        if t.user_attrs.get(VAL_PREDICTIONS):
            folds_of.setdefault(t.user_attrs[CV_OF], {})[t.user_attrs[FOLD]] = t
    found = []
    for evaluated in ranking(trials, k):
        if evaluated.stderr is None:  # not cross-validated
            continue
        by_fold = {0: evaluated.trial, **folds_of.get(evaluated.trial.number, {})}
        decoded = {f: decode_predictions(t) for f, t in by_fold.items()}
        if all(p is not None for p in decoded.values()):
            found.append(Candidate(evaluated, decoded))  # type: ignore[arg-type]
    shared = set.intersection(*(set(c.folds) for c in found)) if found else set()
    return [Candidate(c.evaluated, {f: c.folds[f] for f in sorted(shared)}) for c in found if len(shared) > 1]


def choose_members(pool: list[Candidate], k: int, selection: str = DEFAULT_SELECTION, folds: list[int] | None = None) -> list[tuple[int, int]]:
    """``(trial number, weight)`` of an ensemble of ``k`` picks from ``pool`` (best first).

    Args:
        pool: Cross-validated candidates (``candidates``), best mean first.
        k: Members to pick (``greedy``: picks, so a member may weigh more than 1).
        selection: ``top`` or ``greedy`` (``seeds`` needs no pool: see ``export``).
        folds: The folds whose predictions choose (default: all); the others can score the choice.
    """
    if selection not in ("top", "greedy"):
        raise ValueError(f"selection={selection!r} chooses no trials from the pool; choose top or greedy")
    if k < 1 or not pool:
        raise ValueError(f"an ensemble needs k >= 1 and cross-validated candidates, got {k=} and {len(pool)} candidates")
    if selection == "top":
        return [(c.number, 1) for c in pool[:k]]
    folds = sorted(pool[0].folds) if folds is None else folds
    stacked = [np.concatenate([c.folds[f][0] for f in folds]) for c in pool]
    labels = np.concatenate([pool[0].folds[f][1] for f in folds])
    counts = [0] * len(pool)
    total = np.zeros_like(stacked[0])
    for _ in range(k):
        scores = [accuracy(total + p, labels) for p in stacked]
        best = int(np.argmax(scores))  # ties: the better-ranked candidate
        counts[best] += 1
        total += stacked[best]
    return [(c.number, n) for c, n in zip(pool, counts) if n]


def ensemble_accuracy(pool: list[Candidate], members: list[tuple[int, int]], folds: list[int]) -> float:
    """Out-of-fold accuracy of the weighted mean softmax of ``members`` on ``folds``."""
    by_number = {c.number: c for c in pool}
    labels = np.concatenate([pool[0].folds[f][1] for f in folds])
    total = sum(w * np.concatenate([by_number[n].folds[f][0] for f in folds]) for n, w in members)
    return accuracy(total, labels)


def member_configs(trials: StudyTrials, members: list[tuple[int, int]]) -> list[dict]:
    """The members' exported entries: trial, weight, exact config."""
    by_number = {t.number: t for t in trials.search}
    return [{"trial": n, "weight": w, "config": by_number[n].user_attrs[CONFIG]} for n, w in members]


def seed_members(config: dict, k: int) -> list[dict]:
    """The winner ``k`` times with seeds ``seed``, ``seed + 1``, ...: a seed ensemble."""
    return [{"trial": None, "weight": 1, "config": {**config, "seed": int(config.get("seed", 0)) + i}} for i in range(k)]


def split_folds(folds: list[int]) -> list[tuple[list[int], int]]:
    """Leave-one-fold-out: (folds to choose on, the fold to score on), for each fold."""
    return [([f for f in folds if f != held_out], held_out) for held_out in folds] if len(folds) > 1 else []

