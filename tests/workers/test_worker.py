"""Real worker processes on a real PostgreSQL study: budget, pruning, SIGKILL, SIGTERM, restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.search.cli import main
from tests.conftest import kilotune, wait_for

pytestmark = pytest.mark.slow
TINY_SPACE = {"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none", "optimizer": "sgd",
              "sgd_learning_rate": {"low": 1e-4, "high": 0.5}, "cutout": 0}


@pytest.fixture
def make_study(pg_url, fashion_subset, tmp_path):
    def make(name: str, *, epochs: int, n_trials: int, pruner: str = "median", space: dict = TINY_SPACE) -> str:
        path = tmp_path / f"{name}-space.json"
        path.write_text(json.dumps(space))
        code = main(["study", "create", "--study", name, "--storage", pg_url, "--dataset", "fashion-mnist",
                     "--subset", str(fashion_subset), "--epochs", str(epochs), "--n-trials", str(n_trials),
                     "--space", str(path), "--pruner", pruner, "--seed", "0",
                     "--no-warm-start", "--cv-top-k", "0"])  # these tests count trials; both are tested elsewhere
        assert code == 0
        return name
    return make


@pytest.fixture
def worker_env(tmp_path):
    return {"KILOTUNE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "KILOTUNE_HEARTBEAT_SECONDS": "1", "KILOTUNE_GRACE_SECONDS": "6"}


def start_worker(study: str, pg_url: str, env: dict, *extra: str) -> subprocess.Popen:
    return kilotune("worker", "--study", study, "--storage", pg_url, *extra, env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trials(study: str, pg_url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=pg_url).get_trials()


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs


def test_three_workers_share_one_study_within_its_global_budget(make_study, pg_url, worker_env):
    # 12 trials: the median pruner waits for 5 complete ones, so ~7 can be pruned.
    study = make_study("shared", epochs=5, n_trials=12)
    outs = finish([start_worker(study, pg_url, worker_env, "--worker-id", f"w{i}") for i in range(3)])
    done = trials(study, pg_url)
    assert len(done) == 12, "the budget is for the study, not per worker"
    assert sorted(t.number for t in done) == list(range(12))
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.state == TrialState.PRUNED for t in done), "the pruner stopped no trial"
    assert len({t.user_attrs["worker_id"] for t in done}) >= 2, outs
    for t in done:
        assert t.user_attrs["config"]["arch"] == "vgg8" and t.user_attrs["images_per_second"] > 0
        assert len(t.user_attrs["epoch_seconds"]) == len(t.intermediate_values) >= 1
        if t.state == TrialState.COMPLETE:  # the mean of the last 3 epochs (objective_epochs)
            assert t.value == pytest.approx(sum(t.intermediate_values[e] for e in (3, 4, 5)) / 3)


def test_sigkilled_worker_trial_is_retried_and_resumes_from_its_checkpoint(make_study, pg_url, worker_env):
    study = make_study("killed", epochs=8, n_trials=2, pruner="none")
    victim = start_worker(study, pg_url, worker_env)
    # Killed once its checkpoint holds two epochs: its last reports may still wait in its recorder.
    state = Path(worker_env["KILOTUNE_CHECKPOINT_DIR"]) / study / "0" / "state.json"
    wait_for(lambda: state.is_file() and json.loads(state.read_text())["epoch"] >= 2, 180, "two epochs checkpointed")
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    time.sleep(7)  # past the grace period: the trial's heartbeat is stale
    finish([start_worker(study, pg_url, worker_env)])
    done = trials(study, pg_url)
    assert done[0].state == TrialState.FAIL
    retried = [t for t in done if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].user_attrs["resumed_from_epoch"] >= 2
    assert sorted(retried[0].intermediate_values) == list(range(1, 9)), "inherited epochs plus the resumed ones"
    assert retried[0].params == done[0].params
    assert sum(t.state == TrialState.COMPLETE for t in done) == 2


def test_sigterm_stops_the_worker_quickly_and_its_trials_are_retried(make_study, pg_url, worker_env):
    # Long enough that it cannot finish before the signal, even on a loaded machine. A budget of
    # 3 lets the worker take trial 1 ahead while trial 0 trains: both must come back.
    study = make_study("termed", epochs=300, n_trials=3, pruner="none")
    worker = start_worker(study, pg_url, worker_env)
    wait_for(lambda: any(len(t.intermediate_values) >= 1 for t in trials(study, pg_url)), 180, "an epoch")
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0 and time.monotonic() - sent < 30, out[-2000:]
    done = trials(study, pg_url)
    summary = [(t.number, t.state.name, t.user_attrs.get("status")) for t in done]
    assert summary[:2] == [(0, "FAIL", "interrupted"), (1, "FAIL", "returned")], (out[-3000:], summary)
    assert [t.state for t in done[2:]] == [TrialState.WAITING] * 2, ("never silently COMPLETE", summary)
    for failed, retry in zip(done[:2], done[2:]):
        assert retry.params == failed.params and retry.intermediate_values == failed.intermediate_values
    assert len(done[0].intermediate_values) >= 1 and done[1].intermediate_values == {}, "trial 1 was never trained"


def test_workers_carry_on_through_a_postgresql_restart(make_study, pg_url, worker_env):
    cluster = shutil.which("pg_ctlcluster") and subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.split()
    if not cluster or os.geteuid() != 0:
        pytest.skip("needs root and pg_ctlcluster to restart PostgreSQL")
    study = make_study("restart", epochs=6, n_trials=4, pruner="none")
    workers = [start_worker(study, pg_url, worker_env) for _ in range(2)]
    wait_for(lambda: any(len(t.intermediate_values) >= 1 for t in trials(study, pg_url)), 180, "an epoch")
    subprocess.run(["pg_ctlcluster", cluster[0], cluster[1], "restart"], check=True, timeout=120)
    outs = finish(workers)
    done = trials(study, pg_url)
    assert sum(t.state == TrialState.COMPLETE for t in done) == 4, outs
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in done)


def test_worker_refuses_a_study_on_other_data(make_study, pg_url, worker_env, tmp_path):
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import build_subset

    study = make_study("otherdata", epochs=2, n_trials=1)
    other = build_subset(load_dataset("fashion-mnist"), "random", tmp_path / "other.json", per_class=10, seed=99)
    worker = start_worker(study, pg_url, worker_env, "--subset", str(other))
    out = worker.communicate(timeout=120)[0]
    assert worker.returncode == 2
    assert "kilotune worker: error: study 'otherdata' trains on subset" in out and "Traceback" not in out
    assert trials(study, pg_url) == []


def test_worker_on_an_unknown_study_is_a_clear_error(pg_url, worker_env):
    worker = start_worker("no-such-study", pg_url, worker_env)
    out = worker.communicate(timeout=120)[0]
    assert worker.returncode == 2 and "unknown study 'no-such-study'" in out and "Traceback" not in out
