"""The study layer against real storages: PostgreSQL and the embedded SQLite default."""

import json
from dataclasses import asdict
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.study import (
    RetryKilledTrials,
    StudySettings,
    _budget_rows,
    budget_left,
    claim_trial,
    counts_toward_budget,
    create_study,
    current_budget,
    extend_budget,
    load_study,
    open_storage,
    storage_url,
    study_timed_out,
)
from kilotune.search.space import PRESETS
from kilotune.training.config import TrainConfig
from tests.conftest import REPO, wait_for_exit


def settings(**changes) -> StudySettings:
    base = dict(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json", subset_checksum="sha256:bb", epochs=3)
    return StudySettings(**{**base, **changes})


def test_storage_url_precedence(monkeypatch):
    monkeypatch.delenv("KILOTUNE_STORAGE", raising=False)
    assert storage_url(None) == "sqlite:///kilotune.db"
    monkeypatch.setenv("KILOTUNE_STORAGE", "postgresql://h/db")
    assert storage_url(None) == "postgresql://h/db"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_storage_is_one_clear_line(capsys):
    code = main(["study", "list", "--storage", "postgresql+psycopg2://nobody:secret@127.0.0.1:1/none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("kilotune study: error: cannot open storage postgresql+psycopg2://nobody:***@127.0.0.1:1/none")
    assert "secret" not in err


@pytest.mark.parametrize("flag", ["--pruner", "--sampler"])
def test_a_wrong_choice_is_refused_before_storage_or_data(flag, tmp_path, capsys):
    """Neither the unreachable storage nor the missing dataset is touched: the choice is checked first."""
    code = main(["study", "create", "--study", "s", "--storage", "postgresql://nobody@127.0.0.1:1/none",
                 "--data-dir", str(tmp_path / "nothing-here"), flag, "asha"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"kilotune study: error: {flag[2:]}='asha' is not allowed; choose one of ")


def test_unknown_study_lists_the_known_ones(pg_url, capsys):
    storage = open_storage(pg_url)
    create_study("known-one", settings(), storage)
    assert main(["study", "delete", "--study", "nope", "--storage", pg_url]) == 2
    err = capsys.readouterr().err  # other tests' studies may share this database
    assert "unknown study 'nope'; studies in this storage: '" in err and "'known-one'" in err


def test_create_is_idempotent_and_refuses_other_data(pg_url):
    storage = open_storage(pg_url)
    study, created = create_study("idem", settings(), storage)
    again, created_again = create_study("idem", settings(), storage)
    assert created and not created_again and again.user_attrs == study.user_attrs
    with pytest.raises(ValueError, match="this subset has checksum sha256:cc"):
        create_study("idem", settings(subset_checksum="sha256:cc"), storage)
    with pytest.raises(ValueError, match="is on dataset fashion-mnist"):
        create_study("idem", settings(dataset_checksum="sha256:dd"), storage)


@pytest.mark.slow
def test_many_processes_creating_one_study_at_once(pg_url):
    code = (
        "import sys; from kilotune.search.study import *; from tests.search.test_study import settings\n"
        f"s, c = create_study('race', settings(), open_storage({pg_url!r})); print(int(c))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [out.strip() for out in wait_for_exit(procs, 120, "six processes creating one study")]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(outs) == ["0"] * 5 + ["1"]
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(pg_url))].count("race") == 1


def test_loaded_study_uses_the_recorded_sampler_and_pruner(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    create_study("s", settings(sampler="random", pruner="median"), storage)
    study, recorded = load_study("s", storage)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert recorded == settings(sampler="random", pruner="median")


def test_budget_counts_finished_and_queued_trials_but_not_dead_workers(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/b.db")
    study, _ = create_study("b", settings(n_trials=2), storage)
    study.tell(study.ask(), 0.5)
    dead = study.ask()
    study.tell(dead, state=optuna.trial.TrialState.FAIL)  # a stale trial: no "failed" status
    assert budget_left(study, settings(n_trials=2), 0.0)
    study.enqueue_trial({})
    study.tell(study.ask(), 0.6)
    assert not budget_left(study, settings(n_trials=2), 0.0)
    study.enqueue_trial({})  # a retry queued after the budget was reached still runs
    assert budget_left(study, settings(n_trials=2), 0.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"sampler": "grid"}, "sampler='grid' is not allowed"), ({"pruner": "x"}, "pruner='x'"), ({"n_trials": 0}, "n_trials=0"),
     ({"epochs": 0}, "epochs=0 must be at least 1"),
     ({"val_fraction": 0.6, "cv_top_k": 3}, r"val_fraction=0.6 leaves 1 fold, too few to cross-validate the top 3: give val_fraction <= 0.5, or cv_top_k=0"),
     ({"n_trials": 6, "cv_top_k": 3}, r"cv_top_k=3 needs at least 9 trials"),
     ({"n_trials": 4, "cv_top_k": 1, "cv_folds": 5}, r"n_trials=4 leaves no search trial beside the 4 fold trials")],
)
def test_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        settings(**changes)


def test_a_hold_out_over_half_is_allowed_without_cross_validation(tmp_path):
    assert settings(val_fraction=0.6, cv_top_k=0).folds == 1
    assert settings(val_fraction=0.6, n_trials=30).fold_trials == 0, "as the budget allows: one fold allows none"
    old = optuna.create_study(study_name="half", storage=open_storage(f"sqlite:///{tmp_path}/h.db"))
    for key, value in {**asdict(settings(val_fraction=0.6, n_trials=8, cv_top_k=0)), "cv_top_k": 3}.items():
        if key != "cv_folds":  # as a study made before such settings were refused recorded them
            old.set_user_attr(key, value)
    assert StudySettings.from_study(old).cv_top_k == 0, "it still loads, as the study it was: never cross-validated"


def test_an_old_study_reads_its_fold_trials_as_beyond_its_search_budget(tmp_path):
    old = optuna.create_study(study_name="old", storage=open_storage(f"sqlite:///{tmp_path}/o.db"))
    for key, value in asdict(settings(n_trials=8, cv_top_k=0)).items():
        if key not in ("cv_top_k", "cv_folds"):  # recorded before either was
            old.set_user_attr(key, value)
    recorded = StudySettings.from_study(old)
    assert (recorded.cv_top_k, recorded.cv_folds, recorded.search_trials, recorded.n_trials) == (3, 5, 8, 20)
    extend_budget(old, n_trials=24)
    assert StudySettings.from_study(old).search_trials == 12, "extend records the total and the split from then on"


def test_the_budget_says_what_it_buys():
    assert settings(n_trials=12, epochs=10).budget_text() == (
        "12 trials of 10 epochs (at most 120 epochs): 8 search trials, then the top 2 re-trained on 2 more folds each (4 fold trials)")
    assert settings(n_trials=3).budget_text() == "3 trials of 3 epochs (at most 9 epochs): 3 search trials, not cross-validated"
    assert settings(timeout_s=60).budget_text() == "trials of 3 epochs until 60 s have passed, not cross-validated"


def test_cli_create_list_enqueue_delete(pg_url, fashion_subset, capsys, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"arch": ["vgg8"], "width": 0.125}))
    args = ["--study", "cli", "--storage", pg_url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset),
            "--epochs", "2", "--space", str(space), "--n-trials", "4"]
    assert main(["study", "create", *args]) == 0
    assert main(["study", "create", *args]) == 0
    assert main(["study", "enqueue", "--study", "cli", "--storage", pg_url, "--preset", "resnet9-davidnet"]) == 0
    assert main(["study", "list", "--storage", pg_url]) == 0
    out = capsys.readouterr().out
    # The warm start queued vgg8-reference (the one preset this space allows), enqueue resnet9-davidnet.
    assert "created: study 'cli'" in out and "exists: study 'cli'" in out and "cli\ttrials=2" in out
    study, recorded = load_study("cli", open_storage(pg_url))
    assert recorded.space == {"arch": ["vgg8"], "width": 0.125} and recorded.n_trials == 4
    assert main(["study", "enqueue", "--study", "cli", "--storage", pg_url, "--preset", "nope"]) == 2
    assert main(["study", "delete", "--study", "cli", "--storage", pg_url]) == 0


