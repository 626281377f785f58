"""The backends' start-up lines: no face of kilotune prints one unless KILOTUNE_DEBUG=1 (issues 19.4, 25).

Each face runs as a user runs it, in its own process, and every line it prints is read: the
commands that load no backend here (fast), and those that train (slow, on tiny arrays).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_bounded
from tests.search.test_report import make_study, make_trials

LEVEL = "import os, sys; {imports}; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules)"
# What no face may print: TensorFlow's native start-up lines (absl's notice and its INFO/WARNING/
# ERROR lines, "To enable the following instructions"), Optuna's INFO lines and warnings, and the
# web server's banner that optuna-dashboard's own runner prints.
NOISE = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|To enable the following instructions"
    r"|\[I \d{4}-\d\d-\d\d .*\] |Bottle v|Listening on |Hit Ctrl-C)|UserWarning|ExperimentalWarning",
    re.M,
)


def clean_env(**changes: str) -> dict[str, str]:
    """The test process's environment without the settings that quiet or unquiet TensorFlow, plus ``changes``."""
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KILOTUNE_DEBUG", "KILOTUNE_STORAGE")}
    return base | changes


@pytest.mark.parametrize("imports", ["import kilotune.workers.api", "import kilotune; kilotune.best", "import kilotune.cli.main as m; m.quiet_tensorflow()"])
@pytest.mark.parametrize(("env", "level"), [({}, "3"), ({"KILOTUNE_DEBUG": "1"}, "None"), ({"TF_CPP_MIN_LOG_LEVEL": "1"}, "1")])
def test_every_entry_point_sets_the_log_level_before_tensorflow_loads(imports, env, level):
    out = subprocess.run([sys.executable, "-c", LEVEL.format(imports=imports)], cwd=REPO, env=clean_env(**env),
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()  # fmt: skip
    assert out == [level, "False"], "level 3 hides 'failed call to cuInit' (an ERROR to TensorFlow); a level set by the user stays"


def test_the_filter_drops_start_up_lines_and_keeps_everything_else():
    """Lines written to descriptor 2 by native code inside the filter: the start-up ones go, an error stays."""
    code = r"""
import os, sys, warnings
from kilotune.models.quiet import startup_lines_filtered
with startup_lines_filtered():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                b"I0000 00:00:1796426866.616262   10966 port.cc:153] oneDNN custom operations are on.\n"
                b"W0000 00:00:1796426866.616548   10966 cudart_stub.cc:31] Could not find cuda drivers\n"
                b"E0000 00:00:1796426866.616548   10966 some.cc:1] a real error\n")
    print("a Python line", file=sys.stderr)
    warnings.warn("a warning")
print("after", file=sys.stderr)
"""
    err = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60, check=True).stderr
    lines = err.splitlines()
    assert lines[0].startswith("E0000") and lines[0].endswith("a real error") and lines[1] == "a Python line", err
    assert "UserWarning: a warning" in lines[2] and lines[3:] == ["after"], err


@pytest.mark.parametrize(("env", "shown"), [({}, False), ({"KILOTUNE_DEBUG": "1"}, True)])
def test_tensorflow_loads_without_its_start_up_lines_unless_debugging(env, shown):
    """The command's entry point, then TensorFlow's import and its first operation: what it prints."""
    code = "from kilotune.cli.main import quiet_tensorflow; quiet_tensorflow(); import tensorflow as tf; tf.zeros(1); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr[-2000:]
    assert bool(NOISE.search(out.stderr)) == shown, out.stderr[-2000:]
    assert shown or out.stderr == "", f"nothing else either: {out.stderr[-2000:]}"


# --- the faces that load no backend -------------------------------------------------------


def command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``kilotune ARGS`` run in ``cwd`` (its default storage and its cache there)."""
    env = clean_env(KILOTUNE_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run([sys.executable, "-m", "kilotune", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def tiny_arrays(path: Path) -> Path:
    """A dataset file of 100 random 8x8 images, 10 a class, as ``kilotune.save_dataset`` writes it."""
    from kilotune.subset.datasets import dataset_from_arrays, save_dataset

    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)  # noqa: E731
    return save_dataset(dataset_from_arrays(images(100), np.arange(100) % 10, images(20), np.arange(20) % 10), path)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A directory with a dataset file and a finished study (``kilotune.db``) to show, whose
    complete trials tie: Optuna warns that their parameter importances are all equal."""
    where = tmp_path_factory.mktemp("faces")
    tiny_arrays(where / "tiny.npz")
    trials = make_trials()
    for t in trials:
        t.value = 0.5 if t.value is not None else None
    make_study(f"sqlite:///{where / 'kilotune.db'}", name="done", trials=trials)
    return where


