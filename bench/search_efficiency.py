"""Search efficiency on real data: kilotune (TPE + Hyperband pruning) against random search and
KerasTuner's Hyperband, under the same total epoch budget, then the winners retrained and tested.

    nohup python bench/search_efficiency.py --epochs 9 --budget-trials 7 --reps 3 > se.log 2>&1 &
    python bench/search_efficiency.py --report-only      # the tables again, from the saved runs

Data: Fashion-MNIST, the 1000 images of the default subset (``ensure_default_subset``; max-sum when
the recorded runs were made, random now: pass ``--subset`` with a max-sum file to repeat them),
trained on 800 and validated on a stratified 200 (val_fraction 0.2, split seed 0), as a study does.
A small-model space (SPACE) keeps one epoch to 1-3 s on a shared 2-core CPU.

Methods, each run to ``budget = epochs * budget_trials`` epochs in all, once per seed:
    kilotune    a real study (temp SQLite): TPE sampler, Hyperband pruner, driven by the real
                ``Worker`` one trial at a time until the epochs run reach the budget.
    random      the same machinery with the random sampler and no pruner.
    kerastuner  KerasTuner's Hyperband through ``search.kerastuner.KilotuneHyperModel``; a callback
                counts epochs and ends the search at the budget.
The seed is the sampler's and every trial's training seed. All methods are scored by one rule, the
study's objective: a trial counts when it trained the full ``epochs`` and finished inside the
budget, with its last-epoch validation accuracy; "best so far" is the best such trial.

Every run and retrain writes its own JSON under ``--out`` as it finishes, and is skipped when that
file exists, so an interrupted benchmark resumes. ``--report-only`` rebuilds the tables and figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402

from kilotune.search.kerastuner import KilotuneHyperModel  # noqa: E402
from kilotune.search.presets import PRESETS  # noqa: E402
from kilotune.search.space import SearchSpace  # noqa: E402
from kilotune.search.settings import StudySettings  # noqa: E402
from kilotune.search.storage import open_storage  # noqa: E402
from kilotune.search.study import create_study, load_study  # noqa: E402
from kilotune.subset.datasets import ImageDataset, load_dataset  # noqa: E402
from kilotune.subset.features import ensure_default_subset  # noqa: E402
from kilotune.subset.subsetfile import load_subset  # noqa: E402
from kilotune.training.data import holdout_data  # noqa: E402
from kilotune.training.retrain import retrain  # noqa: E402
from kilotune.training.train import TrainData  # noqa: E402
from kilotune.workers.worker import Worker  # noqa: E402

METHODS = ("kilotune", "random", "kerastuner")
# Small models that fit a shared 2-core CPU: 1-3 s an epoch on 800 images, plus 5-15 s of tracing
# in a trial's first epoch. ResNet-20 was measured and left out: its first epoch took 16-30 s at
# load 6-7, so every trial pruned at one epoch would cost ten epochs' worth of wall time.
SPACE: dict[str, Any] = {
    "arch": ["vgg8", "resnet9"],
    "width": [0.125, 0.25],
    "batch_size": [32, 64, 128],
}
VAL_FRACTION, SPLIT_SEED = 0.2, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=9, help="epochs per trial (Hyperband's max resource)")
    parser.add_argument("--budget-trials", type=int, default=7, help="total budget, in full trials' worth of epochs")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (seeds 0..reps-1) of every method")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--subset", help="subset file (default: the cached default subset, built if missing)")
    parser.add_argument("--retrain", choices=("each", "best", "none"), default="each",
                        help="retrain the best config of every repetition, or of each method's best repetition only")
    parser.add_argument("--out", default="bench/results/search_efficiency")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kilotune.worker").setLevel(logging.INFO)  # one line per trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.epochs * args.budget_trials
    dataset = load_dataset("fashion-mnist")
    subset_path = Path(args.subset or ensure_default_subset(dataset))
    subset = load_subset(subset_path, dataset)
    data = holdout_data(dataset, subset.indices, VAL_FRACTION, SPLIT_SEED)
    if not args.report_only:
        for seed in range(args.reps):  # interleaved, so a cut-short benchmark still compares like with like
            for method in args.methods:
                path = out / f"run-{method}-seed{seed}.json"
                if path.exists():
                    continue
                print(f"== {method} seed {seed}: budget {budget} epochs, load {_load()}", flush=True)
                run = RUNNERS[method](seed=seed, epochs=args.epochs, budget=budget, dataset=dataset,
                                      subset_path=subset_path, data=data)
                _write(path, run)
                print(f"== {method} seed {seed}: best {run['best_val_accuracy']} after {run['epochs_run']} epochs, "
                      f"{len(run['trials'])} trials, {run['wall_s']:.0f} s", flush=True)
        if args.retrain != "none":
            retrain_winners(out, args, dataset, subset.indices, subset_path)
    report(out, args.epochs, budget, args.methods)


# --- the three methods -------------------------------------------------------------------------

def run_optuna(method: str, *, seed: int, epochs: int, budget: int, dataset: ImageDataset, subset_path: Path, data: TrainData) -> dict:
    """A real study in a temp SQLite file, grown one ``Worker`` trial at a time until the budget is spent."""
    started, load = time.perf_counter(), _load()
    with tempfile.TemporaryDirectory(prefix=f"se-{method}-") as tmp:
        os.environ["KILOTUNE_CHECKPOINT_DIR"] = f"{tmp}/checkpoints"
        url, name = f"sqlite:///{tmp}/study.db", f"se-{method}-{seed}"
        settings = StudySettings(
            dataset=dataset.name, dataset_checksum=dataset.checksum, subset_path=str(subset_path),
            subset_checksum=load_subset(subset_path, dataset).checksum, val_fraction=VAL_FRACTION,
            split_seed=SPLIT_SEED, epochs=epochs, space={**SPACE, "seed": seed}, seed=seed,
            sampler="tpe" if method == "kilotune" else "random", pruner="hyperband" if method == "kilotune" else "none",
        )
        storage = open_storage(url)
        create_study(name, settings, storage)
        worker = Worker(name, url, subset_path=str(subset_path))
        while _epochs_run(worker.study) < budget:
            worker.run(max_trials=1)
        study, settings = load_study(name, open_storage(url))
        trials = [_optuna_trial(t, epochs) for t in study.get_trials(deepcopy=False)]
        model_based = _tpe_trials(study, settings) if method == "kilotune" else 0
    return _summarise(method, seed, epochs, budget, trials, time.perf_counter() - started, load, tpe_trials=model_based)


def _epochs_run(study: optuna.Study) -> int:
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def _optuna_trial(t: optuna.trial.FrozenTrial, epochs: int) -> dict:
    curve = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
    full = t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("status") == "complete" and len(curve) == epochs
    return {"trial": t.number, "status": t.user_attrs.get("status", t.state.name.lower()), "val_accuracy": curve,
            "full": full, "config": t.user_attrs.get("config")}


def _tpe_trials(study: optuna.Study, settings: StudySettings) -> int:
    """How many trials TPE sampled from its model rather than at random.

    The Hyperband pruner shows the sampler only the trials of the same bracket, so TPE leaves its
    ``n_startup_trials`` random start only once one bracket alone holds that many finished trials.
    """
    pruner, sampler = settings.pruner_for(), settings.sampler_for()
    trials = study.get_trials(deepcopy=False)
    pruner._try_initialization(study)  # private, read-only use: which bracket each trial was in
    brackets = [pruner._get_bracket_id(study, t) for t in trials]
    return sum(brackets[:i].count(b) >= sampler._n_startup_trials for i, b in enumerate(brackets))


class BudgetSpent(keras_tuner.errors.FatalError):
    """Ends ``Tuner.search`` (a FatalError is not caught as a failed trial)."""


class _EpochLog(keras.callbacks.Callback):
    """Records every epoch of every KerasTuner trial and ends the search when the budget is spent."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget, self.trials, self.run = budget, [], 0

    def __deepcopy__(self, memo: dict) -> _EpochLog:
        return self  # KerasTuner deep-copies callbacks for every trial; the count must be shared

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        trial = self.trials[-1]
        trial["val_accuracy"].append(float(logs.get("val_accuracy", float("nan"))))
        trial["last_epoch"] = epoch + 1
        trial["finite"] = trial.get("finite", True) and math.isfinite(logs.get("loss", 0.0))
        self.run += 1
        if self.run >= self.budget:
            raise BudgetSpent(f"{self.run} epochs")


