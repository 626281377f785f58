"""Export: the ranked trial's exact config, its provenance, and clear errors."""

import json
import math
import statistics

import optuna
import pytest

from kilotune.cli.main import main
from kilotune.search.export import export_trial, read_export, validation_text
from kilotune.search.storage import open_storage
from kilotune.search.winner import StudyTrials, load_cv_study
from kilotune.training.config import TrainConfig

ATTRS = {
    "kilotune_version": "0.1.0", "dataset": "fashion-mnist", "dataset_checksum": "sha256:" + "d" * 64,
    "subset_path": "/cache/subsets/s.json", "subset_checksum": "sha256:" + "5" * 64, "val_fraction": 0.2,
    "split_seed": 0, "epochs": 3, "space": {}, "sampler": "tpe", "pruner": "hyperband", "n_trials": 5,
    "timeout_s": None, "cv_top_k": 1, "cv_folds": 2, "created_at": "2025-01-01T10:00:00+00:00",
}  # fmt: skip


def new_study(url: str, name: str = "s", drop: tuple[str, ...] = ()) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    for key, value in ATTRS.items():
        if key not in drop:
            study.set_user_attr(key, value)
    return study


def add(study: optuna.Study, config: TrainConfig, values: list[float], state="complete", status=None) -> int:
    """One trial the way a worker runs it: ask, user attrs, a report per epoch, tell."""
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-4, 1.0, log=True)
    trial.set_user_attr("config", config.to_dict())
    trial.set_user_attr("worker", "host:1")
    trial.set_user_attr("status", status or state)
    for epoch, value in enumerate(values, 1):
        trial.report(value, epoch)
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
    study.tell(trial, values[-1] if state == "complete" else None, state=states[state])
    return trial.number


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('export') / 'x.db'}"


@pytest.fixture(scope="module")
def study(url):
    study = new_study(url)
    add(study, TrainConfig(arch="vgg8", learning_rate=0.05, epochs=3, seed=7), [0.3, 0.5, 0.61])
    add(study, TrainConfig(arch="resnet9", epochs=3, seed=3), [0.4, 0.6, 0.72])
    add(study, TrainConfig(arch="resnet18", epochs=3), [0.7, 0.9, 0.95], status="diverged")
    add(study, TrainConfig(arch="resnet20", epochs=3), [0.8], state="pruned")
    add(study, TrainConfig(arch="vgg16", epochs=3), [0.2], state="failed")
    return study


@pytest.fixture(scope="module")
def storage(url):
    return open_storage(url)


def test_rank_one_is_the_best_complete_trial_and_its_config_round_trips(study, storage):
    export = export_trial(study, storage)
    assert [t.number for t in StudyTrials.read(study, storage).ranked()] == [1, 0]  # diverged, pruned and failed left out
    trial = study.trials[1]
    assert export["config"] == trial.user_attrs["config"]
    assert TrainConfig.from_dict(export["config"]) == TrainConfig(arch="resnet9", epochs=3, seed=3)
    p = export["provenance"]
    assert p["study"] == "s" and p["trial"] == 1 and math.isclose(p["value"], 0.72)
    for key in ("dataset", "dataset_checksum", "subset_path", "subset_checksum", "val_fraction", "kilotune_version"):
        assert p[key] == ATTRS[key]
    assert p["seed"] == 3 and p["exported_at"].endswith("+00:00")
    assert {"keras", "optuna", "numpy", "python"} <= set(p["library_versions"])
    assert export_trial(study, storage, rank=2)["provenance"]["trial"] == 0


def test_the_export_carries_the_subset_the_study_carries(study, storage, tmp_path):
    """Issue 28: ``kilotune retrain`` on another host needs no --subset; a study from before studies
    carried their subset exports null."""
    from kilotune.search.attrs import SUBSET_CONTENT

    assert export_trial(study, storage)["provenance"]["subset_content"] is None
    content = {"format": "kilotune-subset/1", "indices": [3, 5], "labels": [0, 1]}  # export copies it as stored
    other = open_storage(f"sqlite:///{tmp_path / 'c.db'}")
    carrying = new_study(f"sqlite:///{tmp_path / 'c.db'}", "c")
    other.set_study_system_attr(other.get_study_id_from_name("c"), SUBSET_CONTENT, content)
    add(carrying, TrainConfig(arch="vgg8", epochs=3), [0.1, 0.2, 0.3])
    assert export_trial(carrying, other)["provenance"]["subset_content"] == content


def test_rank_beyond_the_complete_trials_is_a_clear_error(study, storage):
    with pytest.raises(ValueError, match="has 2 complete trial"):
        export_trial(study, storage, rank=3)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        export_trial(study, storage, rank=0)


def test_cli_writes_a_file_that_train_and_retrain_read(study, url, tmp_path, capsys):
    out = tmp_path / "best.json"
    assert main(["export", "--study", "s", "--storage", url, "--out", str(out)]) == 0
    assert "trial 1" in capsys.readouterr().out
    assert TrainConfig.from_json(out) == TrainConfig(arch="resnet9", epochs=3, seed=3)
    assert read_export(out) == json.loads(out.read_text())