def test_create_without_a_subset_says_it_builds_the_default_one_first(pg_url, fashion_subset, tmp_path, capsys, monkeypatch):
    import kilotune.subset.features

    cache = tmp_path / "cache" / "fashion-mnist-max-sum.json"
    built: list[str] = []

    def build(dataset):  # stands in for minutes of extractor training; the message is what is tested
        built.append(dataset.name)
        return fashion_subset

    monkeypatch.setattr(kilotune.subset.features, "default_subset_path", lambda name, *a, **k: cache)
    monkeypatch.setattr(kilotune.subset.features, "ensure_default_subset", build)
    assert main(["study", "create", "--study", "random-default", "--storage", pg_url, "--dataset", "fashion-mnist", "--epochs", "2"]) == 0
    assert built == ["fashion-mnist"] and "building the default subset" not in capsys.readouterr().err, "random trains no extractor"
    monkeypatch.setattr(kilotune.subset.features, "DEFAULT_METHOD", "max-sum")  # a default that needs features
    assert main(["study", "create", "--study", "nosubset", "--storage", pg_url, "--dataset", "fashion-mnist", "--epochs", "2"]) == 0
    assert built == ["fashion-mnist"] * 2
    assert "building the default subset of fashion-mnist once" in capsys.readouterr().err
    cache.parent.mkdir()
    cache.write_text("{}")  # cached now: no message
    assert main(["study", "create", "--study", "nosubset2", "--storage", pg_url, "--dataset", "fashion-mnist", "--epochs", "2"]) == 0
    assert "building the default subset" not in capsys.readouterr().err


