"""Workers on more than one host (issue 28): the study carries its subset, so a worker whose host
lacks the creator's file finds it, and a killed trial resumes on another host from the shared
checkpoint directory. "Hosts" here are processes with their own home, cache, data directory and
working directory, sharing only the PostgreSQL URL and the checkpoint directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.budget import counts_toward_budget
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study
from kilotune.subset.datasets import load_dataset
from kilotune.subset.datasets.fashion_mnist import FILES
from kilotune.subset.datasets.fetch import keras_datasets_dir, system_datasets_dir
from kilotune.subset.subsetfile import cached_subset_path, load_subset
from tests.conftest import kilotune, run_bounded, wait_for, wait_for_exit
from tests.search.test_settings import settings
from tests.workers.test_worker import STALL_S, TINY_SPACE, finish, study_progress, trials


def test_a_worker_without_the_creators_file_takes_the_copy_the_study_carries(pg_url, fashion_subset, tmp_path, monkeypatch):
    from kilotune.workers.worker import Worker

    monkeypatch.setenv("KILOTUNE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    creator = tmp_path / "creator" / "subset.json"
    creator.parent.mkdir()
    shutil.copy(fashion_subset, creator)
    assert main(["study", "create", "--study", "elsewhere", "--storage", pg_url, "--dataset", "fashion-mnist", "--subset", str(creator),
                 "--epochs", "2", "--n-trials", "1", "--no-warm-start", "--cv-top-k", "0"]) == 0  # fmt: skip
    creator.unlink()
    worker = Worker("elsewhere", pg_url)
    subset, dataset = load_subset(fashion_subset), load_dataset("fashion-mnist")
    cached = cached_subset_path(dataset, subset.checksum)
    assert cached.is_file() and load_subset(cached).to_dict() == subset.to_dict()
    assert (len(worker.data.x_train), len(worker.data.x_val)) == (80, 20), "the study's 100 images, 20% held out"

    # A study from before studies carried their subset, its file gone: one line naming where it looked.
    recorded = settings(dataset_checksum=dataset.checksum, subset_path=str(creator), subset_checksum=subset.checksum)
    create_study("old-elsewhere", recorded, open_storage(pg_url))
    cached.unlink()
    with pytest.raises(ValueError, match=r"is not on this host \(subset file not found: .*creator/subset\.json; .*pass --subset"):
        Worker("old-elsewhere", pg_url)


def fashion_mnist_files() -> Path:
    """The directory this machine holds Fashion-MNIST's four files in (the ``fashion_mnist`` fixture found or fetched them)."""
    looked = [Path(os.environ["KILOTUNE_DATA_DIR"]) / "fashion-mnist", system_datasets_dir() / "fashion-mnist", keras_datasets_dir() / "fashion-mnist"]
    return next(d for d in looked if all((d / f).is_file() for f in FILES))


