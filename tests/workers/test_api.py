"""The Python API: its import cost, its option checks, and the README's example run as it is,
whose finished study's report headless Chromium then renders."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import kilotune
from kilotune.workers.api import dataset_name
from tests.conftest import REPO, run_bounded

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def readme_example() -> str:
    """The Python block between the README's api-example markers."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- api-example:start -->") : text.index("<!-- api-example:end -->")]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_import_kilotune_loads_neither_keras_nor_optuna():
    code = ("import sys, kilotune; print('keras' in sys.modules, 'optuna' in sys.modules); "
            "kilotune.run; print('keras' in sys.modules, sorted(set(kilotune.__all__) - set(dir(kilotune))))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False False", "import kilotune must stay cheap (kilotune --help)"
    assert out[1] == "False []", "the API itself imports no Keras; every public name is listed"


def test_an_unknown_option_is_refused_naming_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) n_trial for run; allowed: .*, n_trials, "):
        kilotune.run("fashion-mnist", n_trial=3)


def test_arrays_are_saved_once_named_by_their_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(1)
    mine = kilotune.dataset_from_arrays(rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), np.arange(20) % 2,
                                        rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), np.arange(4) % 2, name="pets")  # fmt: skip
    path = dataset_name(mine)
    assert path == str(tmp_path / "datasets" / f"pets-{mine.checksum[7:19]}.npz")
    mtime = os.stat(path).st_mtime_ns
    assert dataset_name(mine) == path and os.stat(path).st_mtime_ns == mtime, "the same arrays reuse the file"
    loaded = kilotune.load_dataset(path)
    assert loaded.checksum == mine.checksum and dataset_name(loaded) == path
    assert dataset_name("fashion-mnist") == "fashion-mnist"


