"""bench/search_budget.py: the report from a rows file, and real cells with their resume."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_bounded

BENCH = REPO / "bench" / "search_budget.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("search_budget", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_report_gives_mean_and_std_over_seeds_per_method_and_budget(tmp_path):
    bench = load_bench()
    rng = np.random.default_rng(7)
    rows = [{"method": m, "budget_epochs": b, "seed": s, "test_accuracy": float(rng.uniform(0.5, 0.9)),
             "epochs_spent": b, "trials": int(rng.integers(3, 30)), "wall_s": 10.0}
            for b in (30, 90) for m in ("kilotune", "random", "preset") for s in (0, 1, 2)]
    rows.append({"method": "random", "budget_epochs": 30, "seed": 3, "test_accuracy": None, "epochs_spent": 30, "trials": 2})  # no winner
    rows.append({"method": "optuna", "budget_epochs": 90, "seed": 0, "test_accuracy": 0.61, "epochs_spent": 90, "trials": 5})
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
def test_cells_spend_exactly_the_budget_and_a_rerun_resumes(tmp_path, fashion_subset):
    from kilotune.subset.subsetfile import load_subset

    out, runs, checksum = tmp_path / "rows.json", tmp_path / "runs", load_subset(fashion_subset).checksum
    common = ["--epochs-per-trial", "2", "--seeds", "0", "--subset", str(fashion_subset), "--out", str(out), "--runs-dir", str(runs)]

    first = run_bench("--methods", "kilotune", "random", "--budgets", "3", *common)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = json.loads(out.read_text())
    assert [(r["method"], r["budget_epochs"], r["seed"]) for r in rows] == [("kilotune", 3, 0), ("random", 3, 0)]
    for row in rows:
        # One whole 2-epoch trial, and a second cut after its first epoch: the budget, no more.
        assert row["epochs_spent"] == 3, row
        assert row["trials_complete"] >= 1 and row["trials"] >= 2
        assert 0.0 < row["test_accuracy"] < 1.0
        assert row["subset"]["checksum"] == checksum and row["subset"]["method"] == "random"
        assert row["winner_config"]["epochs"] == 2 and row["winner_config"]["seed"] == 0
        assert row["backend"] and row["machine"]["cores"] >= 1 and row["kilotune_version"]
        assert "/" not in json.dumps(row["export"]).replace("search_budget/", "")  # no machine paths in committed rows

    second = run_bench("--methods", "random", "--budgets", "3", "2", *common)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 of 2 cells already" in second.stdout
    again = json.loads(out.read_text())
    # The cells already there were not run again; the new one comes first (budget, seed, method order).
    assert [(r["method"], r["budget_epochs"]) for r in again] == [("random", 2), ("kilotune", 3), ("random", 3)]
    assert again[1:] == rows
    assert again[0]["epochs_spent"] == 2 and again[0]["trials"] == 1
