"""The HTML report: sections, self-containment, errors, and that Chromium really renders every plot."""

import datetime as dt
import re
import shutil
import subprocess

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kilotune.cli.main import main
from kilotune.search.ensemble import encode_predictions
from kilotune.search.report import learning_curves, render_report, trials_view, worker_timeline, write_report
from kilotune.search.storage import open_storage
from kilotune.search.winner import StudyTrials, load_cv_study
from kilotune.training.config import TrainConfig

EPOCHS = 10
ARCHS = ("vgg8", "resnet9", "resnet18", "resnet20")
DISTRIBUTIONS = {
    "arch": CategoricalDistribution(ARCHS),
    "width": CategoricalDistribution((0.5, 1.0, 2.0)),
    "sgd_learning_rate": FloatDistribution(1e-3, 1.0, log=True),
    "batch_size": CategoricalDistribution((32, 64, 128)),
}


def study_attrs(epochs: int = EPOCHS) -> dict:
    """Study user attributes as ``kilotune study create`` records them (docs/study-format.md)."""
    return {
        "kilotune_version": "0.1.0", "dataset": "fashion-mnist", "dataset_checksum": "sha256:" + "d" * 64,
        "subset_path": "/cache/subsets/fashion-mnist-max-sum-100-0.json", "subset_checksum": "sha256:" + "5" * 64,
        "val_fraction": 0.2, "split_seed": 0, "epochs": epochs, "space": {}, "sampler": "tpe", "pruner": "hyperband",
        "n_trials": 12, "timeout_s": None, "cv_top_k": 0, "cv_folds": 1, "created_at": "2025-01-01T10:00:00+00:00",
    }  # fmt: skip


def make_trials(n: int = 12) -> list[FrozenTrial]:
    """Finished trials as kilotune workers leave them: varied architectures, two workers,
    pruned, failed and diverged trials.

    Explicit times (as workers would have taken them) give the timeline real bars; values
    follow a learning curve that saturates at a per-trial level.
    """
    rng = np.random.default_rng(0)
    clock = {"hostA:1": dt.datetime(2025, 1, 1, 10), "hostB:2": dt.datetime(2025, 1, 1, 10, 0, 30)}
    trials = []
    for number in range(n):
        worker = "hostA:1" if number % 2 == 0 else "hostB:2"
        params = {"arch": ARCHS[number % 4], "width": (0.5, 1.0, 2.0)[number % 3],
                  "sgd_learning_rate": float(10 ** rng.uniform(-3, 0)), "batch_size": (32, 64, 128)[number % 3]}  # fmt: skip
        config = TrainConfig(arch=params["arch"], width=params["width"], learning_rate=params["sgd_learning_rate"],
                             batch_size=params["batch_size"], epochs=EPOCHS, seed=number)  # fmt: skip
        state, status, ran = TrialState.COMPLETE, "complete", EPOCHS
        if number in (3, 6, 9, 10):
            state, status, ran = TrialState.PRUNED, "pruned", 1 + number % 4
        elif number == 7:
            state, status, ran = TrialState.FAIL, "failed", 2
        elif number == 11:
            status = "diverged"  # told COMPLETE with its last finite accuracy, as the worker does
        level = 0.5 + 0.35 * rng.random()
        curve = {e: float(level * (1 - np.exp(-e / 3)) + 0.01 * rng.standard_normal()) for e in range(1, ran + 1)}
        start = clock[worker]
        clock[worker] = end = start + dt.timedelta(seconds=20 * ran + 5)
        trials.append(
            FrozenTrial(
                number=number, trial_id=number, state=state, value=curve[ran] if state == TrialState.COMPLETE else None,
                datetime_start=start, datetime_complete=end, params=params, distributions=DISTRIBUTIONS,
                user_attrs={"config": config.to_dict(), "worker": worker, "device": "cpu", "status": status,
                            "epoch_seconds": [20.0] * ran, "params_count": 1000 * (number + 1)},
                system_attrs={}, intermediate_values=curve,
            )
        )  # fmt: skip
    return trials


def make_study(url: str, name: str = "fake", trials: list[FrozenTrial] | None = None) -> optuna.Study:
    """A kilotune-like study in ``url`` holding ``trials`` (default: :func:`make_trials`)."""
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    for key, value in study_attrs().items():
        study.set_user_attr(key, value)
    for trial in make_trials() if trials is None else trials:
        study.add_trial(trial)
    return study


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('report') / 'x.db'}"


@pytest.fixture(scope="module")
def study(url):
    return make_study(url)


@pytest.fixture(scope="module")
def storage(url):
    return open_storage(url)


@pytest.fixture(scope="module")
def report(study, storage, tmp_path_factory):
    return write_report(study, storage, tmp_path_factory.mktemp("out") / "report.html", top=5)


PLOTS = ("history", "curves", "importance", "arch", "pruning", "workers")


