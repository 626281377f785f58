"""Search quality per epoch budget: each method's delivered model trained on all 1000 images and tested once.

    nice -n 15 nohup python bench/search_budget.py > search_budget.log 2>&1 &     # the full grid
    python bench/search_budget.py --budgets 6 --epochs-per-trial 2 --seeds 0 --final-epochs 2 --out /tmp/smoke.json
    python bench/search_budget.py --report                                       # table + figure only
    python bench/search_budget.py --methods kilotune --redeliver kilotune-ensemble  # a new final step on recorded searches

Fashion-MNIST, a 1000-image subset (default: class-balanced random, 100 a class, built with
``kilotune subset build --method random``), the built-in ``small`` space with the training seed
fixed to the run's seed, ``--epochs-per-trial`` epochs a trial for every method. A run (a cell:
method x budget x seed) searches until the training epochs it has spent reach the budget (pruned
trials count the epochs they trained; a trial still training then is cut at the budget and cannot
win), then its final step turns it into the model a user takes home, trained on all 1000 images
with the product's retrain path (``kilotune retrain``) and tested once on the 10,000 test images.
Every method gets the same final-training compute (``--ensemble`` K x ``--final-epochs`` E epochs):
kilotune delivers its ensemble export retrained in K x E epochs in all (``kilotune retrain
--total-epochs``: as many members as get the product's ``min_member_epochs`` each, at least one;
at the default 3 x 18 that is the winner alone for 54), every other method its single best config
trained for K x E epochs (its schedule stretched to them). Methods:

    kilotune    the product as a user runs it: ``kilotune study create`` with its defaults (TPE, its
                pruner, whatever warm start it does) and a trial budget of budget / epochs a trial
                (the product's currency: cross-validation of the top trials comes out of it, and
                pruning leaves epochs unspent: once the search's trials are spent, the bench extends
                the budget by the trials those epochs buy, as ``kilotune study extend`` does; rows
                before that have no ``topped_up_trials``), the product's ``Worker`` in this process
                one trial at a time; delivered: ``kilotune export --ensemble K`` retrained with
                ``--total-epochs`` K x E (the product's shape).
    random      stock Optuna, RandomSampler(seed), no pruning; winner = ``study.best_trial``.
    optuna      stock Optuna as its documentation sets it up: TPESampler(seed) + MedianPruner()
                with their defaults; winner = ``study.best_trial``.
    kerastuner  KerasTuner's Hyperband (factor 3, max_epochs = epochs a trial) through
                ``search/kerastuner.py``; winner = ``tuner.get_best_hyperparameters()[0]``.
    preset      the presets alone, each trained once at the same epochs; the best by validation
                accuracy wins (never the test set). The presets are those the product enqueues
                into a new study (its warm start); where it enqueues none, PRESETS narrowed to the
                space (archs outside it dropped, width and batch size moved into it).
Ablations, each one lever of the delivered model (rows of their own, not in the default grid
unless named in --methods; the first two reuse the kilotune cell's search):

    kilotune-ensemble      the kilotune search's ensemble export with all K members, E epochs each (the
                           delivered model before section 10; rows before it were method ``kilotune``).
    kilotune-trial-length  that ensemble with its members trained as long as a search trial: long final training's share.
    kilotune-no-policies   the kilotune arm searching the space without RandAugment, AugMix and RandomErasing,
                           delivering that ensemble.
Each lever is paired with the arm it changes (``LEVER_BASE``): the ensemble with kilotune, the
other two with kilotune-ensemble.
    kilotune-startup10     TPE's start-up at Optuna's default 10 trials instead of kilotune's 5 (issue 15).
    kilotune-single        the winner's single export trained for K x E epochs (the ensemble's lever before
                           section 10; where kilotune's shape is the winner alone, the same model trained
                           again: what retraining alone moves).

Rows written before the final step existed (each method's winner retrained at the trial's epochs)
have no ``final_epochs``; they stay in the rows file, apart, so the gain of the final step shows.

The random and optuna arms use kilotune's space, split (800 train / 200 validation, the study
defaults) and training core, with the last epoch's validation accuracy as objective.

Rows go to ``--out`` (a JSON list, rewritten atomically after every cell); cells already there are
skipped, so a killed bench loses at most the cells in progress. Each cell runs as its own process
(``--parallel N`` at once) with its state under ``--runs-dir/<cell>/``: the kilotune and Optuna
studies are SQLite files there and continue where they stopped. No TensorFlow import of its own:
it runs with KERAS_BACKEND=jax unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from environment import environment  # bench/, this script's folder, is on sys.path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
METHODS = ("kilotune", "random", "kerastuner", "optuna", "preset")
# Not in the default grid: the product with one choice changed, to measure that choice.
ABLATIONS = ("kilotune-ensemble", "kilotune-trial-length", "kilotune-no-policies", "kilotune-startup10", "kilotune-single")
# Methods that deliver the ensemble export: kilotune in the product's shape, the others all K members.
ENSEMBLES = ("kilotune", "kilotune-ensemble", "kilotune-trial-length", "kilotune-no-policies")
SHARED_SEARCH = {"kilotune-ensemble": "kilotune", "kilotune-trial-length": "kilotune", "kilotune-single": "kilotune"}  # same study, another final step
# Each ablation is paired with the arm it changes one lever of.
LEVER_BASE = {"kilotune-ensemble": "kilotune", "kilotune-trial-length": "kilotune-ensemble",
              "kilotune-no-policies": "kilotune-ensemble", "kilotune-startup10": "kilotune", "kilotune-single": "kilotune"}
NO_POLICIES = {"policy": "none", "random_erasing": 0.0}
DATASET = "fashion-mnist"
SPACE = "small"  # kilotune's built-in small space (search/space.py NAMED_SPACES)
DEFAULT_OUT = "bench/results/search_budget.json"
DEFAULT_RUNS = "runs/search_budget"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run: a method at a budget (training epochs) and a seed."""

    method: str
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}-b{self.budget}-s{self.seed}"

    @classmethod
    def parse(cls, key: str) -> Cell:
        method, budget, seed = key.rsplit("-", 2)
        return cls(method, int(budget[1:]), int(seed[1:]))