@pytest.fixture(scope="module")
def finished(fashion_mnist, tmp_path_factory):
    """The README's example, run as a user would, in a fresh directory and cache (the data from
    the test run's shared data directory)."""
    where = tmp_path_factory.mktemp("notebook")
    env = {**os.environ, "KILOTUNE_CACHE_DIR": str(where / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KILOTUNE_STORAGE", None)
    out = run_bounded([sys.executable, "-c", readme_example()], cwd=where, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return where, out


@pytest.mark.slow
def test_the_readme_example_searches_exports_retrains_and_reports(finished):
    where, out = finished
    study = optuna.load_study(study_name="notebook", storage=f"sqlite:///{where}/notebook.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    attrs = study.user_attrs
    assert attrs["dataset"].endswith(".npz") and os.path.isfile(attrs["dataset"]), "the arrays went to workers as a file"
    subset = json.loads(open(attrs["subset_path"]).read())
    assert subset["method"] == "all" and len(subset["indices"]) == 1000
    best = max(study.trials, key=lambda t: t.value)
    assert f"best: {best.user_attrs['config']['arch']} {round(best.value, 4)}" in out.stdout
    results = json.loads((where / "retrain-notebook" / "results.json").read_text())
    assert results["train_images"] == 1000 and results["test_images"] == 10000 and results["trial"] == best.number
    assert f"test accuracy: {results['test_accuracy']['mean']}" in out.stdout
    assert re.search(r"seed 0: epoch 1/1, .* elapsed, about .* left \(", out.stdout), "retrain shows its progress"
    assert (where / "notebook-report.html").stat().st_size > 1_000_000


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_the_finished_studys_report_renders_in_chromium(finished, tmp_path):
    where, _ = finished
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", (where / "notebook-report.html").as_uri()],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    study = optuna.load_study(study_name="notebook", storage=f"sqlite:///{where}/notebook.db")
    table = dom[dom.index('<table class="top">') : dom.index("</table>", dom.index('<table class="top">'))]
    assert re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", table) == [
        ("1", str(max(study.trials, key=lambda t: t.value).number)), ("2", str(min(study.trials, key=lambda t: t.value).number))
    ]  # fmt: skip

    def plot(key: str) -> str:
        start = dom.index(f'<div id="plot-{key}"')
        return dom[start : dom.find('<div id="plot-', start + 1)]

    # What plotly drew, not what the HTML asks for: a drawn div has js-plotly-plot and SVG traces.
    curves, importances = plot("curves"), plot("importance")
    assert "js-plotly-plot" in curves.split(">", 1)[0] and curves.count('class="trace scatter') == 2, "a curve per trial"
    assert "js-plotly-plot" in importances.split(">", 1)[0] and 'class="trace bars"' in importances
    drawn = set(re.findall(r'data-unformatted="([a-z_0-9]+)"', importances))
    assert {"arch", "width"} & drawn, f"importances are labelled by parameter: {sorted(drawn)[:10]}"


# Wrong types and values at the API's boundary (issue 25): a ValueError naming the argument, the
# value and what is allowed, raised before anything is loaded, opened or written (the storage
# they name is a server nobody runs: a call that got past the checks fails there, not in a run).
NOWHERE = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
BAD_CALLS = {
    "run, a list as dataset": (lambda: kilotune.run([1, 2, 3], storage=NOWHERE), "a dataset is a name (cifar10, fashion-mnist) or the path of a file.npz, got list [1, 2, 3]"),
    "run, an int as dataset": (lambda: kilotune.run(5, storage=NOWHERE), "a dataset is a name (cifar10, fashion-mnist) or the path of a file.npz, got int 5"),
    "run, arrays as dataset": (lambda: kilotune.run(np.zeros(3), storage=NOWHERE), "a dataset is a name (cifar10, fashion-mnist) or the path of a file.npz, got ndarray array([0., 0., 0.])"),
    "run, epochs as text": (lambda: kilotune.run("fashion-mnist", epochs="ten", storage=NOWHERE), "epochs: must be a whole number, got 'ten'"),
    "run, a float for workers": (lambda: kilotune.run("fashion-mnist", workers=1.5, storage=NOWHERE), "workers: must be a whole number >= 1, got 1.5"),
    "run, presets as one string": (lambda: kilotune.run("fashion-mnist", presets="vgg8-reference", storage=NOWHERE), "presets: must be a list of names, got 'vgg8-reference'"),
    "run, a number as sampler": (lambda: kilotune.run("fashion-mnist", sampler=5, storage=NOWHERE), "sampler: must be a string, got 5"),
    "run, keep_settings=1": (lambda: kilotune.run("fashion-mnist", keep_settings=1, storage=NOWHERE), "keep_settings: must be True or False, got 1"),
    "run, a missing subset": (lambda: kilotune.run("fashion-mnist", subset="nope.json", storage=NOWHERE), "subset: no such file: 'nope.json'"),
    "run, objective over epochs": (lambda: kilotune.run("fashion-mnist", epochs=2, objective_epochs=3, n_trials=4, storage=NOWHERE), "objective_epochs=3 must be from 1 to the 2 epochs a trial trains"),
    "best, a number as study": (lambda: kilotune.best(5, storage=NOWHERE), "study: must be a string, got 5"),
    "best, rank 0": (lambda: kilotune.best("s", rank=0, storage=NOWHERE), "rank: must be a whole number >= 1, got 0"),
    "best, rank as a word": (lambda: kilotune.best("s", rank="first", storage=NOWHERE), "rank: must be a whole number >= 1, got 'first'"),
    "report, a number as out": (lambda: kilotune.report("s", 5, storage=NOWHERE), "out: must be the path of a file to write, got 5"),
    "report, top 0": (lambda: kilotune.report("s", "r.html", top=0, storage=NOWHERE), "top: must be a whole number >= 1, got 0"),
    "retrain, a dict that is no export": (lambda: kilotune.retrain({"a": 1}), "the dict given as export is not a kilotune export: expected an object with 'config' and 'provenance'"),
    "retrain, an export without provenance": (lambda: kilotune.retrain({"config": {}, "provenance": {}}), "the dict given as export: provenance is missing study, trial, dataset, dataset_checksum, subset_path and subset_checksum"),
    "retrain, a number as export": (lambda: kilotune.retrain(5), "export: must be the path of a file, got 5"),
    "retrain, a missing file": (lambda: kilotune.retrain("best.json"), "export: no such file: 'best.json'"),
    "load_dataset, a number as data_dir": (lambda: kilotune.load_dataset("fashion-mnist", data_dir=5), "data_dir is the path of a directory, got int 5"),
    "save_dataset, a list": (lambda: kilotune.save_dataset([1, 2], "x.npz"), "save_dataset takes a dataset (dataset_from_arrays or load_dataset) and a path; got [1, 2] and 'x.npz'"),
    "dataset_from_arrays, a number as name": (lambda: kilotune.dataset_from_arrays(*TINY, name=5), "name must be a string, got 5"),
}
TINY = (np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]), np.zeros((2, 8, 8), np.uint8), np.array([0, 1]))


@pytest.mark.parametrize("case", BAD_CALLS)
def test_a_wrong_argument_is_a_value_error_naming_it_and_nothing_is_written(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KILOTUNE_STORAGE", raising=False)
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert list(tmp_path.iterdir()) == [], "no storage, export or dataset file made"
