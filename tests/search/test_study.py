"""The study against real storages (PostgreSQL, the embedded SQLite default): created, joined, loaded, refused."""

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.settings import StudySettings
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study, load_study
from kilotune.search.presets import PRESETS
from kilotune.training.config import TrainConfig
from tests.conftest import REPO, wait_for_exit
from tests.search.test_settings import settings


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
        "import sys; from kilotune.search.storage import open_storage; from kilotune.search.study import create_study; from tests.search.test_settings import settings\n"
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
    from kilotune.search.create import RUN_TRIALS, create, run_options

    def options(**given):
        return run_options({"study": "s", "storage": f"sqlite:///{tmp_path}/run.db", "dataset": "fashion-mnist",
                            "subset": str(fashion_subset), "epochs": 4, "warm_start": False, **given})  # fmt: skip

    _, created = create(options(n_trials=12))
    joined = options()
    study, again = create(joined)
    assert created and not again and (joined.settings.n_trials, joined.settings.timeout_s) == (12, None), "the recorded budget, not 30"
    assert study.user_attrs["n_trials"] == 12
    new = options(study="fresh")
    create(new)
    assert new.settings.n_trials == RUN_TRIALS == 30
    with pytest.raises(ValueError, match=r"n_trials=12 \(given 24\)"):  # a budget given is still checked
        create(options(n_trials=24))


def test_a_typo_in_the_dataset_leaves_no_database(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILOTUNE_STORAGE", raising=False)
    assert main(["run", "--dataset", "fashon-mnist", "--n-trials", "2", "--epochs", "1"]) == 2
    assert "unknown dataset 'fashon-mnist'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "no kilotune.db, nothing else"




def test_a_study_that_records_a_pruner_this_kilotune_lacks_is_one_clear_line(tmp_path, capsys):
    """A pruner added on another branch (or removed here) names itself, never a KeyError."""
    url = f"sqlite:///{tmp_path}/p.db"
    study, _ = create_study("p", settings(), open_storage(url))
    study.set_user_attr("pruner", "patient-median")
    with pytest.raises(ValueError, match=r"^pruner='patient-median' is not allowed; choose one of hyperband, successive-halving, median or none$"):
        load_study("p", open_storage(url))
    assert main(["export", "--study", "p", "--storage", url, "--out", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err == "kilotune export: error: pruner='patient-median' is not allowed; choose one of hyperband, successive-halving, median or none\n"


def test_a_study_carries_its_subset_and_an_old_one_gets_it_when_joined(pg_url, fashion_subset):
    """Issue 28: ``study create`` stores the subset file's content in the study (a system
    attribute, off the user attributes every claim reads); a study made before without it gets
    it from a ``create`` on the same data, and never from one on other data."""
    from kilotune.search.attrs import SUBSET_CONTENT
    from kilotune.search.study import stored_subset
    from kilotune.subset.subsetfile import load_subset

    storage, subset = open_storage(pg_url), load_subset(fashion_subset)
    base = ["--storage", pg_url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset), "--epochs", "2", "--no-warm-start"]
    assert main(["study", "create", "--study", "carries", *base]) == 0
    stored = stored_subset("carries", storage)
    assert stored == subset.to_dict() and len(stored["indices"]) == 100
    assert SUBSET_CONTENT not in optuna.load_study(study_name="carries", storage=storage).user_attrs

    recorded = settings(dataset_checksum=subset.dataset_checksum, subset_path=str(fashion_subset), subset_checksum=subset.checksum)
    create_study("old", recorded, storage)  # as before: the settings only
    assert stored_subset("old", storage) is None
    with pytest.raises(ValueError, match="this subset has checksum"):
        create_study("old", settings(dataset_checksum=subset.dataset_checksum, subset_checksum="sha256:cc"), storage, subset_content={"x": 1})
    assert stored_subset("old", storage) is None, "a subset that is not the study's is never stored"
    create_study("old", recorded, storage, subset_content=stored)
    assert stored_subset("old", storage) == stored
