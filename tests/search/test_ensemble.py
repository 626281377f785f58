"""The ensemble export: predictions stored compactly, members chosen on out-of-fold predictions only."""

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.ensemble import candidates, choose_members, decode_predictions, encode_predictions, ensemble_accuracy, split_folds
from kilotune.search.export import check_export, export_ensemble, export_study
from kilotune.search.storage import open_storage
from kilotune.search.winner import StudyTrials, load_cv_study
from kilotune.training.config import TrainConfig
from tests.search.test_export import ATTRS

N, CLASSES = 40, 4


def predictions(rng: np.random.Generator, labels: np.ndarray, skill: float) -> dict:
    """Softmax that puts ``skill`` on the right class for a random share of images."""
    p = rng.dirichlet(np.ones(CLASSES), len(labels))
    right = rng.random(len(labels)) < skill
    p[right] = 0.1 / (CLASSES - 1)
    p[right, labels[right]] = 0.9
    return encode_predictions(p, labels)


def test_predictions_round_trip_compactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    p = rng.dirichlet(np.ones(10), 200)
    stored = encode_predictions(p, labels)
    assert len(json.dumps(stored)) < 6000, "about 5 kB a trial for 200 images"
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"val_predictions": stored})
    back, back_labels = decode_predictions(trial)
    assert np.allclose(back, p, atol=1e-3) and np.array_equal(back_labels, labels)
    assert decode_predictions(optuna.trial.create_trial(value=0.5)) is None


@pytest.fixture
def study_and_storage(tmp_path):
    return make_cv_study(f"sqlite:///{tmp_path / 'e.db'}")


def make_cv_study(url: str, seed: int = 1) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Three cross-validated candidates on 3 folds, of skill 0.8, 0.75 and 0.6, with predictions."""
    storage = open_storage(url)
    study = optuna.create_study(study_name="e", storage=storage, direction="maximize")
    for key, value in {**ATTRS, "n_trials": 9, "cv_top_k": 3, "cv_folds": 3}.items():
        study.set_user_attr(key, value)
    rng = np.random.default_rng(seed)
    labels = {f: rng.integers(0, CLASSES, N) for f in range(3)}
    cv = load_cv_study(study, storage, create=True)
    for number, skill in enumerate((0.8, 0.75, 0.6)):
        config = TrainConfig(arch="vgg8", epochs=3, seed=number)
        for fold in range(3):
            attrs = {"config": config.to_dict(), "status": "complete", "val_predictions": predictions(rng, labels[fold], skill)}
            if fold:
                attrs.update(cv_of=number, fold=fold)
            (study if fold == 0 else cv).add_trial(optuna.trial.create_trial(
                value=skill, params={"x": float(number)}, distributions={"x": optuna.distributions.FloatDistribution(0, 5)},
                user_attrs=attrs))  # fmt: skip
    return study, storage


def test_members_are_chosen_on_out_of_fold_predictions(study_and_storage):
    study, storage = study_and_storage
    pool = candidates(StudyTrials.read(study, storage), 3)
    assert [c.number for c in pool] == [0, 1, 2] and all(sorted(c.folds) == [0, 1, 2] for c in pool)
    assert choose_members(pool, 2, "top") == [(0, 1), (1, 1)]
    greedy = choose_members(pool, 3, "greedy")
    assert sum(w for _, w in greedy) == 3 and greedy[0][0] == 0, "starts from the best candidate"
    folds = [0, 1, 2]
    assert ensemble_accuracy(pool, greedy, folds) >= ensemble_accuracy(pool, [(0, 1)], folds), "greedy never does worse where it chose"
    assert split_folds([0, 1, 2]) == [([1, 2], 0), ([0, 2], 1), ([0, 1], 2)]
    with pytest.raises(ValueError, match="selection='seeds' chooses no trials"):
        choose_members(pool, 2, "seeds")


def test_the_ensemble_export_names_its_members_and_their_validation(study_and_storage):
    study, storage = study_and_storage
    exported = export_ensemble(study, storage, 2)
    assert exported["provenance"]["trial"] == exported["ensemble"]["members"][0]["trial"] == 0, "around the winner"
    e = exported["ensemble"]
    assert e["selection"] == "top" and [m["trial"] for m in e["members"]] == [0, 1] and e["note"] is None
    assert e["validation"]["folds"] == [0, 1, 2] and 0 <= e["validation"]["ensemble"] <= 1
    assert check_export(exported) is exported
    many = export_ensemble(study, storage, 5)["ensemble"]
    assert [(m["trial"], m["config"]["seed"]) for m in many["members"]] == [(0, 0), (1, 1), (2, 2), (None, 1), (None, 2)]
    assert "3 cross-validated trials for 5 members: the rest are the winner with other seeds" in many["note"]
    seeds = export_ensemble(study, storage, 3, "seeds")["ensemble"]["members"]
    assert [m["config"]["seed"] for m in seeds] == [0, 1, 2] and {m["config"]["arch"] for m in seeds} == {"vgg8"}


def test_a_study_without_predictions_gets_a_seed_ensemble_and_says_why(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=open_storage(url), direction="maximize")
    for key, value in {**ATTRS, "cv_top_k": 0, "cv_folds": 1}.items():
        study.set_user_attr(key, value)
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs={"config": TrainConfig(epochs=3, seed=4).to_dict(), "status": "complete"}))
    e = export_study("old", url, ensemble=2)["ensemble"]
    assert e["selection"] == "seeds" and [m["config"]["seed"] for m in e["members"]] == [4, 5]
    assert "no cross-validated trials with validation predictions" in e["note"]


def test_bad_ensemble_requests_are_one_line(study_and_storage, tmp_path, capsys):
    study, storage = study_and_storage
    url = f"sqlite:///{tmp_path / 'e.db'}"
    out = tmp_path / "ens.json"
    assert main(["export", "--study", "e", "--storage", url, "--out", str(out), "--ensemble", "1"]) == 2
    assert "an ensemble needs at least 2 members, got k=1" in capsys.readouterr().err
    assert main(["export", "--study", "e", "--storage", url, "--out", str(out), "--ensemble", "2", "--rank", "2"]) == 2
    assert "an ensemble is built around the winner" in capsys.readouterr().err
    assert main(["export", "--study", "e", "--storage", url, "--out", str(out), "--ensemble", "2", "--selection", "best"]) == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--study", "e", "--storage", url, "--out", str(out), "--ensemble", "2", "--selection", "greedy"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble (greedy): trial 0" in printed and "out-of-fold accuracy" in printed
    assert json.loads(out.read_text())["ensemble"]["selection"] == "greedy"
    broken = json.loads(out.read_text())
    broken["ensemble"]["members"] = broken["ensemble"]["members"][:1]
    with pytest.raises(ValueError, match="'ensemble' must hold 'members', at least 2"):
        check_export(broken)
    assert study.trials[0].state == TrialState.COMPLETE
