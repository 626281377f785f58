"""The ``kilotune`` command as users run it: help, errors as one line, the main job."""

import json
import re
import socket
import subprocess
import sys

import optuna
import pytest
from optuna_dashboard import get_note

from kilotune.cli.main import main
from kilotune.models.names import ignored_fields
from kilotune.search.export import export_trial, validation_text
from kilotune.search.storage import open_storage
from kilotune.search.winner import StudyTrials
from tests.conftest import REPO, printed_best_config, run_bounded

SUBCOMMANDS = {"train", "worker", "run", "dashboard", "subset", "study", "report", "export", "retrain"}


@pytest.mark.slow
def test_help_lists_every_subcommand_with_one_line():
    out = subprocess.run([sys.executable, "-m", "kilotune", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    block = out.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = re.findall(r"^    (\S+)", block, re.M)
    assert set(listed) == SUBCOMMANDS and len(listed) == len(SUBCOMMANDS), out.stdout
    # One line each, but for argparse's wrap of a name longer than its column (dashboard).
    assert len(block.strip().splitlines()[1:]) == len(SUBCOMMANDS) + sum(len(n) > 8 for n in listed), "each subcommand on one line"
    code = "import sys; from kilotune.cli.main import build_parser; build_parser(); print('keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout.strip() == "False"


def test_missing_dataset_is_one_line_naming_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KILOTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert main(["train", "--dataset", "cifar10", "--epochs", "1"]) == 2
    notice, err = capsys.readouterr().err.strip().splitlines()  # the line before the fetch, the error
    assert notice.startswith(f"CIFAR-10 not found in {tmp_path}") and "fetching it into" in notice
    assert err.startswith("kilotune train: error: CIFAR-10 not found") and "offline; put cifar-10-batches-py/ or cifar-10-python.tar.gz in" in err


@pytest.mark.parametrize(
    ("config", "message"),
    [({"learning_rate": -1}, "learning_rate=-1.0 is out of range"), ({"lr": 0.1}, "unknown config key(s) lr; allowed: activation, arch,")],
)
def test_bad_config_file_is_one_line(tmp_path, capsys, config, message):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    assert main(["train", "--config", str(path), "--dataset", "fashion-mnist"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_train_command_on_real_fashion_mnist(tmp_path, fashion_subset):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"arch": "vgg8", "width": 0.125, "epochs": 1, "batch_size": 32}))
    out = run_bounded([sys.executable, "-m", "kilotune", "train", "--config", str(cfg), "--dataset", "fashion-mnist",
                       "--train-size", "100", "--save", str(tmp_path / "m.keras")], cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    accuracy = float(last.split("test accuracy ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and (tmp_path / "m.keras").exists()


def test_train_names_the_presets_for_an_unknown_one(capsys):
    assert main(["train", "--preset", "vgg9", "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown preset 'vgg9'" in err and "vgg8-reference" in err


@pytest.mark.slow
def test_train_a_preset_on_a_subset_with_every_image(tmp_path, fashion_subset):
    """Issue 19.5: no --preset, no --subset, and "validation accuracy nan" with --val-fraction 0."""
    out = run_bounded([sys.executable, "-m", "kilotune", "train", "--preset", "vgg8-reference", "--subset", str(fashion_subset),
                       "--dataset", "fashion-mnist", "--val-fraction", "0", "--epochs", "1"], cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "training vgg8 on 100 fashion-mnist images, no validation hold-out" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy ") and "nan" not in out.stdout.lower(), last


@pytest.mark.slow
def test_run_is_the_main_job_on_the_embedded_default(tmp_path, fashion_subset):
    """The main job with its cross-validation, as issue 25 asks: the budget bounds every trained
    epoch and the header says how it is split; the study's best trial is a search trial; the
    dashboard's note, the closing lines and export name one winner."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none"}))
    out = run_bounded(
        [sys.executable, "-m", "kilotune", "run", "--dataset", "fashion-mnist", "--subset", str(fashion_subset),
         "--space", str(space), "--epochs", "2", "--n-trials", "6", "--cv-top-k", "1", "--workers", "2", "--preset", "vgg8-reference"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    header = out.stdout.splitlines()[0]
    assert "budget 6 trials of 2 epochs (at most 12 epochs): 4 search trials, the top 1 of them re-trained on 2 more folds each" in header
    assert "best configuration (trial" in out.stdout and '"arch": "vgg8"' in out.stdout
    storage = open_storage(f"sqlite:///{tmp_path}/kilotune.db")
    study = optuna.load_study(study_name="kilotune", storage=storage)
    folds = optuna.load_study(study_name="kilotune.cv", storage=storage).trials
    printed = printed_best_config(out.stdout)
    exported = export_trial(study, storage)
    assert printed == exported["config"], "the closing best configuration is the one export writes"
    if ignored := ignored_fields(printed["arch"]):  # and says which of its fields the arch does not read
        assert f"({printed['arch']} ignores {' and '.join(ignored)}: the export carries every field" in out.stdout
    assert out.stdout.rstrip().endswith("kilotune retrain best.json --total-epochs 54"), "the closing lines' next step: a long final training"
    winner = exported["provenance"]["trial"]
    assert f"best configuration (trial {winner}, validation accuracy {validation_text(exported['provenance'])})" in out.stdout
    assert f"## kilotune winner: trial {winner}" in get_note(study), "the dashboard shows the cross-validated winner"
    assert "cv_of" not in study.best_trial.user_attrs, "the study's best trial is a search trial"
    trials = study.trials
    candidate = StudyTrials.read(study, storage).ranked()[0].number
    assert len(trials) == 4 and len(folds) == 2 and {t.user_attrs["cv_of"] for t in folds} == {candidate}
    # The one-standard-error rule may keep the preset over a candidate that leads it within the noise.
    assert winner == candidate or trials[winner].user_attrs.get("preset") == "vgg8-reference", (winner, candidate)
    assert sum(len(t.intermediate_values) for t in [*trials, *folds]) <= 12, "every trained epoch inside the budget"
    # The event before " | ", not the summary after it: that names "fold trials done" on any trial's line.
    fold_lines = {m.group(1) for m in re.finditer(r"^\[[\d:]+\] fold trial (\d+) \(trial \d+ on fold \d+\) complete ", out.stdout, re.M)}
    assert fold_lines == {str(t.number) for t in folds}, ("fold trials named as such", fold_lines)
    assert trials[0].user_attrs["preset"] == "vgg8-reference" and trials[0].state == optuna.trial.TrialState.COMPLETE, "never pruned"
    assert trials[0].user_attrs["config"]["batch_norm"] is False


@pytest.fixture(scope="module")
def exported_study(fashion_subset, tmp_path_factory):
    """A one-trial study on the real Fashion-MNIST subset and its export, the way a worker records it."""
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage
    from kilotune.search.study import create_study
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.subsetfile import load_subset
    from kilotune.training.config import TrainConfig

    dataset, subset = load_dataset("fashion-mnist"), load_subset(fashion_subset)
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'x.db'}"
    settings = StudySettings(dataset=dataset.name, dataset_checksum=dataset.checksum, subset_path=str(subset.path),
                             subset_checksum=subset.checksum, epochs=1, n_trials=1, created_at="2026-01-01T00:00:00+00:00")
    study, _ = create_study("s", settings, open_storage(url))
    trial = study.ask()
    trial.suggest_categorical("arch", ["vgg8"])
    for key, value in {"config": TrainConfig(arch="vgg8", width=0.125, epochs=1).to_dict(), "status": "complete"}.items():
        trial.set_user_attr(key, value)
    trial.report(0.4, 1)
    study.tell(trial, 0.4)
    best = tmp_path_factory.mktemp("cli") / "best.json"
    assert main(["export", "--study", "s", "--storage", url, "--out", str(best)]) == 0
    return url, best


def test_export_names_the_long_final_training_as_the_next_step(exported_study, tmp_path, capsys):
    """A 1-epoch trial's winner: retrain it for the 54 epochs that measured well, not the trial's 1."""
    url, _ = exported_study
    out = tmp_path / "again.json"
    assert main(["export", "--study", "s", "--storage", url, "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"retrain it on all chosen images: kilotune retrain {out} --total-epochs 54"


@pytest.mark.parametrize("command", ["export", "report", "retrain"])
def test_an_output_path_under_a_regular_file_is_one_line_naming_it(command, exported_study, tmp_path, capsys):
    url, best = exported_study
    regular = tmp_path / "FILE"
    regular.write_text("not a directory")
    argv = {
        "export": ["export", "--study", "s", "--storage", url, "--out", str(regular / "best.json")],
        "report": ["report", "--study", "s", "--storage", url, "--out", str(regular / "report.html")],
        "retrain": ["retrain", str(best), "--out-dir", str(regular / "rt")],
    }[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kilotune {command}: error:") and "\n" not in err, err
    assert str(regular) in err and "Traceback" not in err
    assert regular.read_text() == "not a directory", "nothing already stored is touched"


def test_max_trials_zero_is_refused(pg_url, capsys):
    assert main(["worker", "--study", "any", "--storage", pg_url, "--max-trials", "0"]) == 2
    assert "kilotune worker: error: argument --max-trials: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_an_unwritable_checkpoint_directory_stops_the_worker_before_it_takes_a_trial(tmp_path, monkeypatch, capsys):
    regular = tmp_path / "FILE"
    regular.write_text("")
    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(regular / "ckpt"))
    db = tmp_path / "x.db"
    assert main(["worker", "--study", "any", "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kilotune worker: error: checkpoint directory") and str(regular / "ckpt") in err and "\n" not in err
    assert not db.exists(), "checked before the storage is opened, so before any trial is taken"


# Bad arguments the parser refuses (issue 25): one line naming the option, the value and what is
# allowed, before Keras, TensorFlow or Optuna load and before anything is opened or written.
REFUSED = {
    "retrain bset.json": (["retrain", "bset.json"], "kilotune retrain: error: argument export: no such file: 'bset.json'"),
    "retrain a directory": (["retrain", "."], "kilotune retrain: error: argument export: '.' is a directory, not a file"),
    "retrain --seeds 0": (["retrain", "FILE", "--seeds", "0"], "argument --seeds: must be a whole number >= 1, got '0'"),
    "retrain --epochs 0": (["retrain", "FILE", "--epochs", "0"], "argument --epochs: must be a whole number >= 1, got '0'"),
    "retrain --snapshots -1": (["retrain", "FILE", "--snapshots", "-1"], "argument --snapshots: must be a whole number >= 0, got '-1'"),
    "retrain --out-dir a file": (["retrain", "FILE", "--out-dir", "FILE"], "argument --out-dir: 'FILE' is a file, not a directory"),
    "train --config": (["train", "--config", "cfg.json"], "kilotune train: error: argument --config: no such file: 'cfg.json'"),
    "train --subset": (["train", "--subset", "sub.json"], "argument --subset: no such file: 'sub.json'"),
    "train --epochs two": (["train", "--epochs", "two"], "argument --epochs: must be a whole number >= 1, got 'two'"),
    "train --train-size 0": (["train", "--train-size", "0"], "argument --train-size: must be a whole number >= 1, got '0'"),
    "train --val-fraction 1": (["train", "--val-fraction", "1"], "argument --val-fraction: must be a number in [0, 1), got '1'"),
    "train --save under a file": (["train", "--save", "FILE/m.keras"], "argument --save: cannot write 'FILE/m.keras': "),
    "report --out under a file": (["report", "--study", "s", "--out", "FILE/r.html"], "argument --out: cannot write 'FILE/r.html': "),
    "report --top 0": (["report", "--study", "s", "--out", "r.html", "--top", "0"], "argument --top: must be a whole number >= 1, got '0'"),
    "export --out a directory": (["export", "--study", "s", "--out", "."], "kilotune export: error: argument --out: '.' is a directory; give a file name in it"),
    "export --rank 0": (["export", "--study", "s", "--out", "b.json", "--rank", "0"], "argument --rank: must be a whole number >= 1, got '0'"),
    "study enqueue --config": (["study", "enqueue", "--study", "s", "--config", "c.json"], "kilotune study enqueue: error: argument --config: no such file"),
    "study create --subset": (["study", "create", "--study", "s", "--subset", "sub.json"], "argument --subset: no such file: 'sub.json'"),
    "study create --seed -1": (["study", "create", "--study", "s", "--seed", "-1"], "argument --seed: must be a whole number >= 0, got '-1'"),
    "study extend --timeout x": (["study", "extend", "--study", "s", "--timeout", "soon"], "argument --timeout: must be a number, got 'soon'"),
    "run --workers 0": (["run", "--workers", "0"], "kilotune run: error: argument --workers: must be a whole number >= 1, got '0'"),
    "run --subset": (["run", "--subset", "sub.json"], "argument --subset: no such file: 'sub.json'"),
    "run --n-trials 1.5": (["run", "--n-trials", "1.5"], "argument --n-trials: must be a whole number, got '1.5'"),
    "worker --max-trials 0": (["worker", "--study", "s", "--max-trials", "0"], "argument --max-trials: must be a whole number >= 1, got '0'"),
    "worker --subset": (["worker", "--study", "s", "--subset", "sub.json"], "argument --subset: no such file: 'sub.json'"),
    "dashboard --port 70000": (["dashboard", "--port", "70000"], "argument --port: must be a whole number in [1, 65535], got '70000'"),
    "subset build --per-class 0": (["subset", "build", "--per-class", "0"], "kilotune subset build: error: argument --per-class: must be a whole number >= 1, got '0'"),
    "subset build --extractor": (["subset", "build", "--extractor", "x.keras"], "argument --extractor: no such file: 'x.keras'"),
    "subset show": (["subset", "show", "sub.json"], "kilotune subset show: error: argument file: no such file: 'sub.json'"),
    "subset show --per-row 0": (["subset", "show", "FILE", "--per-row", "0"], "argument --per-row: must be a whole number >= 1, got '0'"),
    "subset compare --config": (["subset", "compare", "FILE", "--config", "c.json"], "argument --config: no such file: 'c.json'"),
    "subset compare --seeds 0": (["subset", "compare", "FILE", "--seeds", "0"], "argument --seeds: must be a whole number >= 1, got '0'"),
    "no command": ([], "kilotune: error: the following arguments are required: COMMAND"),
}


def test_bad_arguments_are_one_line_before_anything_heavy_loads(tmp_path):
    """Every case in one process: main() returns 2 with one line on stderr, and neither Keras,
    TensorFlow nor Optuna has been imported (a typo took 4-5 s to report when TensorFlow loaded first)."""
    (tmp_path / "FILE").write_text("{}")
    code = f"""
import contextlib, io, json, sys
from kilotune.cli.main import main
from kilotune.models.names import ignored_fields
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    print(json.dumps([code, err.getvalue(), sorted(m for m in ("keras", "tensorflow", "optuna", "jax") if m in sys.modules)]))
"""
    cases = list(REFUSED.values())
    out = subprocess.run([sys.executable, "-c", code, json.dumps([argv for argv, _ in cases])], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for (name, (_, expected)), line in zip(REFUSED.items(), out.stdout.splitlines(), strict=True):
        code, err, heavy = json.loads(line)
        assert code == 2 and err.count("\n") == 1 and expected in err, f"{name}: {code} {err!r}"
        assert heavy == [], f"{name}: {heavy} loaded before the error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"], "nothing was written"


def test_a_dashboard_on_a_port_in_use_says_so_before_anything_else(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "kilotune", "dashboard", "--port", str(port)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert out.stderr == f"kilotune dashboard: error: cannot listen on 127.0.0.1:{port}: Address already in use (give another --port, or --host)\n"
    assert list(tmp_path.iterdir()) == [], "the storage is not opened (nor created)"