@dataclasses.dataclass(frozen=True)
class Bench:
    """What every cell shares."""

    epochs: int  # per trial, every method
    subset: Path
    runs_dir: Path
    final_epochs: int = 18  # a member's epochs in the final step (a single model trains ensemble x this)
    ensemble: int = 3  # members of kilotune's delivered ensemble

    def cell_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.key

    def space_spec(self, seed: int, method: str = "kilotune") -> dict[str, Any]:
        from kilotune.search.space import NAMED_SPACES

        # The run's seed is every trial's training seed; the policies' ablation leaves them out.
        return {**NAMED_SPACES[SPACE], "seed": seed, **(NO_POLICIES if method == "kilotune-no-policies" else {})}


@dataclasses.dataclass
class Search:
    """What a method's search left: its winner (an export) and what it spent."""

    export: dict[str, Any] | None
    epochs_spent: int
    trials: int
    complete: int
    pruned: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + ABLATIONS)
    parser.add_argument("--budgets", nargs="+", type=int, default=[60, 180], help="training epochs a run (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs-per-trial", type=int, default=6, help="every method's epochs a trial (default: %(default)s)")
    parser.add_argument("--final-epochs", type=int, default=Bench.final_epochs, help="an ensemble member's epochs in the final step (default: %(default)s)")
    parser.add_argument("--ensemble", type=int, default=Bench.ensemble, help="kilotune's members; a single model trains this x --final-epochs (default: %(default)s)")
    parser.add_argument("--subset", help="subset file (default: a random 100-a-class subset, built once in --runs-dir)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="rows file (default: %(default)s)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS, help="per-cell studies, logs, retrains (default: %(default)s)")
    parser.add_argument("--parallel", type=int, default=1, help="cells at once, each its own process (default: %(default)s)")
    parser.add_argument("--report", action="store_true", help="only print the table and write the figure from --out")
    parser.add_argument("--redeliver", metavar="METHOD", help="no search: each cell's final step anew on the winner recorded in "
                        "METHOD's row at its budget and seed (e.g. kilotune-ensemble: the kilotune search), where it trains that winner alone")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # a child process runs this one cell
    args = parser.parse_args(argv)
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    if args.report:
        print(report(out))
        return 0
    if min(args.epochs_per_trial, args.parallel, args.final_epochs, *args.budgets) < 1 or args.ensemble < 2:
        raise SystemExit(f"need --epochs-per-trial, --parallel, --final-epochs and --budgets >= 1 and --ensemble >= 2; got "
                         f"{args.epochs_per_trial=}, {args.parallel=}, {args.final_epochs=}, {args.budgets=}, {args.ensemble=}")
    bench = Bench(args.epochs_per_trial, Path(args.subset) if args.subset else default_subset(runs_dir), runs_dir, args.final_epochs, args.ensemble)
    if args.cell:
        row = run_cell(Cell.parse(args.cell), bench)
        write_json_atomic(bench.cell_dir(Cell.parse(args.cell)) / "row.json", row)
        return 0
    # Seed by seed, every method at each: partial rows compare methods on the same seeds.
    cells = [Cell(m, b, s) for s in args.seeds for b in sorted(set(args.budgets)) for m in args.methods]
    redeliver(cells, bench, out, args.redeliver) if args.redeliver else run_grid(cells, bench, out, args.parallel)
    print(report(out))
    return 0


# --- the grid: resume, child processes, the rows file --------------------------------------------

