"""A real worker runs a warm-started study, then cross-validates its best trial on other folds, in the budget."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

from kilotune.cli.main import main
from kilotune.search.ensemble import candidates
from kilotune.search.storage import open_storage
from kilotune.search.study import load_study
from kilotune.search.winner import (
    StudyTrials,
    cross_validated_best,
    load_cv_study,
    objective_value,
    preferred_preset,
    ranking,
    winner_note,
)
from kilotune.subset.datasets import load_dataset
from kilotune.subset.subsetfile import load_subset
from kilotune.training.data import holdout_data
from kilotune.workers.worker import Worker

pytestmark = pytest.mark.slow
TINY_SPACE = {"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none", "optimizer": "sgd", "cutout": 0}


def test_a_worker_trains_fold_trials_on_their_folds_within_the_budget(pg_url, fashion_subset, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    # 6 trials: 4 search trials, the top 1 of them on 2 more folds (a third of the budget).
    assert main(["study", "create", "--study", "cv-worker", "--storage", pg_url, "--dataset", "fashion-mnist",
                 "--subset", str(fashion_subset), "--space", str(space), "--epochs", "2", "--n-trials", "6",
                 "--pruner", "successive-halving", "--cv-top-k", "1", "--seed", "0"]) == 0  # fmt: skip
    worker = Worker("cv-worker", pg_url)
    trained_on: dict[tuple[str, int], object] = {}
    data_for = worker.data_for

    def spy(trial: optuna.Trial):  # records which split each trial trained on
        trained_on[trial.study.study_name, trial.number] = data = data_for(trial)
        return data

    worker.data_for = spy
    done = worker.run()

    storage = open_storage(pg_url)
    study, settings = load_study("cv-worker", storage)
    assert (settings.search_trials, settings.fold_trials) == (4, 2)
    search, folds = study.get_trials(), load_cv_study(study, storage).get_trials()
    assert search[0].user_attrs["preset"] == "vgg8-reference" and search[0].user_attrs["config"]["width"] == 0.125, "warm start"
    assert search[0].state == TrialState.COMPLETE and sorted(search[0].intermediate_values) == [1, 2], "a preset is never pruned"
    best = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert study.best_trial.number == best.number, "the study's best trial is a search trial"
    assert done == len(search) + len(folds) == 6, "the fold trials are inside the budget"
    assert sorted((t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in folds) == [(best.number, 1), (best.number, 2)], \
        "queued once every search trial had finished: the top 1 is the final one"
    assert all(t.state == TrialState.COMPLETE for t in folds)
    dataset = load_dataset("fashion-mnist")
    indices = load_subset(settings.subset_path, dataset).indices
    for t in [*search, *folds]:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(objective_value(list(t.intermediate_values.values()), settings.objective_epochs))
            assert sorted(t.intermediate_values) == [1, 2], "fold trials are never pruned"
        fold = t.user_attrs.get("fold", 0)
        expected = holdout_data(dataset, indices, settings.val_fraction, settings.split_seed, fold)
        name = study.study_name if fold == 0 else f"{study.study_name}.cv"
        assert np.array_equal(trained_on[name, t.number].x_val, expected.x_val), f"trial {t.number} validated on fold {fold}"
        if fold:
            candidate = search[t.user_attrs["cv_of"]]
            assert t.user_attrs["config"] == candidate.user_attrs["config"] and t.params == candidate.params
    trials = StudyTrials.read(study, storage)
    by_mean = ranking(trials, settings.cv_top_k, prefer_presets=False)[0]
    assert by_mean.trial.number == best.number and sorted(by_mean.values) == [0, 1, 2] and by_mean.stderr is not None
    kept = preferred_preset(ranking(trials, settings.cv_top_k, prefer_presets=False))  # the one-SE rule
    winner = cross_validated_best(trials, settings.cv_top_k)
    assert winner.trial.number == (kept.trial.number if kept else best.number)
    assert get_note(study) == winner_note(trials, settings.cv_top_k, study.study_name), "the dashboard's note names the winner"
    pool = candidates(trials, settings.cv_top_k)  # every complete trial recorded its validation predictions
    assert [c.number for c in pool] == [best.number] and sorted(pool[0].folds) == [0, 1, 2]
    for fold, (probabilities, labels) in pool[0].folds.items():
        expected = holdout_data(dataset, indices, settings.val_fraction, settings.split_seed, fold)
        assert probabilities.shape == (len(expected.y_val), 10) and np.array_equal(labels, expected.y_val)
    assert f"kilotune winner: trial {winner.trial.number}" in get_note(study)
