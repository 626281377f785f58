"""bench/gpu_fleet.py: nvidia-smi's lines, a cell's row and the table; and the smoke run as a real process."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from tests.conftest import REPO, load_script, run_bounded

BENCH = REPO / "bench" / "gpu_fleet.py"


def load_bench():
    return load_script(BENCH)


def test_nvidia_smi_lines_parse_with_and_without_units():
    bench = load_bench()
    assert bench.parse_nvidia_smi("utilization.gpu [%], memory.used [MiB]") is None  # the header
    assert bench.parse_nvidia_smi("87 %, 40321 MiB\n") == (87.0, 40321.0)
    assert bench.parse_nvidia_smi("3, 512") == (3.0, 512.0)  # --format=csv,noheader,nounits
    assert bench.parse_nvidia_smi("[N/A], 512 MiB") is None
    assert bench.parse_nvidia_smi("") is None


def test_gpu_summary_is_n_a_without_nvidia_smi_or_samples():
    bench = load_bench()
    assert bench.gpu_summary([(50.0, 100.0)], available=False)["gpu_util_mean"] == "n/a"
    assert bench.gpu_summary([])["gpu_mem_max_mib"] == "n/a"
    assert bench.gpu_summary([(20.0, 100.0), (60.0, 300.0)]) == {"gpu_util_mean": 40.0, "gpu_util_max": 60.0, "gpu_mem_max_mib": 300.0, "gpu_samples": 2}


def split(wall: float, **extra: float) -> dict:
    parts = {"build": wall * 0.5, "train": wall * 0.3, "validation": wall * 0.1, "checkpoint": wall * 0.05, "storage": wall * 0.03, "other": wall * 0.02}
    return {"wall": wall, **parts, **extra}


def test_a_row_counts_finished_trials_a_minute_and_means_their_split():
    bench = load_bench()
    trials = [{"state": "COMPLETE", "status": "complete", "fail_reason": None, "time_split": split(10.0, startup=4.0)},
              {"state": "COMPLETE", "status": "complete", "fail_reason": None, "time_split": split(20.0)},
              {"state": "FAIL", "status": "failed", "fail_reason": "out of memory", "time_split": split(1.0, startup=6.0)},
              {"state": "FAIL", "status": "interrupted", "fail_reason": None, "time_split": split(2.0)}]
    row = bench.cell_row(2, trials, wall_s=70.0, busy_s=60.0, gpu=bench.gpu_summary([], available=False))
    assert row["trials"] == 2 and row["trials_per_minute"] == 2.0 and row["tail_s"] == 10.0
    assert row["out_of_memory"] == 1 and row["failed"] == 1, "an interrupted trial is not a failure"
    assert row["startup_s"] == 5.0, "the mean over the workers' first trials, failed ones too"
    assert row["trial_s"] == 15.0 and row["build_s"] == 7.5 and row["other_s"] == 0.3
    table = bench.markdown([row, bench.cell_row(1, [], 5.0, 5.0, bench.gpu_summary([], available=False))])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 2 | 2 | 2.0 | 70.0 | 10.0 | 5.0 | 15.0 | 7.5 |" in table and "n/a" in table
    assert "| 1 | 0 | 0.0 |" in table and " - |" in table, "a cell with no finished trial shows '-'"


def test_missing_packages_names_what_a_bare_machine_lacks(monkeypatch):
    bench = load_bench()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name in ("optuna", "jax", "psycopg2") else real(name))
    assert bench.missing_packages("jax", "postgresql://postgres@127.0.0.1/x") == ["optuna", "jax", "psycopg2"]
    assert bench.missing_packages("tensorflow", None) == ["optuna"]


@pytest.mark.slow
def test_the_smoke_run_writes_a_row_for_each_worker_count(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out)}  # the default --out, as on the GPU machine
    done = run_bounded([sys.executable, str(BENCH), "--smoke"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_fleet.json").read_text())
    assert [r["workers"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["trials"] == 2 * row["workers"] and row["failed"] == 0 and row["out_of_memory"] == 0
        assert row["trials_per_minute"] > 0 and row["startup_s"] > 0
        assert len(row["trial_splits"]) == row["trials"]
        for s in row["trial_splits"]:
            parts = [s[k] for k in ("build", "train", "validation", "checkpoint", "storage", "other")]
            assert all(p >= 0 for p in parts) and s["build"] > 0 and s["train"] > 0 and s["validation"] > 0 and s["checkpoint"] > 0
            assert sum(parts) == pytest.approx(s["wall"], abs=0.01), "the parts sum to the trial's wall time"
            assert s["other"] < 0.2 * s["wall"] + 0.5, f"the named phases miss much of the trial: {s}"
        assert sum("startup" in s for s in row["trial_splits"]) == row["workers"], "one start-up a worker"
        if row["gpu_samples"] == 0:
            assert row["gpu_util_mean"] == "n/a"
    rows = [line for line in (out / "gpu_fleet.md").read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"], rows