def test_space_file_with_a_wrong_name_fails_study_create(pg_url, fashion_subset, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("archh: [vgg8]\n")
    code = main(["study", "create", "--study", "bad", "--storage", pg_url, "--dataset", "fashion-mnist",
                 "--subset", str(fashion_subset), "--space", str(space)])
    assert code == 2 and "space: unknown name 'archh'" in capsys.readouterr().err
    assert "bad" not in [s.study_name for s in optuna.get_all_study_summaries(open_storage(pg_url))]


def test_prune_checks_only_where_the_pruner_can_decide():
    assert [e for e in range(1, 31) if settings(epochs=30).may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 41) if settings(epochs=40, pruner="hyperband").may_prune_at(e)] == [4, 12, 36]
    assert [e for e in range(1, 31) if settings(epochs=30, pruner="successive-halving").may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 11) if settings(epochs=10, pruner="median").may_prune_at(e)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert not any(settings(epochs=10, pruner="none").may_prune_at(e) for e in range(1, 11))


@pytest.mark.parametrize("pruner", ["hyperband", "successive-halving"])
def test_rung_pruners_decide_only_at_their_rungs(pruner):
    """The rung rule above matches what Optuna's pruners actually do: a trial that reports
    worse than every other at each epoch is pruned at a rung epoch, never in between."""
    study = optuna.create_study(direction="maximize", pruner=settings(epochs=30, pruner=pruner).pruner_for(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned_at = []
    for i in range(60):
        trial = study.ask()
        for epoch in range(1, 31):
            trial.report(float(i % 7) / 10 + epoch / 100, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(i % 7))
    assert pruned_at and set(pruned_at) <= {3, 9, 27}


def test_small_budgets_get_an_early_first_rung_and_a_short_tpe_start_up():
    """The rungs are at 1/9 of a trial times powers of 3, and TPE models from the 6th trial (see sampler_for)."""
    assert [e for e in range(1, 10) if settings(epochs=9).may_prune_at(e)] == [1, 3, 9]
    assert [e for e in range(1, 16) if settings(epochs=15).may_prune_at(e)] == [2, 6]
    assert settings(epochs=9)._brackets == 3 and settings(epochs=15)._brackets == 2 and settings(epochs=2)._brackets == 1
    assert settings(epochs=9).pruner_for()._min_resource == 1
    for pruner in ("hyperband", "median", "none"):
        assert settings(epochs=30, pruner=pruner).sampler_for()._n_startup_trials == 5


def test_a_bare_postgresql_url_opens_with_the_installed_driver(pg_url):
    bare = "postgresql://" + pg_url.split("://", 1)[1]  # what users type; SQLAlchemy 2.1 would pick psycopg 3
    storage = open_storage(bare)
    assert storage.engine.dialect.driver == "psycopg2"
    study, created = create_study("bare-url", settings(), storage)
    assert created and study.study_name == "bare-url"


def test_claim_counts_the_budget_as_the_trials_say_and_takes_queued_trials_first(pg_url):
    storage = open_storage(pg_url)
    study, _ = create_study("claims", settings(n_trials=6, cv_top_k=0), storage)
    for state, status in [(TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"), (TrialState.FAIL, "failed"),
                          (TrialState.FAIL, "interrupted"), (TrialState.FAIL, "returned")]:
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.set_user_attr("status", status)
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # running
    study.enqueue_trial({"lr": 0.25})  # a queued retry or preset
    counted, waiting = _budget_rows(storage, study._study_id)
    trials = study.get_trials()
    assert counted == sum(counts_toward_budget(t) for t in trials) == 5, "interrupted and returned trials are retried, not counted"
    assert waiting == [t._trial_id for t in trials if t.state == TrialState.WAITING]

    queued = claim_trial(study, study_settings := load_study("claims", storage)[1], storage, time.time())
    assert queued.number == 6 and queued.suggest_float("lr", 1e-3, 1.0) == 0.25, "the queued trial comes first"
    fresh = claim_trial(study, study_settings, storage, time.time())
    assert fresh.number == 7 and study.get_trials()[7].state == TrialState.RUNNING
    assert 1e-3 <= fresh.suggest_float("lr", 1e-3, 1.0) <= 1.0, "a claimed trial samples and stores its params"
    assert claim_trial(study, study_settings, storage, time.time()) is None, "6 counted: the budget is spent"
    assert budget_left(study, study_settings, time.time()) is False, "the generic check agrees"


def test_new_studies_start_with_the_presets_projected_into_their_space(pg_url, fashion_subset, capsys):
    storage = open_storage(pg_url)
    base = ["--storage", pg_url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset), "--epochs", "4", "--space", "small"]
    assert main(["study", "create", "--study", "warm", *base]) == 0
    assert "warm start: skipped preset wrn-cutmix: arch='wrn' is outside the space" in capsys.readouterr().err
    queued = load_study("warm", storage)[0].get_trials()
    assert [(t.user_attrs["preset"], t.state) for t in queued] == [("vgg8-reference", TrialState.WAITING), ("resnet9-davidnet", TrialState.WAITING)]
    configs = [TrainConfig.from_dict(t.user_attrs["preset_config"]) for t in queued]
    assert configs == [PRESETS["vgg8-reference"].replace(width=0.5, epochs=4), PRESETS["resnet9-davidnet"].replace(width=0.5, epochs=4)]

    assert main(["study", "create", "--study", "warm", *base]) == 0
    assert len(load_study("warm", storage)[0].get_trials()) == 2, "joining a study queues nothing"
    assert main(["study", "create", "--study", "cold", *base, "--no-warm-start"]) == 0
    assert load_study("cold", storage)[0].get_trials() == []
    assert main(["study", "create", "--study", "tight", *base, "--n-trials", "1"]) == 0
    assert [t.user_attrs["preset"] for t in load_study("tight", storage)[0].get_trials()] == ["vgg8-reference"]
    assert "skipped preset resnet9-davidnet: the budget of 1 trial is queued" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_the_search_trials_spent_the_budget_hands_out_fold_trials_of_a_companion_study(backend, pg_url, tmp_path):
    storage = open_storage(pg_url if backend == "postgresql" else str(tmp_path / "cv.journal"))
    study, _ = create_study(f"cv-{backend}", settings(n_trials=11, cv_top_k=2, cv_folds=5), storage)
    recorded = load_study(study.study_name, storage)[1]
    assert (recorded.search_trials, recorded.fold_trials) == (3, 8)
    running = [claim_trial(study, recorded, storage, time.time()) for _ in range(3)]
    for trial in running[:2]:
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.set_user_attr("config", TrainConfig(epochs=3).to_dict())
        study.tell(trial, 0.5 + trial.number / 100)
    assert claim_trial(study, recorded, storage, time.time()) is None, "no fold trial while a search trial runs: it may enter the top"
    last = running[2]
    last.suggest_float("lr", 1e-3, 1.0)
    last.set_user_attr("config", TrainConfig(epochs=3).to_dict())
    study.tell(last, 0.6)
    folds = []
    while (trial := claim_trial(study, recorded, storage, time.time())) is not None:
        assert trial.study.study_name == f"cv-{backend}.cv", "fold trials live in the companion study"
        trial.suggest_float("lr", 1e-3, 1.0)
        trial.study.tell(trial, 0.99)  # better than any search trial, on its fold
        folds.append((trial.user_attrs["cv_of"], trial.user_attrs["fold"]))
        assert len(folds) <= 8, "claims never end"
    assert sorted(folds) == [(n, f) for n in (1, 2) for f in (1, 2, 3, 4)], "the top 2, on folds 1-4"
    assert len(study.get_trials()) == 3 and study.best_trial.number == 2, "the study's best trial is a search trial"
    if backend == "postgresql":
        assert _budget_rows(storage, study._study_id) == (3, [])
    assert not budget_left(study, recorded, time.time())

    plain, _ = create_study(f"no-cv-{backend}", settings(n_trials=1, cv_top_k=0), storage)
    plain_settings = load_study(plain.study_name, storage)[1]
    plain.tell(claim_trial(plain, plain_settings, storage, time.time()), 0.5)
    assert claim_trial(plain, plain_settings, storage, time.time()) is None, "cv_top_k=0: no fold trials"


def test_create_with_other_settings_names_them_and_refuses_unless_told(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/d.db")
    create_study("d", settings(n_trials=12, space={"arch": ["vgg8"]}), storage)
    same, created = create_study("d", settings(n_trials=12, space={"arch": ("vgg8",)}, subset_path="/elsewhere.json"), storage)
    assert not created, "the same settings (a tuple is the list JSON stores; the subset file at another path) join"
    with pytest.raises(ValueError) as refused:
        create_study("d", settings(n_trials=24, epochs=5, space={"arch": ["vgg8"]}), storage)
    message = str(refused.value)
    assert "study 'd' exists with other settings: epochs=3 (given 5), n_trials=12 (given 24);" in message
    assert "--keep-settings" in message and "\n" not in message
    with pytest.raises(ValueError, match="n_trials=12 \\(given 24\\).*or `kilotune study extend` to change its budget"):
        create_study("d", settings(n_trials=24, space={"arch": ["vgg8"]}), storage)
    assert "space={'arch': ['vgg8']} (given {})" in str(pytest.raises(ValueError, create_study, "d", settings(n_trials=12), storage).value)
    kept, _ = create_study("d", settings(n_trials=24, epochs=5), storage, keep_settings=True)
    assert StudySettings.from_study(kept).n_trials == 12 and kept.user_attrs["epochs"] == 3, "nothing stored changed"
    with pytest.raises(ValueError, match="this subset has checksum"):
        create_study("d", settings(subset_checksum="sha256:cc"), storage, keep_settings=True)


def test_an_extension_is_recorded_and_running_workers_follow_it(pg_url):
    storage = open_storage(pg_url)
    study, _ = create_study("grow", settings(n_trials=1), storage)
    stale = load_study("grow", storage)[1]  # what a running worker loaded when it started
    first = claim_trial(study, stale, storage, time.time())
    study.tell(first, 0.5)
    assert claim_trial(study, stale, storage, time.time()) is None, "1 of 1 spent"
    entry = extend_budget(study, n_trials=3)
    assert entry["from"] == {"n_trials": 1, "timeout_s": None} and entry["to"] == {"n_trials": 3, "timeout_s": None}
    assert [claim_trial(study, stale, storage, time.time()) is not None for _ in range(3)] == [True, True, False]
    extend_budget(study, timeout_s=0.001)  # a timeout, from the study's creation, has passed: nothing more
    extend_budget(study, n_trials=10)
    assert claim_trial(study, stale, storage, time.time()) is None
    assert budget_left(study, stale, time.time()) is False, "the generic check reads the budget too"
    history = optuna.load_study(study_name="grow", storage=storage).user_attrs["budget_history"]
    assert [h["to"] for h in history] == [{"n_trials": 3, "timeout_s": None}, {"n_trials": 3, "timeout_s": 0.001},
                                          {"n_trials": 10, "timeout_s": 0.001}]  # fmt: skip
    with pytest.raises(ValueError, match="n_trials=0 must be at least 1"):
        extend_budget(study, n_trials=0)
    with pytest.raises(ValueError, match="nothing to change"):
        extend_budget(study)
    assert len(optuna.load_study(study_name="grow", storage=storage).user_attrs["budget_history"]) == 3, "a refused change is not recorded"


def test_study_extend_command(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/e.db"
    create_study("e", settings(n_trials=4), open_storage(url))
    assert main(["study", "extend", "--study", "e", "--storage", url, "--n-trials", "8"]) == 0
    assert "budget 4 -> 8 trials" in capsys.readouterr().out
    assert optuna.load_study(study_name="e", storage=url).user_attrs["n_trials"] == 8
    assert main(["study", "extend", "--study", "e", "--storage", url, "--timeout", "-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kilotune study: error: timeout_s=-5.0 must be positive"


def test_study_create_again_with_another_budget_is_one_line_naming_it(tmp_path, fashion_subset, capsys):
    url = f"sqlite:///{tmp_path}/again.db"
    base = ["study", "create", "--study", "s", "--storage", url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset), "--epochs", "4"]
    assert main([*base, "--n-trials", "12"]) == 0 and main([*base, "--n-trials", "12"]) == 0
    assert capsys.readouterr().out.splitlines() == ["created: study 's'", "exists: study 's'"]
    assert main([*base, "--n-trials", "24"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("kilotune study: error: study 's' exists with other settings: n_trials=12 (given 24);")
    assert main([*base, "--n-trials", "24", "--keep-settings"]) == 0
    assert optuna.load_study(study_name="s", storage=url).user_attrs["n_trials"] == 12


def test_a_run_given_no_budget_continues_the_studys_own(tmp_path, fashion_subset):
    """``kilotune run`` without --n-trials/--timeout joins a study with its recorded budget; a new one gets the default."""
    from kilotune.search.create import create_from_args
    from kilotune.workers.options import run_arguments

    def args(**given):
        return run_arguments({"study": "s", "storage": f"sqlite:///{tmp_path}/run.db", "dataset": "fashion-mnist",
                              "subset": str(fashion_subset), "epochs": 4, "warm_start": False, **given})  # fmt: skip

    _, created = create_from_args(args(n_trials=12), default_trials=30)
    joined = args()
    study, again = create_from_args(joined, default_trials=30)
    assert created and not again and (joined.n_trials, joined.timeout) == (12, None), "the recorded budget, not 30"
    assert study.user_attrs["n_trials"] == 12
    new = args(study="fresh")
    create_from_args(new, default_trials=30)
    assert new.n_trials == 30
    with pytest.raises(ValueError, match=r"n_trials=12 \(given 24\)"):  # a budget given is still checked
        create_from_args(args(n_trials=24), default_trials=30)


def attempt_killed(study: optuna.Study, *, trains: bool) -> optuna.trial.FrozenTrial:
    """The next attempt (a queued retry, else a new trial) dies running: FAIL, as ``fail_stale_trials`` leaves it."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1.0)
    trial.set_user_attr("config", {"lr": trial.params["lr"]})
    for key, value in {"worker": "host:1", "worker_id": "w1", "status": "running"}.items():
        trial.set_user_attr(key, value)
    if trains:
        trial.report(0.5, len(trial._cached_frozen_trial.intermediate_values) + 1)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[-1]


def test_a_retry_is_queued_without_the_dead_attempts_worker_and_status():
    study = optuna.create_study(direction="maximize")
    RetryKilledTrials()(study, attempt_killed(study, trains=True))
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.intermediate_values == {1: 0.5}
    assert retry.user_attrs == {"config": {"lr": study.trials[0].params["lr"]}}, "no worker, worker_id or status of the dead attempt"
    assert RetryKilledTrials.retry_history(retry) == [0]


def test_attempts_killed_before_training_do_not_use_up_the_retries():
    study = optuna.create_study(direction="maximize")
    callback = RetryKilledTrials(max_retry=3)
    for _ in range(6):
        callback(study, attempt_killed(study, trains=False))
    callback(study, attempt_killed(study, trains=True))
    assert study.trials[-1].state == TrialState.WAITING, "six kills before training and one after: still retried"
    assert len({t.params["lr"] for t in study.trials}) == 1


def test_a_configuration_killed_after_training_too_often_is_given_up_with_a_reason():
    study = optuna.create_study(direction="maximize")
    callback = RetryKilledTrials(max_retry=3)
    for kill in range(1, 5):
        callback(study, attempt_killed(study, trains=True))
        assert study.trials[-1].state == (TrialState.WAITING if kill <= 3 else TrialState.FAIL)
    record = study.trials[-1]
    assert record.user_attrs["status"] == "failed" and "killed after training 4 times" in record.user_attrs["fail_reason"]
    assert "[0, 1, 2, 3]" in record.user_attrs["fail_reason"] and counts_toward_budget(record)
    assert not [t for t in study.trials if t.state == TrialState.WAITING]
    assert sum(counts_toward_budget(t) for t in study.trials) == 1, "one configuration, one trial of the budget"


def test_opening_a_restarting_server_waits_for_it(monkeypatch, pg_url):
    # A worker that compose starts while PostgreSQL restarts met "server closed the connection
    # unexpectedly" and exited 2 (the chaos test, issue 17).
    import sqlalchemy

    import kilotune.search.study as study_module

    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    answers = ["server closed the connection unexpectedly", "the database system is starting up"]
    real = study_module.RDBStorage

    def restarting(*args, **kwargs):
        if answers:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception(answers.pop(0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", restarting)
    assert isinstance(open_storage(pg_url), real) and answers == []


def test_the_budget_reads_wait_out_a_restarting_database(monkeypatch):
    """The slow suite's restart test: a worker read the study's timeout between trials while the
    server restarted and exited with a traceback (StorageInternalError)."""
    from kilotune.search import study as study_module

    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    study.set_user_attr("timeout_s", 60.0)
    study.set_user_attr("n_trials", 7)
    real, calls = storage.get_study_user_attrs, []

    def restarting(study_id):
        calls.append(study_id)
        if len(calls) % 2:  # every other read finds the server down
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        return real(study_id)

    monkeypatch.setattr(storage, "get_study_user_attrs", restarting)
    assert study_timed_out(study, settings(), time.time()) is False
    assert current_budget(study, settings()).n_trials == 7
    assert len(calls) == 4


def test_a_worker_waits_for_a_server_that_refuses_connections_while_it_restarts(monkeypatch, pg_url):
    """Issue 25: a worker started while PostgreSQL restarts exited at once with "connection
    refused"; a command a user types still fails at once on a server that is not there."""
    import sqlalchemy

    import kilotune.search.study as study_module

    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    refused = 'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    answers, real = [refused, refused], study_module.RDBStorage

    def down_then_up(*args, **kwargs):
        if answers:
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception(answers.pop(0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", down_then_up)
    with pytest.raises(ValueError, match="Connection refused"):
        open_storage(pg_url)
    assert isinstance(open_storage(pg_url, patient=True), real) and answers == []


@pytest.mark.parametrize("command", [
    ["export", "--study", "s", "--out", "best.json"], ["report", "--study", "s", "--out", "r.html"], ["study", "list"],
    ["study", "delete", "--study", "s"], ["study", "extend", "--study", "s", "--n-trials", "3"], ["worker", "--study", "s"],
])  # fmt: skip
def test_a_command_that_reads_a_study_creates_no_database(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    missing = tmp_path / "nonexistent.db"
    assert main([*command, "--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{missing} does not exist" in err, err
    assert not missing.exists() and not (tmp_path / "best.json").exists()


def test_a_typo_in_the_dataset_leaves_no_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILOTUNE_STORAGE", raising=False)
    assert main(["run", "--dataset", "fashon-mnist", "--n-trials", "2", "--epochs", "1"]) == 2
    assert "unknown dataset 'fashon-mnist'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "no kilotune.db, nothing else"


def test_objective_epochs_over_the_epochs_are_refused_and_the_default_fits_short_trials(tmp_path):
    """A trial's value is the mean of its last ``objective_epochs`` epochs: more than it trains was accepted."""
    assert settings(epochs=2).objective_epochs == 2 and settings(epochs=5).objective_epochs == 3
    with pytest.raises(ValueError, match=r"^objective_epochs=4 must be from 1 to the 3 epochs a trial trains$"):
        settings(epochs=3, objective_epochs=4)
    study, _ = create_study("old", settings(epochs=2), open_storage(f"sqlite:///{tmp_path}/old.db"))
    study.set_user_attr("objective_epochs", 3)  # as a study made before the refusal records it
    assert StudySettings.from_study(study).objective_epochs == 2, "it loads, valued by the mean of every epoch as before"