def test_report_is_one_self_contained_file_with_every_section(report):
    text = report.read_text()
    assert not re.search(r"<script[^>]+src=", text), "no external scripts: the report must open offline"
    assert not re.search(r"<link[^>]+href=", text)
    assert text.count("plotly.js v") <= 2 and len(text) > 1_000_000, "plotly.js inlined once"
    for key in ("summary", "top", *PLOTS):
        assert f'id="{key}"' in text
    for key in PLOTS:
        assert f'id="plot-{key}"' in text
    for heading in ("Top 5 configurations", "Learning curves", "Parameter importances", "Accuracy by architecture",
                    "Epochs saved by pruning", "Trials over time per worker"):  # fmt: skip
        assert heading in text
    assert "hostA:1" in text and "hostB:2" in text


def test_top_table_ranks_complete_trials_and_skips_diverged(study, storage):
    text = render_report(study, storage, top=3)
    table = text[text.index("<table class=top>") : text.index("</table>", text.index("<table class=top>"))]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td>", table)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    values = [float(r[2]) for r in rows]
    assert values == sorted(values, reverse=True)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["status"] != "diverged"]
    assert values[0] == pytest.approx(max(t.value for t in complete), abs=1e-4)
    assert "11" not in [r[1] for r in rows] or study.trials[11].value < values[-1]


def test_the_top_heading_counts_the_rows_shown(study, storage):
    complete = sum(t.state == TrialState.COMPLETE and t.user_attrs["status"] != "diverged" for t in study.trials)
    assert complete < 10 and f"Top {complete} configurations" in render_report(study, storage, top=10)


def test_the_summary_says_what_the_budget_buys(study, storage):
    text = render_report(study, storage)
    summary = text[text.index('id="summary"') : text.index("</section>", text.index('id="summary"'))]
    assert "12 trials of 10 epochs (at most 120 epochs): 12 search trials, not cross-validated" in summary
    assert "- s" not in summary


def test_the_timeline_names_workers_as_the_run_did(tmp_path):
    trials = make_trials(4)
    for t in trials:
        t.user_attrs["worker_id"] = "local-0" if t.user_attrs["worker"] == "hostA:1" else "local-1"
    study = make_study(f"sqlite:///{tmp_path / 'ids.db'}", trials=trials)
    rows = {name for trace in worker_timeline(study, study.trials).data for name in trace.y}
    assert rows == {"local-0", "local-1"}


def test_pruning_summary_counts_epochs_not_run(study, storage):
    text = render_report(study, storage)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    saved = sum(EPOCHS - t.last_step for t in pruned)
    full = EPOCHS * sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert f"saving <b>{saved}</b> of the {full} epochs" in text
    assert f"<b>{100 * saved / full:.1f}%</b>" in text


def test_importances_degrade_to_a_note_with_one_complete_trial(tmp_path):
    trials = make_trials(4)  # trials 0-2 complete, 3 pruned
    small = make_study(f"sqlite:///{tmp_path / 'one.db'}", trials=[trials[0], trials[3]])
    text = render_report(small, open_storage(f"sqlite:///{tmp_path / 'one.db'}"))
    assert "Not available: importances need at least 2 complete trials" in text
    assert 'id="plot-importance"' not in text and 'id="plot-curves"' in text