def run_grid(cells: list[Cell], bench: Bench, out: Path, parallel: int) -> None:
    """Runs the cells not yet in ``out``, ``parallel`` at once, merging each row as its process ends."""
    rows = load_rows(out)
    check_protocol(rows, bench, out)
    done = {_row_key(r) for r in rows}
    pending = [c for c in cells if (c.method, c.budget, c.seed, bench.final_epochs) not in done]
    print(f"{len(cells) - len(pending)} of {len(cells)} cells already in {out}; running {len(pending)}, {parallel} at once", flush=True)
    env = dict(os.environ)
    # Several processes on one GPU: each takes memory as it needs it, none preallocates it all.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    running: dict[Cell, tuple[subprocess.Popen, float]] = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the finally below
    try:
        while pending or running:
            while pending and len(running) < parallel:
                cell = pending.pop(0)
                cell_dir = bench.cell_dir(cell)
                cell_dir.mkdir(parents=True, exist_ok=True)
                (cell_dir / "row.json").unlink(missing_ok=True)
                command = [sys.executable, str(Path(__file__).resolve()), "--cell", cell.key, "--subset", str(bench.subset),
                           "--epochs-per-trial", str(bench.epochs), "--runs-dir", str(bench.runs_dir),
                           "--final-epochs", str(bench.final_epochs), "--ensemble", str(bench.ensemble)]
                with open(cell_dir / "cell.log", "a") as log:
                    running[cell] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), time.time())
                print(f"{_now()} start {cell.key} (log: {cell_dir / 'cell.log'})", flush=True)
            time.sleep(1.0)
            for cell, (process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[cell]
                row_path = bench.cell_dir(cell) / "row.json"
                if process.returncode != 0 or not row_path.is_file():
                    print(f"{_now()} FAILED {cell.key}: exit {process.returncode}; see {bench.cell_dir(cell) / 'cell.log'}", flush=True)
                    continue
                row = json.loads(row_path.read_text())
                rows = [r for r in load_rows(out) if _row_key(r) != _row_key(row)]
                rows.append(row)
                rows.sort(key=lambda r: (r.get("final_epochs") or 0, r["budget_epochs"], r["seed"], (METHODS + ABLATIONS).index(r["method"])))
                write_json_atomic(out, rows)
                print(f"{_now()} done {cell.key}: test accuracy {row['test_accuracy']}, {row['epochs_spent']} epochs, "
                      f"{row['trials']} trials, {time.time() - started:.0f} s", flush=True)
    finally:
        for process, _ in running.values():  # a killed bench stops its cells; their studies resume
            process.terminate()


def redeliver(cells: list[Cell], bench: Bench, out: Path, source: str) -> None:
    """Each cell's final step run anew on a recorded search: ``source``'s row at the cell's budget and
    seed, its winner trained by the product's retrain for the whole final budget; the row keeps the
    search's fields and says where they came from (``redelivered_from``). A row records only the
    winner's config, so a final step that trains more members than the winner is refused."""
    from kilotune.training.config import RetrainOptions
    from kilotune.training.retrain import final_shape

    rows = load_rows(out)
    check_protocol(rows, bench, out)
    total = bench.ensemble * bench.final_epochs
    for cell in cells:
        members = final_shape(bench.ensemble, total, RetrainOptions.min_member_epochs)[0] if cell.method in ENSEMBLES else 1
        if cell.method in SHARED_SEARCH or cell.method == "kilotune-no-policies" or members > 1:
            raise SystemExit(f"{cell.method}'s final step trains more than one winner's config; a row records only that one: rerun the cell")
        key = (cell.method, cell.budget, cell.seed, bench.final_epochs)
        found = [r for r in rows if _row_key(r) == (source, cell.budget, cell.seed, bench.final_epochs) and r.get("winner_config")]
        if any(_row_key(r) == key for r in rows) or not found:
            print(f"{cell.key}: {'already in ' + str(out) if found else 'no ' + source + ' row to take its search from'}", flush=True)
            continue
        searched, started = found[0], time.perf_counter()
        export = _export(bench, cell, searched["winner_config"], searched.get("winner_trial"), searched.get("winner_val"))
        ensemble_only = ("members", "flip_tta", "selection", "selection_note", "ensemble_validation", "final_shape")
        row = {k: v for k, v in searched.items() if k not in ensemble_only}
        if cell.method in ENSEMBLES:  # the same path as deliver(): an ensemble export, so flip TTA and the shape are the product's
            from kilotune.search.ensemble import seed_members

            export["ensemble"] = {"selection": "seeds", "members": seed_members(searched["winner_config"], bench.ensemble), "validation": None,
                                  "note": f"redelivered from {source}'s row, which records the winner's config only"}
            results = retrain_export(export, bench.cell_dir(cell) / f"redeliver-total-{total}", bench.subset, total_epochs=total)
            row |= ensemble_fields(results)
        else:
            results = retrain_export(export, bench.cell_dir(cell) / f"redeliver-total-{total}", bench.subset, total_epochs=total)
            row |= {"test_accuracy": results["test_accuracy"]["mean"], "retrain_status": results["runs"][0]["status"],
                    "final_members": 1, "member_epochs": total, "final_total_epochs": total}
        row |= {"method": cell.method, "retrain_wall_s": round(time.perf_counter() - started, 1),
                "redelivered_from": {k: searched.get(k) for k in ("method", "commit", "finished_at")}, **environment(), "finished_at": _now()}
        rows = [r for r in load_rows(out) if _row_key(r) != key] + [row]
        rows.sort(key=lambda r: (r.get("final_epochs") or 0, r["budget_epochs"], r["seed"], (METHODS + ABLATIONS).index(r["method"])))
        write_json_atomic(out, rows)
        print(f"{_now()} redelivered {cell.key} from {source}'s search: test accuracy {row['test_accuracy']:.4f}", flush=True)


def _row_key(row: dict[str, Any]) -> tuple[str, int, int, int | None]:
    """A row's cell: rows from before the final step (no ``final_epochs``) are cells of their own."""
    return row["method"], row["budget_epochs"], row["seed"], row.get("final_epochs")


def check_protocol(rows: list[dict[str, Any]], bench: Bench, out: Path) -> None:
    """Refuses to add cells of other epochs a trial or another subset to a rows file."""
    for row in rows:
        if row.get("epochs_per_trial") != bench.epochs:
            raise SystemExit(f"{out} holds rows with epochs_per_trial={row.get('epochs_per_trial')}, this run "
                             f"has {bench.epochs}: pass that --epochs-per-trial or another --out")
    checksum = subset_info(bench.subset)["checksum"] if rows else None
    for row in rows:
        if row.get("subset", {}).get("checksum") != checksum:
            raise SystemExit(f"{out} holds rows on subset {row.get('subset', {}).get('checksum', '?')[:19]}, this run "
                             f"uses {bench.subset} ({checksum[:19]}): pass that --subset or another --out")


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise SystemExit(f"{path} is not a JSON list of rows")
    return rows


def write_json_atomic(path: Path, data: Any) -> None:
    from kilotune.subset.files import write_json

    write_json(data, path, indent=1)  # a reader sees the old file or the new one, never half of one


def default_subset(runs_dir: Path) -> Path:
    """The class-balanced random subset, built once by the product's own command (no extractor)."""
    path = runs_dir / "subset-random-100-seed0.json"
    if not path.is_file():
        from kilotune.cli.main import main as kilotune

        _check(kilotune(["subset", "build", "--dataset", DATASET, "--method", "random", "--per-class", "100", "--seed", "0", "--out", str(path)]),
               "kilotune subset build")
    return path


# --- one cell ------------------------------------------------------------------------------------

def run_cell(cell: Cell, bench: Bench) -> dict[str, Any]:
    """Searches, then the final step: the delivered model trained on all chosen images and tested: one row."""
    if cell.method not in SEARCHES:
        raise ValueError(f"unknown method {cell.method!r}; allowed: {list(SEARCHES)}")
    started_at, started, load = _now(), time.perf_counter(), _load()
    cell_dir = bench.cell_dir(cell)
    cell_dir.mkdir(parents=True, exist_ok=True)
    searched = Cell(SHARED_SEARCH.get(cell.method, cell.method), cell.budget, cell.seed)  # an ablation of the final step reuses it
    search = SEARCHES[searched.method](searched, bench, bench.cell_dir(searched))
    search_s = time.perf_counter() - started
    row: dict[str, Any] = {
        "method": cell.method, "budget_epochs": cell.budget, "seed": cell.seed, "test_accuracy": None,
        "epochs_per_trial": bench.epochs, "epochs_spent": search.epochs_spent, "trials": search.trials,
        "trials_complete": search.complete, "trials_pruned": search.pruned,
    }
    study = search.details.pop("study", None)  # (url, name) of a kilotune study: not for the row
    # A path (not for the row), per final step: a cell's search serves every --final-epochs.
    retrain_dir = Path(search.details.pop("retrain_dir", cell_dir / f"retrain-{bench.ensemble}x{bench.final_epochs}"))
    if search.export is not None:
        row.update(deliver(cell, bench, search.export, study, retrain_dir))
        p = search.export["provenance"]
        cv_mean, cv_se = find_cv(search.export)
        row.update(winner_trial=p.get("trial"), winner_val=p.get("value"), cv_mean=cv_mean, cv_se=cv_se,
                   winner_config=search.export["config"], export=_portable(p))
    row.update(search.details)
    row.update(
        search_wall_s=round(search.details.get("search_wall_s", search_s), 1), wall_s=round(time.perf_counter() - started, 1),
        subset=subset_info(bench.subset), space=bench.space_spec(cell.seed, cell.method), **environment(),
        started_at=started_at, finished_at=_now(), loadavg_start=load, loadavg_end=_load(),
    )
    for heavy in ("checkpoints", "kerastuner"):  # trial checkpoints and KerasTuner's trial models
        shutil.rmtree(cell_dir / heavy, ignore_errors=True)
    return row


def deliver(cell: Cell, bench: Bench, export: dict[str, Any], study: tuple[str, str] | None, retrain_dir: Path) -> dict[str, Any]:
    """The final step, at equal compute (``--ensemble`` x ``--final-epochs`` epochs): kilotune's
    ensemble export in the product's shape for that total, its ablations' with every member at
    ``--final-epochs`` (or a trial's epochs), or a single config for the total."""
    if cell.method not in ENSEMBLES:
        epochs = bench.ensemble * bench.final_epochs
        results = retrain_export(export, retrain_dir, bench.subset, epochs)
        return {"test_accuracy": results["test_accuracy"]["mean"], "retrain_status": results["runs"][0]["status"],
                "final_epochs": bench.final_epochs, "final_members": 1, "final_total_epochs": epochs,
                "retrain_wall_s": round(results.get("bench_wall_s", 0.0), 1)}
    from kilotune.cli.main import main as kilotune

    url, name = study
    ensemble_export = retrain_dir / "ensemble-export.json"
    retrain_dir.mkdir(parents=True, exist_ok=True)
    if not ensemble_export.is_file():  # the product's default selection
        _check(kilotune(["export", "--study", name, "--storage", url, "--ensemble", str(bench.ensemble), "--out", str(ensemble_export)]),
               "kilotune export --ensemble")
    exported = json.loads(ensemble_export.read_text())
    if cell.method == "kilotune":  # the product's shape for the whole final budget
        results = retrain_export(exported, retrain_dir / "total", bench.subset, total_epochs=bench.ensemble * bench.final_epochs)
    else:
        member_epochs = bench.epochs if cell.method == "kilotune-trial-length" else bench.final_epochs
        results = retrain_export(exported, retrain_dir / f"members-{member_epochs}", bench.subset, member_epochs)
    e = exported["ensemble"]
    return {**ensemble_fields(results), "final_epochs": bench.final_epochs, "selection": e["selection"], "selection_note": e["note"],
            "ensemble_validation": e["validation"], "retrain_wall_s": round(results.get("bench_wall_s", 0.0), 1)}


def ensemble_fields(results: dict[str, Any]) -> dict[str, Any]:
    """A row's fields from an ensemble retrain's ``results.json``: the delivered figure and its shape."""
    return {"test_accuracy": results["ensemble_test_accuracy"], "member_epochs": results["final_epochs"][0],
            "final_members": len(results["members"]), "final_total_epochs": results["total_epochs"], "final_shape": results.get("shape"),
            "members": [{k: m.get(k) for k in ("trial", "weight", "seed", "status", "test_accuracy", "tta_test_accuracy")} for m in results["members"]],
            "flip_tta": results["flip_tta"]}


def retrain_export(export: dict[str, Any], retrain_dir: Path, subset: Path, epochs: int | None = None, *, total_epochs: int | None = None) -> dict[str, Any]:
    """``kilotune retrain --epochs`` (or ``--total-epochs``) of the export (once per directory: a resumed cell reuses it)."""
    results = retrain_dir / "results.json"
    if not results.is_file():
        retrain_dir.mkdir(parents=True, exist_ok=True)
        from kilotune.cli.main import main as kilotune

        export_path = retrain_dir / "export.json"
        write_json_atomic(export_path, export)
        started = time.perf_counter()
        length = ["--epochs", str(epochs)] if total_epochs is None else ["--total-epochs", str(total_epochs)]
        _check(kilotune(["retrain", str(export_path), "--subset", str(subset), "--out-dir", str(retrain_dir), *length]), "kilotune retrain")
        data = json.loads(results.read_text())
        data["bench_wall_s"] = time.perf_counter() - started
        write_json_atomic(results, data)
        for model in retrain_dir.glob("*/*.keras"):  # the figure is what is kept, not the models
            model.unlink()
        (retrain_dir / "ensemble.keras").unlink(missing_ok=True)
    return json.loads(results.read_text())


# --- kilotune: the product ------------------------------------------------------------------------

def search_kilotune(cell: Cell, bench: Bench, cell_dir: Path) -> Search:
    """A study made by ``kilotune study create`` (its defaults), trained by the product's Worker one
    trial at a time until the budget is spent; the winner is what ``kilotune export`` writes."""
    from kilotune.cli.main import main as kilotune
    from kilotune.search.samplers import tpe

    url, name = f"sqlite:///{cell_dir / 'study.db'}", cell.key
    os.environ["KILOTUNE_CHECKPOINT_DIR"] = str(cell_dir / "checkpoints")
    space_file = cell_dir / "space.json"
    write_json_atomic(space_file, bench.space_spec(cell.seed, cell.method))
    # The product's budget is in trials: as many as the epochs would buy unpruned.
    _check(kilotune(["study", "create", "--study", name, "--storage", url, "--dataset", DATASET, "--subset", str(bench.subset),
                     "--epochs", str(bench.epochs), "--space", str(space_file), "--seed", str(cell.seed),
                     "--n-trials", str(cell.budget // bench.epochs), "--keep-settings"]), "kilotune study create")  # topped up: n_trials grew
    started = time.perf_counter()
    from kilotune.workers.worker import Worker

    worker = Worker(name, url, worker_id="bench", subset_path=str(bench.subset))  # a named stream: reproducible
    _wait_for_stale(worker.study)  # a killed bench's trial: failed and queued for retry, from its checkpoint
    topped_up = 0
    while (spent := product_epochs(worker.study, worker.storage)) < cell.budget:
        topped_up += _top_up(worker, spent, cell.budget, bench.epochs)
        with _epoch_budget(worker, spent, cell.budget):
            finished = worker.run(max_trials=1)
        if not finished and product_epochs(worker.study, worker.storage) == spent:
            break  # the study's trial budget is spent (pruning left some epochs)
    search_s = time.perf_counter() - started
    export_path, started = cell_dir / "export.json", time.perf_counter()
    if not export_path.is_file():
        if kilotune(["export", "--study", name, "--storage", url, "--out", str(export_path)]) != 0:
            export_path = None  # e.g. no complete trial within the budget: the row says so
    from optuna.trial import TrialState

    from kilotune.search.winner import StudyTrials

    read = StudyTrials.read(worker.study, worker.storage)
    trials = [*read.search, *read.folds]
    return Search(
        export=json.loads(export_path.read_text()) if export_path else None,
        epochs_spent=product_epochs(worker.study, worker.storage), trials=sum(t.state != TrialState.WAITING for t in trials),
        complete=sum(t.state == TrialState.COMPLETE for t in trials), pruned=sum(t.state == TrialState.PRUNED for t in trials),
        details={"search_wall_s": search_s, "export_wall_s": round(time.perf_counter() - started, 1), "study": (url, name),
                 "fold_trials": len(read.folds), "cv_top_k": worker.settings.cv_top_k, "cv_folds": worker.settings.cv_folds,
                 "topped_up_trials": topped_up, "objective_epochs": worker.settings.objective_epochs,
                 "warm_start_trials": sum("preset" in t.user_attrs for t in trials),
                 "tpe_startup_trials": tpe.STARTUP_TRIALS,
                 "settings": {k: v for k, v in worker.study.user_attrs.items() if k in ("sampler", "pruner", "epochs", "val_fraction", "split_seed")}},
    )


def _top_up(worker: Any, spent: int, budget: int, epochs: int) -> int:
    """Extends the study's trial budget by the trials its unspent epochs buy, as a user with an
    epoch budget would (``kilotune study extend --n-trials``); returns how many.

    The product counts trials, and a pruned trial leaves epochs unspent that the other arms
    spend on more trials. Only while the search's share is used up and no fold trial has
    started (the cross-validation's share stays as planned: its epochs are kept for it).
    """
    from optuna.trial import TrialState

    from kilotune.search.budget import counts_toward_budget, current_budget
    from kilotune.search.study import extend_budget
    from kilotune.search.winner import StudyTrials

    settings = current_budget(worker.study, worker.settings)
    read = StudyTrials.read(worker.study, worker.storage)
    if read.folds or settings.n_trials is None or any(t.state == TrialState.WAITING for t in read.search):
        return 0  # cross-validation has begun, no trial budget, or a queued trial (a preset, a retry) is still to spend it
    if sum(counts_toward_budget(t) for t in read.search) < settings.search_trials:
        return 0
    extra = (budget - spent - settings.fold_trials * epochs) // epochs
    if extra > 0:
        extend_budget(worker.study, n_trials=settings.n_trials + extra)
    return max(extra, 0)


def search_kilotune_startup10(cell: Cell, bench: Bench, cell_dir: Path) -> Search:
    """The kilotune arm with TPE's start-up at Optuna's default (10 trials) instead of kilotune's 5.

    Same seed, same worker stream: the two arms draw the same warm start and first random trials,
    so they differ only from the 6th finished trial on, where kilotune's TPE starts modelling.
    """
    from kilotune.search.samplers import tpe

    tpe.STARTUP_TRIALS = 10  # this cell's own process: nothing else sees it
    return search_kilotune(cell, bench, cell_dir)


def product_epochs(study: Any, storage: Any) -> int:
    """Epochs the study's trials trained, its fold trials' too; a retry inherits its parent's
    reports, which count once."""
    from kilotune.search.winner import StudyTrials

    read = StudyTrials.read(study, storage)
    spent = 0
    for group in (read.search, read.folds):  # numbers are per study
        trials = {t.number: t for t in group}
        for t in trials.values():
            history = t.system_attrs.get("retry_history", [])  # RetryHeartbeatStaleTrialCallback.retry_history
            inherited = len(trials[history[-1]].intermediate_values) if history and history[-1] in trials else 0
            spent += max(0, len(t.intermediate_values) - inherited)
    return spent


@contextlib.contextmanager
def _epoch_budget(worker: Any, spent: int, budget: int) -> Iterator[None]:
    """Sets the worker's stop event at the epoch that spends the budget, so the budget is exact.

    The product has no budget in epochs, so the bench adds one epoch callback to the training the
    worker runs (``workers.worker.train``); the worker's own stop event then ends the trial after
    the current batch and fails it for retry, as on SIGTERM.
    """
    import kilotune.workers.worker as module

    original, count = module.train, [spent]

    def on_epoch(report: Any) -> None:
        count[0] += 1
        if count[0] >= budget:
            worker.stop.set()

    def train(config: Any, data: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        return original(config, data, [on_epoch, *callbacks], **kwargs)  # first: a pruned epoch counts too

    module.train = train
    try:
        yield
    finally:
        module.train = original


def _wait_for_stale(study: Any) -> None:
    """Waits until no trial is RUNNING, failing stale ones (the product's heartbeat grace)."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from kilotune.search.retries import GRACE_SECONDS, HEARTBEAT_SECONDS

    deadline = time.monotonic() + GRACE_SECONDS + 2 * HEARTBEAT_SECONDS
    while any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)) and time.monotonic() < deadline:
        fail_stale_trials(study)
        time.sleep(2.0)


# --- random and optuna: stock Optuna over kilotune's space and training core -----------------------

class BudgetSpent(Exception):
    """Raised inside a trial when the run's epochs reach the budget."""


def search_optuna(cell: Cell, bench: Bench, cell_dir: Path) -> Search:
    import keras
    import optuna
    from optuna.trial import TrialState

    from kilotune.search.space import SearchSpace
    from kilotune.training.train import train

    data, _, _ = _holdout(bench)
    space = SearchSpace.from_spec(bench.space_spec(cell.seed, cell.method))
    storage = f"sqlite:///{cell_dir / 'optuna.db'}"
    existing = _optuna_trials(storage, cell.key)
    # A resumed study gets a fresh seed, or it would draw its first configurations again.
    seed = cell.seed + 7919 * existing
    if cell.method == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    else:
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=cell.key, storage=storage, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True)
    spent = [sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))]

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial, bench.epochs)
        trial.set_user_attr("config", config.to_dict())

        def report(r: Any) -> None:
            spent[0] += 1
            trial.report(r.val_accuracy, r.epoch)
            if r.epoch < bench.epochs and spent[0] >= cell.budget:
                raise BudgetSpent(f"{spent[0]} epochs")
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")

        try:
            result = train(config, data, [report])
        finally:
            keras.backend.clear_session()
        trial.set_user_attr("status", result.status)
        return float("nan") if result.status == "diverged" else result.val_accuracy  # NaN: Optuna fails the trial

    def stop_at_budget(study: optuna.Study, trial: Any) -> None:
        if spent[0] >= cell.budget:
            study.stop()

    started = time.perf_counter()
    if spent[0] < cell.budget:
        with contextlib.suppress(BudgetSpent):
            study.optimize(objective, callbacks=[stop_at_budget])
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    export = None
    if complete:
        best = study.best_trial
        export = _export(bench, cell, best.user_attrs["config"], best.number, best.value)
    return Search(export, spent[0], len(trials), len(complete), sum(t.state == TrialState.PRUNED for t in trials),
                  {"search_wall_s": time.perf_counter() - started, "sampler": type(sampler).__name__, "pruner": type(pruner).__name__})


def _optuna_trials(storage: str, name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        return 0


# --- kerastuner: Hyperband through the adapter -----------------------------------------------------

def search_kerastuner(cell: Cell, bench: Bench, cell_dir: Path) -> Search:
    """KerasTuner's Hyperband; restarted from scratch when a cell is resumed (its own state is its own)."""
    import keras
    import keras_tuner

    from kilotune.search.kerastuner import KilotuneHyperModel
    from kilotune.search.space import SearchSpace

    class Spent(keras_tuner.errors.FatalError):
        """Ends ``Tuner.search`` (a FatalError is not caught as a failed trial)."""

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs, self.trials = 0, 0

        def __deepcopy__(self, memo: dict) -> EpochLog:
            return self  # KerasTuner deep-copies callbacks for every trial; the count must be shared

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.trials += 1

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epochs += 1
            if self.epochs >= cell.budget:
                raise Spent(f"{self.epochs} epochs")

    from kilotune.subset.datasets import channel_stats

    data, _, _ = _holdout(bench)
    hypermodel = KilotuneHyperModel(SearchSpace.from_spec(bench.space_spec(cell.seed, cell.method)), epochs=bench.epochs,
                                    input_shape=data.x_train.shape[1:], num_classes=data.num_classes, n_train=len(data.x_train),
                                    normalization=channel_stats(data.x_train))
    log, started = EpochLog(), time.perf_counter()
    # Enough Hyperband iterations that the epoch budget, not the tuner, ends the search.
    tuner = keras_tuner.Hyperband(hypermodel, objective="val_accuracy", max_epochs=bench.epochs, factor=3, hyperband_iterations=1000,
                                  seed=cell.seed, directory=str(cell_dir), project_name="kerastuner", overwrite=True)
    with contextlib.suppress(Spent):
        tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), callbacks=[log], verbose=0)
    keras.backend.clear_session()
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    export = None
    if done:
        best = tuner.oracle.get_best_trials(1)[0]
        export = _export(bench, cell, hypermodel.config(best.hyperparameters).to_dict(), best.trial_id, best.score)
    # Hyperband trials stopped early are COMPLETED at their rung; "pruned" has no meaning here.
    return Search(export, log.epochs, log.trials, len(done), 0, {"search_wall_s": time.perf_counter() - started})


# --- preset: the known-good recipes alone -----------------------------------------------------------

def search_preset(cell: Cell, bench: Bench, cell_dir: Path) -> Search:
    """Every preset that fits the budget, trained once; the best by validation accuracy wins.

    The result depends only on the seed and how many presets fit, so cells share it (and its retrain).
    """
    from kilotune.training.train import train

    candidates, source = preset_candidates(bench, cell.seed, cell_dir)
    fits = candidates[: cell.budget // bench.epochs]
    shared = bench.runs_dir / f"preset-s{cell.seed}-n{len(fits)}"
    shared.mkdir(parents=True, exist_ok=True)
    data, _, _ = _holdout(bench)
    started = time.perf_counter()
    from kilotune.subset.files import file_lock

    with file_lock(shared / ".lock"):
        results = json.loads((shared / "presets.json").read_text()) if (shared / "presets.json").is_file() else []
        for name, config in fits[len(results):]:
            import keras

            result = train(config, data)
            keras.backend.clear_session()
            results.append({"preset": name, "config": config.to_dict(), "status": result.status,
                            "epochs": len(result.history), "val_accuracy": result.val_accuracy})
            write_json_atomic(shared / "presets.json", results)
    usable = [r for r in results if r["status"] == "complete"]
    best = max(usable, key=lambda r: r["val_accuracy"], default=None)
    export = _export(bench, cell, best["config"], best["preset"], best["val_accuracy"]) if best else None
    return Search(export, sum(r["epochs"] for r in results), len(results), len(usable), 0,
                  {"search_wall_s": time.perf_counter() - started, "presets": [{k: r[k] for k in ("preset", "val_accuracy", "status")} for r in results],
                   "preset_source": source, "winner_preset": best["preset"] if best else None,
                   "retrain_dir": str(shared / f"retrain-{bench.ensemble}x{bench.final_epochs}")})


def preset_candidates(bench: Bench, seed: int, cell_dir: Path) -> tuple[list[tuple[str, Any]], str]:
    """The configs the product's warm start enqueues into a new study of this space and epochs;
    where it enqueues none, PRESETS narrowed to the space here (the bench's own stand-in)."""
    from optuna.trial import TrialState

    from kilotune.cli.main import main as kilotune
    from kilotune.search.presets import PRESETS
    from kilotune.search.space import SearchSpace
    from kilotune.search.storage import open_storage
    from kilotune.search.study import load_study
    from kilotune.training.config import TrainConfig

    space_file, url = cell_dir / "space.json", f"sqlite:///{cell_dir / 'presets.db'}"
    write_json_atomic(space_file, bench.space_spec(seed))
    _check(kilotune(["study", "create", "--study", "presets", "--storage", url, "--dataset", DATASET, "--subset", str(bench.subset),
                     "--epochs", str(bench.epochs), "--space", str(space_file), "--seed", str(seed)]), "kilotune study create")
    study, _ = load_study("presets", open_storage(url))
    space = SearchSpace.from_spec(bench.space_spec(seed))
    queued = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING and "preset_config" in t.user_attrs]
    if queued:  # as SearchSpace.suggest makes an enqueued preset's config
        return [(t.user_attrs.get("preset", f"trial-{t.number}"),
                 TrainConfig.from_dict({**t.user_attrs["preset_config"], **space.fixed, "epochs": bench.epochs})) for t in queued], "product warm start"
    archs, widths, batches = (space.params[k].choices for k in ("arch", "width", "batch_size"))
    narrowed = []
    for name, preset in PRESETS.items():
        if preset.arch not in archs:
            continue
        width = max((w for w in widths if w <= preset.width), default=min(widths))
        batch = min(batches, key=lambda b: abs(b - preset.batch_size))
        narrowed.append((name, preset.replace(width=width, batch_size=batch, epochs=bench.epochs, **space.fixed)))
    return narrowed, "PRESETS narrowed to the space by the bench (the product enqueued none)"


# --- shared helpers ---------------------------------------------------------------------------------

SEARCHES = {"kilotune": search_kilotune, "random": search_optuna, "optuna": search_optuna, "kerastuner": search_kerastuner,
            "preset": search_preset, "kilotune-ensemble": search_kilotune, "kilotune-single": search_kilotune, "kilotune-trial-length": search_kilotune,
            "kilotune-no-policies": search_kilotune, "kilotune-startup10": search_kilotune_startup10}


def _holdout(bench: Bench) -> tuple[Any, Any, Any]:
    """The study's split of the subset (its default validation fraction and split seed)."""
    from kilotune.search.settings import StudySettings
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.subsetfile import load_subset
    from kilotune.training.data import holdout_data

    defaults = {f.name: f.default for f in dataclasses.fields(StudySettings)}
    dataset = load_dataset(DATASET)
    subset = load_subset(bench.subset, dataset)
    return holdout_data(dataset, subset.indices, defaults["val_fraction"], defaults["split_seed"]), dataset, subset


def _export(bench: Bench, cell: Cell, config: dict[str, Any], trial: Any, value: float | None) -> dict[str, Any]:
    """What ``kilotune export`` would write for a baseline's winner, so ``kilotune retrain`` reads it."""
    from kilotune.cli.main import version
    from kilotune.search.settings import StudySettings
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.subsetfile import load_subset

    defaults = {f.name: f.default for f in dataclasses.fields(StudySettings)}
    dataset = load_dataset(DATASET)
    subset = load_subset(bench.subset, dataset)
    return {"config": config, "provenance": {
        "study": f"search_budget/{cell.key}", "trial": trial, "value": value, "dataset": dataset.name,
        "dataset_checksum": dataset.checksum, "subset_path": str(bench.subset), "subset_checksum": subset.checksum,
        "val_fraction": defaults["val_fraction"], "split_seed": defaults["split_seed"], "kilotune_version": version(),
        "seed": config.get("seed", 0), "method": cell.method,
    }}


def find_cv(export: dict[str, Any]) -> tuple[float | None, float | None]:
    """The cross-validated mean and standard error ``kilotune export`` writes (``search.export.provenance``)."""
    p = export.get("provenance", {})
    return p.get("cv_mean"), p.get("cv_stderr")


def _portable(provenance: dict[str, Any]) -> dict[str, Any]:
    """The export's provenance without machine paths or bulky version lists (rows are committed)."""
    drop = ("subset_path", "subset_content", "library_versions", "dataset_checksum", "exported_at")  # the row has subset: its checksum
    return {k: v for k, v in provenance.items() if k not in drop and not (isinstance(v, str) and v.startswith("/"))}


def subset_info(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    from kilotune.subset.subsetfile import load_subset

    subset = load_subset(path)
    return {"file": Path(path).name, "method": subset.method, "seed": subset.seed, "images": len(subset.indices),
            "checksum": subset.checksum, "params": data.get("params") or {}}


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} failed with exit status {code}")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- report -------------------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, budget): mean and sample std of test accuracy over seeds, n, and the means of the rest."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("test_accuracy") is not None:
            groups.setdefault((row["method"], row["budget_epochs"]), []).append(row)
    summary = {}
    order = METHODS + ABLATIONS
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]) if kv[0][0] in order else 99)):
        acc = [r["test_accuracy"] for r in rs]
        summary[key] = {**_mean_std(acc), "n": len(acc), "seeds": sorted(r["seed"] for r in rs), "by_seed": {r["seed"]: r["test_accuracy"] for r in rs},
                        "epochs_spent": sum(r["epochs_spent"] for r in rs) / len(rs), "trials": sum(r["trials"] for r in rs) / len(rs),
                        "final_total_epochs": rs[0].get("final_total_epochs"), "wall_s": sum(r.get("wall_s", 0.0) for r in rs) / len(rs)}
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0}