FACES = {
    "study create": ["study", "create", "--study", "new", "--dataset", "tiny.npz", "--subset", "all", "--epochs", "2", "--n-trials", "2"],
    "study list": ["study", "list"],
    "study enqueue": ["study", "enqueue", "--study", "new", "--preset", "vgg8-reference"],
    "study extend": ["study", "extend", "--study", "new", "--n-trials", "3"],
    "report": ["report", "--study", "done", "--out", "report.html"],
    "export": ["export", "--study", "done", "--out", "best.json"],
    "subset build": ["subset", "build", "--dataset", "tiny.npz", "--per-class", "2", "--out", "sub.json"],
    "subset show": ["subset", "show", "sub.json"],
    "study delete": ["study", "delete", "--study", "new"],
}


def test_the_commands_that_load_no_backend_print_only_their_own_lines(place):
    """In order (each needs what the one before made); Optuna's "A new study created" and the
    report's importance warnings were printed before."""
    for face, argv in FACES.items():
        out = command(*argv, cwd=place)
        assert out.returncode == 0, f"{face}: {out.stderr[-2000:]}"
        assert not NOISE.search(out.stdout + out.stderr), f"{face} printed: {out.stdout + out.stderr}"
    assert "Optuna: " in (place / "report.html").read_text(), "what Optuna warned of is said in the report"


def test_the_api_report_and_best_print_nothing(place):
    code = "import kilotune; kilotune.report('done', 'api.html'); kilotune.best('done')"
    out = subprocess.run([sys.executable, "-c", code], cwd=place, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stderr[-2000:]


def test_the_dashboard_says_where_it_listens_in_one_line(place):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "kilotune", "dashboard", "--port", str(port)], cwd=place, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = process.stdout.readline()
    finally:
        process.terminate()
    _, err = process.communicate(timeout=60)
    assert first == f"dashboard of sqlite:///kilotune.db on http://127.0.0.1:{port} (Ctrl-C stops it)\n"
    assert not NOISE.search(err), err


# --- the faces that train (slow) ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(place) -> Path:
    """``place`` after a 1-trial run of a tiny model (its export, for retrain)."""
    space = place / "space.json"
    space.write_text(json.dumps({"arch": "vgg8", "width": 0.5, "batch_size": 32, "mixing": "none", "crop_padding": 0}))
    out = run_bounded([sys.executable, "-m", "kilotune", "run", "--study", "ran", "--dataset", "tiny.npz", "--subset", "all",
                       "--space", str(space), "--epochs", "1", "--n-trials", "1", "--workers", "1", "--cv-top-k", "0"],
                      cwd=place, env=clean_env(KILOTUNE_CACHE_DIR=str(place / "cache")))  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert not NOISE.search(out.stdout + out.stderr), out.stdout + out.stderr
    assert ", 1 worker; budget 1 trial of 1 epoch (at most 1 epoch): 1 search trial," in out.stdout, "not '1 workers', '1 epochs'"
    assert "[local-0] worker" not in out.stdout, "the worker's closing count ('1 trial') is quiet as '2 trials' was"
    assert command("export", "--study", "ran", "--out", "ran.json", cwd=place).returncode == 0
    return place


TRAINING_FACES = {
    "train": [sys.executable, "-m", "kilotune", "train", "--dataset", "tiny.npz", "--train-size", "50", "--epochs", "1"],
    "retrain": [sys.executable, "-m", "kilotune", "retrain", "ran.json", "--epochs", "1", "--out-dir", "re"],
    "worker": [sys.executable, "-m", "kilotune", "worker", "--study", "ran"],  # the budget is spent: it loads Keras and stops
    "subset compare": [sys.executable, "-m", "kilotune", "subset", "compare", "sub.json", "sub.json", "--seeds", "1", "--epochs", "1", "--holdout", "10"],
    "api retrain": [sys.executable, "-c", "import kilotune; kilotune.retrain('ran.json', epochs=1, out_dir='api', progress=False)"],
}


@pytest.mark.slow
@pytest.mark.parametrize("face", TRAINING_FACES)
def test_the_faces_that_train_print_no_start_up_line(trained, face):
    if face == "subset compare":
        assert command(*FACES["subset build"], cwd=trained).returncode == 0
    out = run_bounded(TRAINING_FACES[face], cwd=trained, env=clean_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert not NOISE.search(out.stdout + out.stderr), out.stdout + out.stderr
    if face == "train":  # and KILOTUNE_DEBUG=1 shows them
        debug = run_bounded(TRAINING_FACES[face], cwd=trained, env=clean_env(KILOTUNE_DEBUG="1"))
        assert debug.returncode == 0 and NOISE.search(debug.stderr), debug.stderr[-2000:]
