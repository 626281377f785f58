"""A real worker runs a warm-started study, then cross-validates its best trial on the other folds."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.study import load_study, open_storage
from kilotune.search.winner import cross_validated_best, objective_value
from kilotune.subset.datasets import load_dataset
from kilotune.subset.subsetfile import load_subset
from kilotune.workers.data import holdout_data
from kilotune.workers.worker import Worker

pytestmark = pytest.mark.slow
TINY_SPACE = {"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none", "optimizer": "sgd", "cutout": 0}


def test_a_worker_trains_fold_trials_on_their_folds_outside_the_budget(pg_url, fashion_subset, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    assert main(["study", "create", "--study", "cv-worker", "--storage", pg_url, "--dataset", "fashion-mnist",
                 "--subset", str(fashion_subset), "--space", str(space), "--epochs", "2", "--n-trials", "2",
                 "--pruner", "successive-halving", "--cv-top-k", "1", "--seed", "0"]) == 0  # fmt: skip
    worker = Worker("cv-worker", pg_url)
    trained_on: dict[int, object] = {}
    data_for = worker.data_for

    def spy(trial: optuna.Trial):  # records which split each trial trained on
        trained_on[trial.number] = data = data_for(trial)
        return data

    worker.data_for = spy
    done = worker.run()

    study, settings = load_study("cv-worker", open_storage(pg_url))
    trials = study.get_trials()
    search, folds = trials[:2], trials[2:]  # successive halving may prune search trial 1 at epoch 1
    assert search[0].user_attrs["preset"] == "vgg8-reference" and search[0].user_attrs["config"]["width"] == 0.125, "warm start"
    best = max((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    # The worker takes its next trial while one trains: when trial 1 is still training, trial 0
    # is the top-1 and gets folds; if trial 1 then beats it, trial 1 gets folds too.
    validated = sorted({t.user_attrs["cv_of"] for t in folds})
    assert best.number in validated and done == len(trials) == 2 + 4 * len(validated)
    assert sorted((t.user_attrs["cv_of"], t.user_attrs["fold"]) for t in folds) == [(n, f) for n in validated for f in (1, 2, 3, 4)]
    assert all(t.state == TrialState.COMPLETE for t in [search[0], *folds])
    dataset = load_dataset("fashion-mnist")
    indices = load_subset(settings.subset_path, dataset).indices
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(objective_value(list(t.intermediate_values.values()), settings.objective_epochs))
            assert sorted(t.intermediate_values) == [1, 2], "fold trials are never pruned"
        fold = t.user_attrs.get("fold", 0)
        expected = holdout_data(dataset, indices, settings.val_fraction, settings.split_seed, fold)
        assert np.array_equal(trained_on[t.number].x_val, expected.x_val), f"trial {t.number} validated on fold {fold}"
        if fold:
            candidate = trials[t.user_attrs["cv_of"]]
            assert t.user_attrs["config"] == candidate.user_attrs["config"] and t.params == candidate.params
            assert not np.array_equal(trained_on[t.number].x_val, trained_on[0].x_val)
    winner = cross_validated_best(study)
    assert winner.trial.number in validated and sorted(winner.values) == [0, 1, 2, 3, 4] and winner.stderr is not None