def test_cli_errors_for_unknown_and_empty_studies(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    empty = optuna.create_study(study_name="empty", storage=url)
    for key, value in study_attrs().items():
        empty.set_user_attr(key, value)
    assert main(["report", "--study", "nope", "--storage", url, "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "empty" in err
    assert main(["report", "--study", "empty", "--storage", url, "--out", str(tmp_path / "r.html")]) == 2
    assert "no finished trials" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_cli_writes_the_report(study, url, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--study", study.study_name, "--storage", url, "--out", str(out), "--top", "3"]) == 0
    assert out.is_file() and "Top 3 configurations" in out.read_text()
    assert "wrote" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_chromium_renders_every_plot(report, tmp_path):
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    # plotly marks a div it has drawn with js-plotly-plot and puts its SVG layers inside.
    rendered = re.findall(r'<div id="plot-(\w+)" class="[^"]*js-plotly-plot', dom)
    assert sorted(rendered) == sorted(PLOTS)
    for key, chunk in zip(PLOTS, re.split(r'<div id="plot-', dom)[1:]):
        assert 'class="main-svg"' in chunk, f"plot {key} has no SVG"
    assert dom.count('class="main-svg"') >= 2 * len(PLOTS)


def test_handed_back_trials_show_as_handed_back_not_failed(tmp_path):
    # A trial a worker took ahead and gave back at the timeout: FAIL with status "returned".
    trials = make_trials(8)  # trial 7 failed for good
    returned = trials[5]
    trials[5] = FrozenTrial(
        number=5, trial_id=5, state=TrialState.FAIL, value=None, datetime_start=returned.datetime_start,
        datetime_complete=returned.datetime_start + dt.timedelta(seconds=1), params=returned.params,
        distributions=DISTRIBUTIONS, user_attrs={"worker": "hostB:2", "status": "returned"}, system_attrs={},
        intermediate_values={},
    )  # fmt: skip
    study = make_study(f"sqlite:///{tmp_path / 'back.db'}", trials=trials)
    text = render_report(study, open_storage(f"sqlite:///{tmp_path / 'back.db'}"))
    summary = text[text.index('id="summary"') : text.index("</section>", text.index('id="summary"'))]
    assert "1 fail, 1 handed back" in summary, summary
    timeline = {trace.name: list(trace.text) for trace in worker_timeline(study, study.trials).data}
    assert "handed back" in timeline and len(timeline["handed back"]) == 1
    assert len(timeline["FAIL"]) == 1, "only trial 7 failed"


def test_report_shows_the_cross_validated_winner_with_its_mean_and_standard_error(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'cv.db'}")
    study = make_study(f"sqlite:///{tmp_path / 'cv.db'}", trials=make_trials(6))
    study.set_user_attr("cv_top_k", 2)
    study.set_user_attr("cv_folds", 5)
    study.set_user_attr("n_trials", 14)
    cv = load_cv_study(study, storage, create=True)
    first, second = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:2]
    for candidate, level in ((first, first.value - 0.2), (second, second.value)):
        for fold in range(1, 5):
            cv.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=level + 0.01 * fold, params=candidate.params, distributions=candidate.distributions,
                user_attrs={**candidate.user_attrs, "cv_of": candidate.number, "fold": fold}))  # fmt: skip
    text = render_report(study, storage, top=3)
    values = [second.value + 0.01 * f for f in range(5)]
    mean, stderr = np.mean(values), np.std(values, ddof=1) / np.sqrt(5)
    assert f"{mean:.4f} ± {stderr:.4f} over 5 folds (trial {second.number})" in text, "the summary names the winner"
    table = text[text.index("<table class=top>") : text.index("</table>", text.index("<table class=top>"))]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td><td>([\d.-]+)</td><td>(\d+)</td>", table)
    assert rows[0] == ("1", str(second.number), f"{mean:.4f}", f"{stderr:.4f}", "5")
    assert rows[1][1] == str(first.number) and rows[1][4] == "5" and rows[2][3:] == ("-", "1")
    assert "6 search trials, the top 2 of them re-trained on 4 more folds each (8 fold trials)" in text
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert f"of the {EPOCHS * len(finished)} epochs" in text, "fold trials are never pruned: not in the savings"
    assert len(pruned) == 1


def test_the_plots_show_the_search_not_the_cross_validation(tmp_path):
    """A fold trial retrains a searched configuration: in the history its value would read as a new best."""
    storage = open_storage(f"sqlite:///{tmp_path / 'folds.db'}")
    study = make_study(f"sqlite:///{tmp_path / 'folds.db'}", trials=make_trials(6))
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    load_cv_study(study, storage, create=True).add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=best.value + 0.05, params=best.params, distributions=best.distributions,
        intermediate_values={1: 0.99}, user_attrs={**best.user_attrs, "cv_of": best.number, "fold": 1}))  # fmt: skip
    search = trials_view(study, StudyTrials.read(study, storage).search)
    assert [t.number for t in search.trials] == [t.number for t in study.trials]
    history = optuna.visualization.plot_optimization_history(search)
    assert max(v for trace in history.data for v in (trace.y if trace.y is not None else ())) == pytest.approx(best.value), "the fold's value is not a best"
    curves = [trace.name for trace in learning_curves(search).data]
    assert len(curves) == sum(1 for t in study.trials if t.intermediate_values)
    assert 'id="plot-workers"' in render_report(study, storage), "the timeline shows the fold trial too"


def test_a_preset_kept_by_the_one_standard_error_rule_is_marked_and_explained(tmp_path):
    """The top table names presets, and says why a preset ranks above a trial with a higher value."""
    trials = make_trials()
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["status"] != "diverged"),
                      key=lambda t: t.value, reverse=True)  # fmt: skip
    best, preset = complete[0], complete[1]
    labels = np.arange(200) % 10
    for t in (best, preset):
        t.user_attrs["val_predictions"] = encode_predictions(np.eye(10)[labels], labels)
    preset.user_attrs["preset"] = "resnet9-davidnet"
    preset.value = best.value - 0.02  # within the 200 images' error (about 0.03)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    study = make_study(url, "presets", trials)
    text = render_report(study, open_storage(url), top=3)
    table = text[text.index("<table class=top>") :]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", table)
    assert [int(r[1]) for r in rows[:2]] == [preset.number, best.number]
    assert "(preset resnet9-davidnet)" in table
    assert "Rank 1 is a warm-start preset within one standard error" in table and f"trial {best.number}'s {best.value:.4f}" in table