def host(root: Path, data: Path, shared: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A "host": its working directory and environment, its own home, cache and data directory
    (links to the data, as a host with its own copy), nothing of the creator's."""
    for name in ("work", "home", "cache", "empty", "data/fashion-mnist"):
        (root / name).mkdir(parents=True)
    for file in FILES:
        (root / "data" / "fashion-mnist" / file).symlink_to(data / file)
    env = {**shared, "HOME": str(root / "home"), "KILOTUNE_CACHE_DIR": str(root / "cache"), "KILOTUNE_DATA_DIR": str(root / "data"),
           "KILOTUNE_SYSTEM_DATASETS_DIR": str(root / "empty")}  # fmt: skip
    return root / "work", env


@pytest.mark.slow
@pytest.mark.parametrize("shared_checkpoints", [True, False], ids=["shared-checkpoints", "own-checkpoints"])
def test_a_trial_killed_on_one_host_resumes_on_another_from_the_shared_checkpoints(shared_checkpoints, pg_url, fashion_mnist, fashion_subset, tmp_path):
    """Issue 28 end to end: the study is created in a directory whose subset file is then moved
    away; worker A (host A) is SIGKILLed once its trial has checkpointed an epoch; worker B (host
    B, started after) fails it by its stale heartbeat and resumes its retry from the checkpoint.
    Where B has a checkpoint directory of its own (no shared volume: docs/deployment.md), the retry
    trains from epoch 1 instead, and keeps A's reports for the epochs A had stored."""
    data, epochs, study = fashion_mnist_files(), 6, f"two-hosts-{shared_checkpoints}"  # one database for the session
    shared = {"KILOTUNE_STORAGE": pg_url, "KILOTUNE_CHECKPOINT_DIR": str(tmp_path / "shared-checkpoints"),
              "KILOTUNE_HEARTBEAT_SECONDS": "1", "KILOTUNE_GRACE_SECONDS": "6", "KILOTUNE_RECORDER_LINGER_SECONDS": "0.3"}  # fmt: skip
    creator = tmp_path / "creator"
    creator.mkdir()
    shutil.copy(fashion_subset, creator / "subset.json")
    (creator / "space.json").write_text(json.dumps(TINY_SPACE))
    made = run_bounded([sys.executable, "-m", "kilotune", "study", "create", "--study", study, "--dataset", "fashion-mnist",
                        "--subset", "subset.json", "--space", "space.json", "--epochs", str(epochs), "--n-trials", "2",
                        "--pruner", "none", "--seed", "0", "--no-warm-start", "--cv-top-k", "0"],
                       cwd=creator, env={**os.environ, **shared})  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    (creator / "subset.json").rename(tmp_path / "moved-away.json")  # no host can read the recorded path

    work_a, env_a = host(tmp_path / "host-a", data, shared)
    work_b, env_b = host(tmp_path / "host-b", data, shared)
    if not shared_checkpoints:
        env_b["KILOTUNE_CHECKPOINT_DIR"] = str(tmp_path / "host-b" / "checkpoints")
    a = kilotune("worker", "--study", study, "--worker-id", "a", env=env_a, cwd=work_a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "shared-checkpoints" / study / "0" / "state.json"

    def checkpointed() -> bool:
        assert a.poll() is None, f"worker A exited: {a.communicate()[0][-3000:]}"  # not a stall to wait out
        # And stored it: the retry inherits the reports the study has (the recorder lingers 0.3 s).
        return state.is_file() and json.loads(state.read_text())["epoch"] >= 1 and trials(study, pg_url)[0].intermediate_values

    wait_for(checkpointed, STALL_S, "host A to checkpoint and report an epoch of trial 0", poll_s=0.1, progress=study_progress(pg_url, study))
    a.send_signal(signal.SIGKILL)
    out_a = wait_for_exit([a], 60, "worker A to die")[0]
    assert a.returncode == -signal.SIGKILL, out_a[-2000:]
    killed_at = json.loads(state.read_text())["epoch"]
    assert 1 <= killed_at < epochs, "killed mid-trial"
    assert trials(study, pg_url)[0].intermediate_values, "host A's reports stored"

    b = kilotune("worker", "--study", study, "--worker-id", "b", env=env_b, cwd=work_b, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_b = finish([b], study, pg_url)[0]
    assert "Traceback" not in out_b, out_b[-3000:]

    done = trials(study, pg_url)
    summary = [(t.number, t.state.name, t.user_attrs.get("status"), t.user_attrs.get("worker_id"), t.user_attrs.get("retry_of"),
                t.user_attrs.get("epoch_seconds")) for t in done]  # fmt: skip
    assert done[0].state == TrialState.FAIL and done[0].user_attrs["worker_id"] == "a", summary
    retry = [t for t in done if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, summary
    assert retry[0].user_attrs["worker"] == f"{socket.gethostname()}:{b.pid}", "host B trained it"
    if shared_checkpoints:
        assert retry[0].user_attrs.get("resumed_from_epoch", 0) >= killed_at, ("resumed from host A's checkpoint", retry[0].user_attrs)
        assert len(retry[0].user_attrs["epoch_seconds"]) == epochs - retry[0].user_attrs["resumed_from_epoch"], "only the epochs left trained"
    else:
        assert "resumed_from_epoch" not in retry[0].user_attrs and len(retry[0].user_attrs["epoch_seconds"]) == epochs, "all trained again"
        # Optuna ignores a report for an epoch the trial has: the inherited ones stay host A's.
        assert {e: retry[0].intermediate_values[e] for e in done[0].intermediate_values} == done[0].intermediate_values
    assert sorted(retry[0].intermediate_values) == list(range(1, epochs + 1))
    budgeted = [t for t in done if counts_toward_budget(t)]
    assert len(budgeted) == 2 and all(t.state == TrialState.COMPLETE for t in budgeted), ("every trial accounted for", summary)
    assert not [t for t in done if t.state in (TrialState.RUNNING, TrialState.WAITING)], summary
    # Each host took the subset from the study's stored copy into its own cache; the creator's path was gone.
    for env in (env_a, env_b):
        cached = Path(env["KILOTUNE_CACHE_DIR"]) / "subsets"
        assert [load_subset(p).checksum for p in cached.iterdir()] == [load_subset(fashion_subset).checksum]
    assert not (creator / "subset.json").exists() and not list(work_a.iterdir()) and not list(work_b.iterdir())