def report(out: Path) -> str:
    """Markdown tables from the rows file (the delivered models; the targets, paired by seed; each
    lever's ablation; the rows from before the final step); writes the figure beside it."""
    rows = load_rows(out)
    delivered = summarise([r for r in rows if r.get("final_epochs") is not None])
    before = summarise([r for r in rows if r.get("final_epochs") is None])
    lines = ["Delivered models (final step at equal compute):", "",
             "| method | budget (epochs) | test accuracy (mean ± std) | n seeds | epochs spent (mean) | final epochs | trials (mean) | wall s (mean) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (method, budget), s in delivered.items():
        lines.append(f"| {method} | {budget} | {s['mean']:.4f} ± {s['std']:.4f} | {s['n']} | {s['epochs_spent']:.0f} | "
                     f"{s['final_total_epochs']} | {s['trials']:.1f} | {s['wall_s']:.0f} |")
    lines += ["", *targets(delivered), "", *levers(delivered), "", *policies([r for r in rows if r.get("final_epochs") is not None])]
    if before:
        lines += ["", "Before the final step (each winner retrained at the trial's epochs; rows without final_epochs):", "",
                  "| method | budget (epochs) | test accuracy (mean ± std) | n seeds |", "| --- | ---: | --- | ---: |"]
        lines += [f"| {m} | {b} | {s['mean']:.4f} ± {s['std']:.4f} | {s['n']} |" for (m, b), s in before.items()]
    if delivered:
        written = write_figure(delivered, out.with_suffix(".html"))
        lines.append("\nfigure: " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


def targets(summary: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """Issue 27's targets per budget: kilotune's lead over every other method's mean, and over the
    best alternative in each seed, on kilotune's seeds. A method that has not run all of them is
    named in the last column, not compared (intersecting seeds let one cell of a method that is
    still running shrink the whole comparison to that cell)."""
    lines = ["| budget | kilotune (seeds) | best other method (mean) | lead | seeds kilotune beat the best alternative | not compared (seeds run) |",
             "| ---: | ---: | --- | ---: | ---: | --- |"]
    for budget in sorted({b for _, b in summary}):
        mine = summary.get(("kilotune", budget))
        others = {m: s for (m, b), s in summary.items() if b == budget and m in METHODS and m != "kilotune"}
        if mine is None or not others:
            continue
        seeds = sorted(mine["by_seed"])
        complete = {m: s for m, s in others.items() if set(seeds) <= set(s["by_seed"])}
        missing = ", ".join(f"{m} ({len(set(seeds) & set(s['by_seed']))} of {len(seeds)})" for m, s in others.items() if m not in complete) or "-"
        own = sum(mine["by_seed"][x] for x in seeds) / len(seeds)
        if not complete:
            lines.append(f"| {budget} | {own:.4f} ({len(seeds)}) | - | - | - | {missing} |")
            continue
        means = {m: sum(s["by_seed"][x] for x in seeds) / len(seeds) for m, s in complete.items()}
        best = max(means, key=means.get)
        wins = sum(mine["by_seed"][x] > max(s["by_seed"][x] for s in complete.values()) for x in seeds)
        lines.append(f"| {budget} | {own:.4f} ({len(seeds)}) | {best} {means[best]:.4f} | {100 * (own - means[best]):+.1f} points | "
                     f"{wins} of {len(seeds)} | {missing} |")
    return lines + ["", "| budget | kilotune less | mean difference ± std (points) | seeds kilotune higher |", "| ---: | --- | ---: | ---: |",
                    *_paired(summary, [m for m in METHODS if m != "kilotune"])]


def _paired(summary: dict[tuple[str, int], dict[str, Any]], methods: list[str] | tuple[str, ...], base: dict[str, str] | None = None) -> list[str]:
    """Table rows: kilotune (or ``base[method]``) less each of ``methods``, per budget, on the seeds both ran."""
    lines = []
    for (method, budget), s in summary.items():
        own = (base or {}).get(method, "kilotune")
        mine = summary.get((own, budget))
        seeds = sorted(set(mine["by_seed"]) & set(s["by_seed"])) if mine and method in methods else []
        if seeds:
            diffs = [100 * (mine["by_seed"][x] - s["by_seed"][x]) for x in seeds]
            d = _mean_std(diffs)
            label = method if own == "kilotune" else f"{method} (from {own})"
            lines.append(f"| {budget} | {label} | {d['mean']:+.1f} ± {d['std']:.1f} | {sum(x > 0 for x in diffs)} of {len(seeds)} |")
    return lines


def policies(rows: list[dict[str, Any]]) -> list[str]:
    """Which augmentation policy the searches' winners use, per method and budget (what the search picks)."""
    counts: dict[tuple[str, int], dict[str, int]] = {}
    for r in rows:
        config = r.get("winner_config")
        if config is None or r["method"] not in METHODS:
            continue
        picked = config.get("policy", "none") + (" + random erasing" if config.get("random_erasing", 0) else "")
        group = counts.setdefault((r["method"], r["budget_epochs"]), {})
        group[picked] = group.get(picked, 0) + 1
    lines = ["| method | budget | the winners' policies (seeds) |", "| --- | ---: | --- |"]
    for (method, budget), group in sorted(counts.items(), key=lambda kv: (kv[0][1], METHODS.index(kv[0][0]))):
        lines.append(f"| {method} | {budget} | " + ", ".join(f"{k}: {v}" for k, v in sorted(group.items(), key=lambda kv: -kv[1])) + " |")
    return lines


def levers(summary: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """What each lever adds: the arm an ablation changes (``LEVER_BASE``) less the ablation, paired by seed."""
    return ["| budget | lever (its arm less this ablation) | mean difference ± std (points) | seeds the arm higher |",
            "| ---: | --- | ---: | ---: |", *_paired(summary, ABLATIONS, LEVER_BASE)]


def write_figure(summary: dict[tuple[str, int], dict[str, Any]], path: Path) -> list[Path]:
    """Test accuracy against budget, one line per method with ±1 std error bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    methods = list(dict.fromkeys(m for m, _ in summary))
    most = {b: max(s["n"] for (_, b2), s in summary.items() if b2 == b) for _, b in summary}
    for i, method in enumerate(methods):
        points = sorted((b, s) for (m, b), s in summary.items() if m == method)
        dodge = 1 + 0.015 * (i - (len(methods) - 1) / 2)  # side by side, so each error bar shows
        fig.add_trace(go.Scatter(x=[b * dodge for b, _ in points], y=[s["mean"] for _, s in points], mode="lines+markers+text", name=method,
                                 error_y={"type": "data", "array": [s["std"] for _, s in points], "visible": True},
                                 # a mean over fewer seeds than the budget's others says so on the still image too
                                 text=[f"{s['n']} of {most[b]} seeds" if s["n"] < most[b] else "" for b, s in points], textposition="bottom center",
                                 hovertext=[f"{b} epochs, n={s['n']} seeds" for b, s in points]))
    fig.update_layout(title="Delivered model's test accuracy against the search budget (mean ± std over seeds; equal final compute)",
                      xaxis_title="search budget (training epochs a run)", yaxis_title="test accuracy (10,000 images)", template="plotly_white")
    fig.update_xaxes(tickvals=sorted({b for _, b in summary}))  # ticks at the budgets run, not at round numbers
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline
    written, png = [path], path.with_suffix(".png")
    png.unlink(missing_ok=True)  # a PNG of older rows must not stand in for this one
    with contextlib.suppress(Exception):  # PNG where kaleido (and its browser) is installed
        import kaleido  # noqa: F401

        fig.write_image(png, width=1000, height=560)  # the browser screenshot's size
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not png.is_file() and browser:  # or a headless browser's screenshot of the HTML (the docs show it)
        with tempfile.TemporaryDirectory() as scratch:  # a copy without plotly's toolbar, which means nothing in a PNG
            still = Path(scratch) / "figure.html"
            fig.write_html(still, include_plotlyjs=True, config={"displayModeBar": False})
            subprocess.run([browser, "--headless", "--no-sandbox", "--hide-scrollbars", "--window-size=1000,560",
                            f"--screenshot={png.resolve()}", still.as_uri()], capture_output=True, timeout=120, check=False)
    if png.is_file():
        written.append(png)
    return written


if __name__ == "__main__":
    sys.exit(main())