def test_empty_failed_and_unknown_studies_are_user_errors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    new_study(url, "empty")
    failed = new_study(url, "failed")
    add(failed, TrainConfig(epochs=3), [0.1], state="failed")
    out = str(tmp_path / "best.json")
    for name in ("empty", "failed"):
        assert main(["export", "--study", name, "--storage", url, "--out", out]) == 2
        assert f"study '{name}' has no complete trials to export" in capsys.readouterr().err
    assert main(["export", "--study", "nope", "--storage", url, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "'empty'" in err and "'failed'" in err


def test_read_export_refuses_other_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(TrainConfig().to_json())
    with pytest.raises(ValueError, match="not a kilotune export"):
        read_export(path)


def add_fold(study: optuna.Study, cv_of: int, fold: int, value: float) -> None:
    """A fold trial as a worker leaves it in the companion study: the candidate's config trained
    and validated on ``fold``."""
    cv = load_cv_study(study, open_storage(ATTRS_URL[study.study_name]), create=True)
    trial = cv.ask()
    trial.suggest_float("learning_rate", 1e-4, 1.0, log=True)
    for key, attr in (("cv_of", cv_of), ("fold", fold), ("config", study.trials[cv_of].user_attrs["config"]), ("status", "complete")):
        trial.set_user_attr(key, attr)
    cv.tell(trial, value)


ATTRS_URL: dict[str, str] = {}


def test_export_writes_the_cross_validated_winner_with_its_mean_and_standard_error(tmp_path, capsys):
    url = ATTRS_URL["cv"] = f"sqlite:///{tmp_path / 'cv.db'}"
    study = new_study(url, "cv")
    study.set_user_attr("n_trials", 10)
    study.set_user_attr("cv_top_k", 2)
    study.set_user_attr("cv_folds", 5)
    lucky = add(study, TrainConfig(arch="vgg8", epochs=3, seed=1), [0.5, 0.7, 0.80])
    steady = add(study, TrainConfig(arch="resnet9", epochs=3, seed=2), [0.5, 0.7, 0.76])
    for fold, (a, b) in enumerate([(0.66, 0.75), (0.70, 0.77), (0.64, 0.74), (0.68, 0.78)], 1):
        add_fold(study, lucky, fold, a)
        add_fold(study, steady, fold, b)
    out = tmp_path / "best.json"
    assert main(["export", "--study", "cv", "--storage", url, "--out", str(out)]) == 0
    p = read_export(out)["provenance"]
    steady_folds = [0.76, 0.75, 0.77, 0.74, 0.78]
    assert p["trial"] == steady and math.isclose(p["value"], 0.76), "not the best fold-0 value: the best mean"
    assert math.isclose(p["cv_mean"], statistics.fmean(steady_folds))
    assert math.isclose(p["cv_stderr"], statistics.stdev(steady_folds) / math.sqrt(5)) and p["cv_folds"] == [0, 1, 2, 3, 4]
    assert f"validation accuracy {p['cv_mean']:.4f} ± {p['cv_stderr']:.4f} over 5 folds" in capsys.readouterr().out
    storage = open_storage(url)
    runner_up = export_trial(study, storage, rank=2)["provenance"]
    assert runner_up["trial"] == lucky and math.isclose(runner_up["cv_mean"], 0.696)
    assert [t.number for t in StudyTrials.read(study, storage).ranked()] == [lucky, steady], "fold trials are not search results"
    assert study.best_trial.number == lucky and len(study.trials) == 2, "the study holds its search trials only"
    assert main(["study", "list", "--storage", url]) == 0
    assert f"cv\ttrials=10\tbest={p['cv_mean']:.4f}\tse={p['cv_stderr']:.4f}\t" in capsys.readouterr().out, "the list shows the winner, not the best fold"


@pytest.mark.parametrize(("attrs", "drop", "reason"), [
    ({"cv_top_k": 0, "cv_folds": 1}, (), "the study does not cross-validate, cv_top_k=0 for a budget of 5 trials"),
    ({"n_trials": None, "cv_top_k": 0, "cv_folds": 1}, (), "the study has no trial budget, and only a trial budget (--n-trials) sets some aside"),
    ({}, (), "the top 1 is cross-validated by the time the 4 search trials are done, and this one's fold trials have not run"),
    ({}, ("cv_top_k", "cv_folds"), "the top 3 are cross-validated by the time the 5 search trials are done"),  # an old study
])
def test_a_winner_on_one_fold_says_why(tmp_path, capsys, attrs, drop, reason):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = new_study(url, "one", drop)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    add(study, TrainConfig(arch="vgg8", epochs=3), [0.5, 0.7, 0.8])
    out = tmp_path / "best.json"
    assert main(["export", "--study", "one", "--storage", url, "--out", str(out)]) == 0
    p = read_export(out)["provenance"]
    assert p["cv_stderr"] is None and reason in p["cv_note"]
    assert f"validation accuracy 0.8000 on fold 0 only ({p['cv_note']})" in capsys.readouterr().out
    assert ":" not in validation_text(p), "the run's 'best configuration (...):' line ends at its only colon"