class _Hyperband(keras_tuner.Hyperband):
    def __init__(self, *args: Any, log: _EpochLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def on_trial_begin(self, trial: keras_tuner.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        hp = trial.hyperparameters
        self.log.trials.append({"trial": trial.trial_id, "val_accuracy": [], "to_epoch": hp.values.get("tuner/epochs"),
                                "config": self.hypermodel.config(hp).to_dict()})

    def on_trial_end(self, trial: keras_tuner.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        print(f"kerastuner trial {trial.trial_id}: epochs {self.log.trials[-1].get('last_epoch')}, "
              f"val {self.log.trials[-1]['val_accuracy'][-1:]}, {self.log.run} epochs run", flush=True)


def run_kerastuner(*, seed: int, epochs: int, budget: int, data: TrainData, **_: Any) -> dict:
    """KerasTuner's Hyperband (factor 3, as kilotune's pruner) over the same space, through the adapter."""
    started, load = time.perf_counter(), _load()
    hypermodel = KilotuneHyperModel(SearchSpace.from_spec({**SPACE, "seed": seed}), epochs=epochs,
                                    input_shape=data.x_train.shape[1:], num_classes=data.num_classes, n_train=len(data.x_train))
    log = _EpochLog(budget)
    with tempfile.TemporaryDirectory(prefix="se-kerastuner-") as tmp:
        # Enough Hyperband iterations that the epoch budget, not the tuner, ends the search.
        tuner = _Hyperband(hypermodel, log=log, objective="val_accuracy", max_epochs=epochs, factor=3,
                           hyperband_iterations=100, seed=seed, directory=tmp, project_name="kt", overwrite=True)
        try:
            tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), callbacks=[log], verbose=0)
        except BudgetSpent:
            pass
    keras.backend.clear_session()
    trials = [{"trial": t["trial"], "status": "complete" if t.get("last_epoch") == t["to_epoch"] else "stopped",
               "val_accuracy": t["val_accuracy"], "full": t.get("last_epoch") == epochs and t.get("finite", False),
               "config": t["config"]} for t in log.trials]
    return _summarise("kerastuner", seed, epochs, budget, trials, time.perf_counter() - started, load)


RUNNERS = {
    "kilotune": lambda **kw: run_optuna("kilotune", **kw),
    "random": lambda **kw: run_optuna("random", **kw),
    "kerastuner": run_kerastuner,
}


def _summarise(method: str, seed: int, epochs: int, budget: int, trials: list[dict], wall_s: float, load: list, **extra: Any) -> dict:
    """Adds the best-so-far curve: (cumulative epochs, best full-length trial's last-epoch accuracy)."""
    run, best, curve = 0, None, []
    for trial in trials:
        run += len(trial["val_accuracy"])
        trial["ended_at_epoch"] = run
        if trial["full"] and run <= budget and (best is None or trial["val_accuracy"][-1] > best["val_accuracy"][-1]):
            best = trial
            curve.append([run, trial["val_accuracy"][-1]])
    return {
        "method": method, "seed": seed, "epochs_per_trial": epochs, "budget": budget, "epochs_run": run,
        "best_val_accuracy": best["val_accuracy"][-1] if best else None, "best_config": best["config"] if best else None,
        "best_trial": best["trial"] if best else None, "curve": curve, "trials": trials,
        "full_trials": sum(t["full"] and t["ended_at_epoch"] <= budget for t in trials),
        "wall_s": round(wall_s, 1), "loadavg_start": load, "loadavg_end": _load(), **extra,
    }


# --- retraining on all 1000 images -------------------------------------------------------------

def retrain_winners(out: Path, args: argparse.Namespace, dataset: ImageDataset, indices: np.ndarray, subset_path: Path) -> None:
    """Each method's best config (from its best repetition, or every repetition) and the hand-tuned
    VGG-8, each trained on all chosen images for the search's per-trial epochs and tested once."""
    jobs: list[tuple[str, dict]] = [("vgg8-reference", PRESETS["vgg8-reference"].replace(epochs=args.epochs).to_dict())]
    for method in args.methods:
        runs = [r for r in _runs(out, method) if r["best_config"]]
        if args.retrain == "best" and runs:
            runs = [max(runs, key=lambda r: r["best_val_accuracy"])]
        jobs += [(f"{method}-seed{r['seed']}", r["best_config"]) for r in runs]
    for label, config in jobs:
        path = out / f"retrain-{label}.json"
        if path.exists():
            continue
        print(f"== retrain {label}: load {_load()}", flush=True)
        started, load = time.perf_counter(), _load()
        export = {"config": config, "provenance": {"study": f"search_efficiency/{label}", "trial": None, "dataset": dataset.name,
                                                   "subset_path": str(subset_path)}}
        with tempfile.TemporaryDirectory(prefix="se-retrain-") as tmp:
            result = retrain(export, dataset, indices, seeds=1, tta=False, snapshots=0, out_dir=tmp, progress=False)
        result.pop("provenance", None)
        result.update(label=label, wall_s=round(time.perf_counter() - started, 1), loadavg_start=load, loadavg_end=_load())
        _write(path, result)
        print(f"== retrain {label}: test accuracy {result['test_accuracy']['mean']:.4f}", flush=True)


# --- report -------------------------------------------------------------------------------------

def report(out: Path, epochs: int, budget: int, methods: list[str]) -> None:
    """Prints the markdown tables, writes summary.json and the plotly figure."""
    runs = {m: _runs(out, m) for m in methods}
    random_final = {r["seed"]: r["best_val_accuracy"] for r in runs.get("random", [])}
    rows, summary = [], {"epochs_per_trial": epochs, "budget": budget, "methods": {}}
    for method, rs in runs.items():
        if not rs:
            continue
        finals = [r["best_val_accuracy"] or 0.0 for r in rs]
        reach = [_epochs_to_reach(r["curve"], random_final.get(r["seed"])) for r in rs]
        tests = [json.loads(p.read_text())["test_accuracy"]["mean"] for p in sorted(out.glob(f"retrain-{method}-seed*.json"))]
        s = {
            "seeds": [r["seed"] for r in rs], "final_best_val": finals, "epochs_to_random_final": reach,
            "trials": [len(r["trials"]) for r in rs], "full_trials": [r["full_trials"] for r in rs],
            "tpe_trials": [r.get("tpe_trials") for r in rs], "wall_s": [r["wall_s"] for r in rs], "test_accuracy": tests,
        }
        summary["methods"][method] = s
        reached = [e for e in reach if e is not None]
        rows.append(
            f"| {method} | {len(rs)} | {_mean_std(finals).rsplit(' (', 1)[0]} | "
            f"{', '.join('—' if e is None else str(e) for e in reach)} | "
            f"{(np.mean(reached) / budget if reached else float('nan')):.2f} | "
            f"{np.mean(s['trials']):.1f} / {np.mean(s['full_trials']):.1f} | {np.mean(s['wall_s']):.0f} | {_mean_std(tests)} |"
        )
    print(f"\nSearch: {epochs} epochs per trial, budget {budget} epochs per run\n")
    print("| method | runs | final best val acc (mean ± std) | epochs to reach random's final best, per seed | "
          "mean of those / budget | trials / full-length (mean) | wall s (mean) | test acc of retrained best (n) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    retrains = [json.loads(p.read_text()) for p in sorted(out.glob("retrain-*.json"))]
    summary["retrain"] = [{"label": r["label"], "test_accuracy": r["test_accuracy"]["mean"], "config": r["config"],
                           "wall_s": r["wall_s"]} for r in retrains]
    print(f"\nRetrained on all 1000 chosen images for {epochs} epochs, tested on the 10,000 test images\n")
    print("| config | arch | width | batch | optimizer | lr | test accuracy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in retrains:
        c = r["config"]
        print(f"| {r['label']} | {c['arch']} | {c['width']} | {c['batch_size']} | {c['optimizer']} | "
              f"{c['learning_rate']:.3g} | {r['test_accuracy']['mean']:.4f} |")
    _write(out / "summary.json", summary)
    _figure(runs, budget, out / "search_efficiency.html")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f} ({len(values)})"


def _epochs_to_reach(curve: list[list[float]], target: float | None) -> int | None:
    if target is None:
        return None
    return next((int(e) for e, v in curve if v >= target), None)


def _figure(runs: dict[str, list[dict]], budget: int, path: Path) -> None:
    import plotly.graph_objects as go

    colors = {"kilotune": "#1f77b4", "random": "#7f7f7f", "kerastuner": "#d62728"}
    fig = go.Figure()
    for method, rs in runs.items():
        for i, r in enumerate(rs):
            if not r["curve"]:
                continue
            xs, ys = zip(*r["curve"])
            fig.add_trace(go.Scatter(x=[*xs, budget], y=[*ys, ys[-1]], mode="lines+markers", line_shape="hv",
                                     line_color=colors.get(method), name=method, legendgroup=method, showlegend=i == 0,
                                     hovertext=f"seed {r['seed']}"))
    fig.update_layout(title=f"Best full-length trial's validation accuracy vs epochs run (budget {budget})",
                      xaxis_title="cumulative training epochs", yaxis_title="best validation accuracy so far", template="plotly_white")
    fig.write_html(path, include_plotlyjs="cdn")


def _runs(out: Path, method: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob(f"run-{method}-seed*.json"))]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)  # a run is either fully written or absent, so resuming is safe


if __name__ == "__main__":
    main()
