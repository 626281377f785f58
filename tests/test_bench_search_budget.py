"""bench/search_budget.py: the report from a rows file, and real cells with their resume."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.conftest import REPO, load_script, run_bounded

BENCH = REPO / "bench" / "search_budget.py"


def load_bench():
    return load_script(BENCH)


def test_report_gives_mean_and_std_over_seeds_per_method_and_budget(tmp_path):
    bench = load_bench()
    rng = np.random.default_rng(7)
    rows = [{"method": m, "budget_epochs": b, "seed": s, "test_accuracy": float(rng.uniform(0.5, 0.9)),
             "epochs_spent": b, "trials": int(rng.integers(3, 30)), "wall_s": 10.0, "final_epochs": 18, "final_total_epochs": 54}
            for b in (30, 90) for m in ("kilotune", "random", "preset") for s in (0, 1, 2)]
    rows.append({"method": "random", "budget_epochs": 30, "seed": 3, "test_accuracy": None, "epochs_spent": 30, "trials": 2, "final_epochs": 18})  # no winner
    rows.append({"method": "optuna", "budget_epochs": 90, "seed": 0, "test_accuracy": 0.61, "epochs_spent": 90, "trials": 5, "final_epochs": 18})
    out = tmp_path / "rows.json"
    out.write_text(json.dumps(rows))

    table = bench.report(out)

    for (method, budget) in {(r["method"], r["budget_epochs"]) for r in rows}:
        acc = [r["test_accuracy"] for r in rows if (r["method"], r["budget_epochs"]) == (method, budget) and r["test_accuracy"] is not None]
        std = np.std(acc, ddof=1) if len(acc) > 1 else 0.0
        assert f"| {method} | {budget} | {np.mean(acc):.4f} ± {std:.4f} | {len(acc)} |" in table
    assert "| random | 30 |" in table and table.count("| random | 30 |") == 1
    html = (tmp_path / "rows.html").read_text()
    assert "plotly" in html and all(f'"name":"{m}"' in html for m in ("kilotune", "random", "preset", "optuna"))
    assert html.count("1 of 3 seeds") == 1, "optuna's one seed at 90 is marked on the figure; full points are not"


def test_the_targets_pair_seeds_and_the_levers_pair_each_ablation_with_the_arm_it_changes(tmp_path):
    bench = load_bench()
    acc = {"kilotune": [0.86, 0.84, 0.85], "random": [0.80, 0.85, 0.81], "optuna": [0.83, 0.80, 0.84], "kilotune-ensemble": [0.84, 0.83, 0.85],
           "kilotune-trial-length": [0.80, 0.84, 0.81]}
    rows = [{"method": m, "budget_epochs": 180, "seed": s, "test_accuracy": a[s], "epochs_spent": 100, "trials": 9, "final_epochs": 18,
             "winner_config": {"policy": "randaugment" if s else "none", "random_erasing": 0.25 * (s == 2)}}
            for m, a in acc.items() for s in range(3)]
    rows.append({"method": "kilotune", "budget_epochs": 180, "seed": 0, "test_accuracy": 0.70, "epochs_spent": 180, "trials": 30})  # before the final step
    out = tmp_path / "rows.json"
    out.write_text(json.dumps(rows))
    table = bench.report(out)
    # optuna's mean is the best other (0.8233 against random's 0.82), kilotune 0.85: +2.7 points; seed 1 lost to random.
    assert "| 180 | 0.8500 (3) | optuna 0.8233 | +2.7 points | 2 of 3 | - |" in table, table
    assert "| 180 | kilotune-ensemble | +1.0 ± 1.0 | 2 of 3 |" in table, table
    assert "| 180 | kilotune-trial-length (from kilotune-ensemble) | +2.3 ± 2.9 | 2 of 3 |" in table, "paired with the ensemble it shortens"
    assert "| 180 | random | +3.0 ± 3.6 | 2 of 3 |" in table and "| 180 | optuna | +2.7 ± 1.5 | 3 of 3 |" in table, "each pair, by seed"
    assert "Before the final step" in table and "| kilotune | 180 | 0.7000 ± 0.0000 | 1 |" in table
    assert "| kilotune | 180 | none: 1, randaugment: 1, randaugment + random erasing: 1 |" in table, "what the search picks"

    # A method still running (random: seed 0 only) is named, and the others are compared on all of kilotune's seeds.
    out.write_text(json.dumps([r for r in rows if r["method"] != "random" or r["seed"] == 0]))
    table = bench.report(out)
    assert "| 180 | 0.8500 (3) | optuna 0.8233 | +2.7 points | 3 of 3 | random (1 of 3) |" in table, table
    out.write_text(json.dumps([r for r in rows if r["method"] in ("kilotune", "random") and (r["method"] == "kilotune" or r["seed"] == 0)]))
    assert "| 180 | 0.8500 (3) | - | - | - | random (1 of 3) |" in bench.report(out)


def test_rows_of_another_protocol_are_refused(tmp_path):
    bench = load_bench()
    out = tmp_path / "rows.json"
    out.write_text(json.dumps([{"method": "random", "budget_epochs": 4, "seed": 0, "epochs_per_trial": 3, "subset": {"checksum": "sha256:x"}}]))
    subset = tmp_path / "subset.json"
    with pytest.raises(SystemExit, match="epochs_per_trial=3"):
        bench.run_grid([bench.Cell("random", 4, 0)], bench.Bench(2, subset, tmp_path / "runs"), out, 1)


def test_the_startup_ablation_is_the_kilotune_arm_with_optunas_default_startup(tmp_path, monkeypatch):
    from kilotune.search.samplers import tpe

    bench = load_bench()
    monkeypatch.setattr(tpe, "STARTUP_TRIALS", tpe.STARTUP_TRIALS)  # undone after the test
    seen = []
    monkeypatch.setattr(bench, "search_kilotune", lambda cell, b, d: seen.append((cell, tpe.STARTUP_TRIALS)))
    cell = bench.Cell.parse("kilotune-startup10-b60-s2")

    bench.SEARCHES[cell.method](cell, None, tmp_path)

    assert cell == bench.Cell("kilotune-startup10", 60, 2)
    assert seen == [(cell, 10)]


def run_bench(*args):
    return run_bounded([sys.executable, str(BENCH), *args], cwd=REPO)


@pytest.mark.slow
def test_cells_spend_at_most_the_budget_deliver_at_equal_compute_and_a_rerun_resumes(tmp_path, fashion_subset):
    from kilotune.subset.subsetfile import load_subset

    out, runs, checksum = tmp_path / "rows.json", tmp_path / "runs", load_subset(fashion_subset).checksum
    common = ["--epochs-per-trial", "2", "--seeds", "0", "--subset", str(fashion_subset), "--out", str(out), "--runs-dir", str(runs),
              "--final-epochs", "1", "--ensemble", "2"]

    first = run_bench("--methods", "kilotune", "random", "kilotune-ensemble", "--budgets", "3", *common)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = json.loads(out.read_text())
    assert [(r["method"], r["budget_epochs"], r["seed"]) for r in rows] == [("kilotune", 3, 0), ("random", 3, 0), ("kilotune-ensemble", 3, 0)]
    kilotune, random, ensemble = rows
    # random: one whole 2-epoch trial, and a second cut after its first epoch: the budget, no more.
    assert random["epochs_spent"] == 3 and random["trials"] >= 2
    # kilotune: its budget is 3 // 2 = 1 trial, in the product's currency; the epoch left buys no whole trial.
    assert kilotune["epochs_spent"] == 2 and kilotune["trials"] == 1
    assert random["final_members"] == 1 and random["final_total_epochs"] == 2, "a single config trains ensemble x final epochs"
    # 2 epochs in all give no member the product's min_member_epochs: the winner alone trains them.
    assert kilotune["final_members"] == 1 and kilotune["final_total_epochs"] == 2 and kilotune["member_epochs"] == 2
    assert kilotune["final_shape"] == {"total_epochs": 2, "members_exported": 2, "members_trained": 1, "min_member_epochs": 54}
    assert ensemble["final_members"] == 2 and ensemble["final_total_epochs"] == 2 and ensemble["selection"] == "seeds", \
        "one trial: nothing cross-validated, a seed ensemble of the winner"
    assert [m["seed"] for m in ensemble["members"]] == [0, 1] and ensemble["flip_tta"] == [ensemble["winner_config"]["flip"]] * 2
    assert ensemble["epochs_spent"] == kilotune["epochs_spent"] and ensemble["winner_trial"] == kilotune["winner_trial"], "one search"
    for row in rows:
        assert row["final_epochs"] == 1 and 0.0 < row["test_accuracy"] < 1.0
        assert row["subset"]["checksum"] == checksum and row["subset"]["method"] == "random"
        assert row["winner_config"]["epochs"] == 2 and row["winner_config"]["seed"] == 0
        assert row["backend"] and row["machine"]["cores"] >= 1 and row["kilotune_version"]
        assert "/" not in json.dumps(row["export"]).replace("search_budget/", "")  # no machine paths in committed rows

    # A new final step on the recorded search: the ensemble row's winner, trained as kilotune trains it now.
    redelivered = tmp_path / "redelivered.json"
    redelivered.write_text(json.dumps([ensemble]))
    again = run_bench("--methods", "kilotune", "--budgets", "3", "--redeliver", "kilotune-ensemble", *common[:-6], "--out", str(redelivered),
                      "--runs-dir", str(runs), "--final-epochs", "1", "--ensemble", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    copy = next(r for r in json.loads(redelivered.read_text()) if r["method"] == "kilotune")
    assert copy["redelivered_from"]["method"] == "kilotune-ensemble" and copy["winner_config"] == ensemble["winner_config"]
    assert copy["final_members"] == 1 and copy["final_total_epochs"] == 2 and 0.0 < copy["test_accuracy"] < 1.0
    assert [m["seed"] for m in copy["members"]] == [0] and copy["final_shape"]["members_trained"] == 1, "the product's shape: the winner alone"
    assert copy["flip_tta"] == [copy["winner_config"]["flip"]], "flip TTA as the delivered ensemble has it"
    refused = run_bench("--methods", "kilotune-trial-length", "--budgets", "3", "--redeliver", "kilotune-ensemble", *common[:-6],
                        "--out", str(redelivered), "--runs-dir", str(runs), "--final-epochs", "1", "--ensemble", "2")
    assert refused.returncode != 0 and "a row records only that one: rerun the cell" in refused.stderr

    # A budget of 1 epoch buys no whole 2-epoch trial: a row with no winner (and no final step to wait for).
    second = run_bench("--methods", "random", "--budgets", "3", "1", *common)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 of 2 cells already" in second.stdout
    again = json.loads(out.read_text())
    # The cells already there were not run again; the new one comes first (budget, seed, method order).
    assert [(r["method"], r["budget_epochs"]) for r in again] == [("random", 1), ("kilotune", 3), ("random", 3), ("kilotune-ensemble", 3)]
    assert again[1:] == rows
    assert again[0]["epochs_spent"] == 1 and again[0]["trials"] == 1 and again[0]["test_accuracy"] is None


def test_kilotunes_trial_budget_is_topped_up_with_the_epochs_pruning_left(tmp_path, fashion_subset):
    """The bench's budget is epochs, the product's trials: once the search's trials are spent, the
    epochs pruned trials left buy whole trials more (``study extend``), never while one is queued."""
    import optuna

    from kilotune.cli.main import main
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage

    bench = load_bench()
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["study", "create", "--study", "s", "--storage", url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset),
                 "--epochs", "3", "--n-trials", "4", "--cv-top-k", "0", "--no-warm-start"]) == 0  # fmt: skip
    storage = open_storage(url)
    study = optuna.load_study(study_name="s", storage=storage)
    worker = type("Worker", (), {"study": study, "storage": storage, "settings": StudySettings.from_study(study)})

    def finish(epochs: int, pruned: bool) -> None:
        trial = study.ask()
        for epoch in range(1, epochs + 1):
            trial.report(0.5, epoch)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(trial, 0.5)

    for epochs, pruned in ((3, False), (1, True), (3, False)):
        finish(epochs, pruned)
    assert bench._top_up(worker, 7, 12, 3) == 0, "a search trial of the 4 is left"
    finish(1, True)
    study.enqueue_trial({})
    assert bench._top_up(worker, 8, 12, 3) == 0, "a queued trial spends the budget first"
    study.tell(study.ask(), 0.5)
    assert bench._top_up(worker, 8, 12, 3) == 1 and study.user_attrs["n_trials"] == 5, "4 epochs left: 1 whole trial"
    finish(1, True)  # the bench's loop runs it, and it is pruned too
    assert bench._top_up(worker, 9, 12, 3) == 1 and study.user_attrs["n_trials"] == 6
    finish(3, False)
    assert bench._top_up(worker, 12, 12, 3) == 0 and study.user_attrs["n_trials"] == 6, "the budget is spent"
