"""The checkout stays clean: what kilotune writes where a user runs it is ignored by git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_what_the_main_job_and_the_readme_example_write_is_ignored_by_git():
    """Issue 20: the main job's files (and the notebook example's) showed up in `git status`."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    written = ["kilotune.db", "kilotune.db-wal", "kilotune-checkpoints/kilotune/3/epoch.keras", "best.json", "report.html",
               "retrain-kilotune-8/results.json", "notebook.db", "notebook-report.html", "retrain-notebook/model-seed0.keras"]  # fmt: skip
    result = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(written), f"not ignored: {sorted(set(written) - set(result.stdout.split()))}"
