"""Real worker processes on a real PostgreSQL study: budget, pruning, SIGKILL, SIGTERM, restarts,
and a chaos run (random kills and a restart of a private PostgreSQL server)."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.cli.main import main
from kilotune.search.budget import counts_toward_budget
from kilotune.training.checkpoint import Checkpoint
from tests.conftest import cpu_progress, kilotune, shared_storage, study_progress, wait_for, wait_for_exit

pytestmark = pytest.mark.slow
TINY_SPACE = {"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none", "optimizer": "sgd",
              "sgd_learning_rate": {"low": 1e-4, "high": 0.5}, "cutout": 0}


STALL_S = 300  # the longest a wait goes on with no progress in the study; under load it goes on longer


@pytest.fixture
def make_study(pg_url, fashion_subset, tmp_path):
    def make(name: str, *, epochs: int, n_trials: int, pruner: str = "median", space: dict = TINY_SPACE, url: str = pg_url) -> str:
        path = tmp_path / f"{name}-space.json"
        path.write_text(json.dumps(space))
        code = main(["study", "create", "--study", name, "--storage", url, "--dataset", "fashion-mnist",
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
    return optuna.load_study(study_name=study, storage=shared_storage(pg_url)).get_trials()


def finish(procs: list[subprocess.Popen], study: str, pg_url: str) -> list[str]:
    """Waits for the workers to exit while the study makes progress; they must exit 0."""
    outs = wait_for_exit(procs, STALL_S, f"the workers of {study!r} to exit", study_progress(pg_url, study))
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return outs


def wait_for_study(study: str, pg_url: str, predicate, what: str):
    """``wait_for`` on the study's trials, bounded by the study's progress."""
    return wait_for(lambda: predicate(trials(study, pg_url)), STALL_S, what, progress=study_progress(pg_url, study))


def test_three_workers_share_one_study_within_its_global_budget(make_study, pg_url, worker_env):
    # 12 trials: the median pruner waits for 5 complete ones, so ~7 can be pruned.
    study = make_study("shared", epochs=5, n_trials=12)
    outs = finish([start_worker(study, pg_url, worker_env, "--worker-id", f"w{i}") for i in range(3)], study, pg_url)
    done = trials(study, pg_url)
    assert len(done) == 12, "the budget is for the study, not per worker"
    assert sorted(t.number for t in done) == list(range(12))
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.state == TrialState.PRUNED for t in done), "the pruner stopped no trial"
    assert len({t.user_attrs["worker_id"] for t in done}) >= 2, outs
    for t in done:
        assert t.user_attrs["config"]["arch"] == "vgg8" and t.user_attrs["images_per_second"] > 0
        assert len(t.user_attrs["epoch_seconds"]) == len(t.intermediate_values) >= 1
        if t.state == TrialState.COMPLETE:  # 5 epochs: the last tenth is the last epoch (objective_epochs)
            assert t.value == pytest.approx(t.intermediate_values[5])


def test_sigkilled_worker_trial_is_retried_and_resumes_from_its_checkpoint(make_study, pg_url, worker_env):
    # An epoch of this tiny model takes about 0.2 s: 8 epochs were over before a 0.5 s poll saw the
    # second. With 20 and a 0.05 s poll the kill lands seconds before the last.
    epochs = 20
    study = make_study("killed", epochs=epochs, n_trials=2, pruner="none")
    victim = start_worker(study, pg_url, worker_env)
    # Killed once its checkpoint holds two epochs: its last reports may still wait in its recorder.
    state = Path(worker_env["KILOTUNE_CHECKPOINT_DIR"]) / study / "0" / "state.json"
    wait_for(lambda: state.is_file() and json.loads(state.read_text())["epoch"] >= 2, STALL_S, "two epochs checkpointed", poll_s=0.05,
             progress=lambda: (state.is_file() and state.stat().st_mtime, study_progress(pg_url, study)()))
    victim.send_signal(signal.SIGKILL)
    killed_at = json.loads(state.read_text())["epoch"]
    victim.communicate()
    time.sleep(7)  # past the grace period: the trial's heartbeat is stale
    finish([start_worker(study, pg_url, worker_env)], study, pg_url)
    done = trials(study, pg_url)
    assert done[0].state == TrialState.FAIL, f"killed at epoch {killed_at} of {epochs}"
    retried = [t for t in done if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    # What a failure needs to be read (CI once saw epochs 1-5 of 20 stored for a COMPLETE retry).
    seen = (f"killed at epoch {killed_at}; the retry: {retried[0].user_attrs.get('status')}, resumed from epoch "
            f"{retried[0].user_attrs.get('resumed_from_epoch')}, {retried[0].system_attrs.get('inherited_epochs')} inherited")
    assert retried[0].user_attrs["resumed_from_epoch"] >= 2, seen
    assert sorted(retried[0].intermediate_values) == list(range(1, epochs + 1)), f"inherited epochs plus the resumed ones; {seen}"
    assert retried[0].params == done[0].params
    assert sum(t.state == TrialState.COMPLETE for t in done) == 2


def test_sigterm_stops_the_worker_quickly_and_its_trials_are_retried(make_study, pg_url, worker_env):
    # Long enough that it cannot finish before the signal, even on a loaded machine. A budget of
    # 3 lets the worker take trial 1 ahead while trial 0 trains: both must come back.
    study = make_study("termed", epochs=300, n_trials=3, pruner="none")
    worker = start_worker(study, pg_url, worker_env)
    wait_for_study(study, pg_url, lambda done: any(len(t.intermediate_values) >= 1 for t in done), "an epoch")
    # The checkpoint counts epochs as they are trained (the storage gets reports up to a linger late).
    checkpoint = Checkpoint(Path(worker_env["KILOTUNE_CHECKPOINT_DIR"]) / study / "0")
    wait_for(checkpoint.exists, STALL_S, "trial 0's first checkpoint", progress=cpu_progress([worker]))
    at_signal = len(checkpoint.history())
    worker.send_signal(signal.SIGTERM)
    cpu = cpu_progress([worker])

    def no_epoch_after_the_current() -> object:  # "quickly": by epochs trained, not by the clock
        trained = len(checkpoint.history())
        assert trained <= at_signal + 1, f"{trained - at_signal} epochs trained after SIGTERM"
        return cpu()

    out = wait_for_exit([worker], STALL_S, "the worker to stop on SIGTERM", progress=no_epoch_after_the_current)[0]
    assert worker.returncode == 0, out[-2000:]
    assert len(trials(study, pg_url)[0].intermediate_values) <= at_signal + 1, "no epoch after the current one"
    done = trials(study, pg_url)
    summary = [(t.number, t.state.name, t.user_attrs.get("status")) for t in done]
    assert summary[:2] == [(0, "FAIL", "interrupted"), (1, "FAIL", "returned")], (out[-3000:], summary)
    assert [t.state for t in done[2:]] == [TrialState.WAITING] * 2, ("never silently COMPLETE", summary)
    for failed, retry in zip(done[:2], done[2:]):
        assert retry.params == failed.params and retry.intermediate_values == failed.intermediate_values
    assert len(done[0].intermediate_values) >= 1 and done[1].intermediate_values == {}, "trial 1 was never trained"


def test_workers_carry_on_through_a_postgresql_restart(make_study, private_pg, worker_env):
    # The test run's own server (tests/conftest.py): restarting the host's would break its other users.
    url = private_pg.databases.make()
    study = make_study("restart", epochs=6, n_trials=4, pruner="none", url=url)
    workers = [start_worker(study, url, worker_env) for _ in range(2)]
    wait_for_study(study, url, lambda done: any(len(t.intermediate_values) >= 1 for t in done), "an epoch")
    private_pg.restart()
    outs = finish(workers, study, url)
    done = trials(study, url)
    assert sum(t.state == TrialState.COMPLETE for t in done) == 4, outs
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in done)


def test_worker_refuses_a_study_on_other_data(make_study, pg_url, worker_env, tmp_path):
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import build_subset

    study = make_study("otherdata", epochs=2, n_trials=1)
    other = build_subset(load_dataset("fashion-mnist"), "random", tmp_path / "other.json", per_class=10, seed=99)
    worker = start_worker(study, pg_url, worker_env, "--subset", str(other))
    out = wait_for_exit([worker], 60, "the worker to refuse the study")[0]
    assert worker.returncode == 2
    assert "kilotune worker: error: study 'otherdata' trains on subset" in out and "Traceback" not in out
    assert trials(study, pg_url) == []


def test_worker_on_an_unknown_study_is_a_clear_error(pg_url, worker_env):
    worker = start_worker("no-such-study", pg_url, worker_env)
    out = wait_for_exit([worker], 60, "the worker to refuse an unknown study")[0]
    assert worker.returncode == 2 and "unknown study 'no-such-study'" in out and "Traceback" not in out


def test_chaos_random_kills_and_a_database_restart_lose_no_trial(make_study, private_pg, fashion_subset, tmp_path):
    """Issue 17 at a small scale: three real workers on the private PostgreSQL, SIGKILLs at random
    moments (mid-epoch, untrained, and one after the budget is all taken, whose worker is not
    replaced) and one database restart. Every kill and the restart wait for progress, not the clock."""
    rng = random.Random(17)
    url = private_pg.databases.make()
    n_trials, epochs = 12, 4
    study = make_study("chaos", epochs=epochs, n_trials=n_trials, pruner="none", url=url)
    # Short heartbeats and grace, and reports stored within 0.3 s, so a kill can pick a worker mid-training.
    env = {"KILOTUNE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "KILOTUNE_HEARTBEAT_SECONDS": "1", "KILOTUNE_GRACE_SECONDS": "8",
           "KILOTUNE_RECORDER_LINGER_SECONDS": "0.3"}
    logs = tmp_path / "logs"
    logs.mkdir()

    def start() -> subprocess.Popen:
        with open(logs / f"worker-{len(workers)}.log", "w") as log:
            return kilotune("worker", "--study", study, "--storage", url, env=env, stdout=log, stderr=subprocess.STDOUT)

    workers: list[subprocess.Popen] = []
    for _ in range(3):
        workers.append(start())
    host = socket.gethostname()
    # Each kill waits for its moment: the number of finished trials, then a victim training an epoch
    # (else any live worker: it may be loading, asking or between trials). "all taken": no new trial is left.
    plan = [(2, "training"), (4, "any"), (6, "training"), (8, "any"), ("all taken", "training")]
    killed, restarted = [], False

    def step() -> bool:
        nonlocal restarted
        done = trials(study, url)
        finished = sum(t.state.is_finished() and counts_toward_budget(t) for t in done)
        if not restarted and finished >= 5:
            private_pg.restart()
            restarted = True
        if plan:
            when, kind = plan[0]
            due = len([t for t in done if counts_toward_budget(t)]) >= n_trials if when == "all taken" else finished >= when
            live = {f"{host}:{w.pid}": w for w in workers if w.poll() is None}
            busy = [live[t.user_attrs["worker"]] for t in done if t.state == TrialState.RUNNING and t.user_attrs.get("worker") in live
                    and len(t.intermediate_values) > t.system_attrs.get("inherited_epochs", 0)]
            victims = busy if kind == "training" else list(live.values())
            if due and victims:
                victim = rng.choice(victims)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed.append(victim.pid)
                plan.pop(0)
                if plan:  # compose restarts a dead worker; the last one is not, so the survivors must retry its trials
                    workers.append(start())
        return not plan and all(w.poll() is not None for w in workers)

    wait_for(step, STALL_S, "the chaos run to end", poll_s=0.3, progress=study_progress(url, study))
    outputs = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("*.log")))
    assert restarted and len(killed) == 5
    assert all(w.returncode == 0 for w in workers if w.pid not in killed), outputs
    assert "Traceback" not in outputs, outputs

    done = trials(study, url)
    summary = [(t.number, t.state.name, t.user_attrs.get("status"), t.system_attrs.get("retry_history")) for t in done]
    assert not [t for t in done if t.state in (TrialState.RUNNING, TrialState.WAITING)], ("none left running or queued", summary)
    budgeted = [t for t in done if counts_toward_budget(t)]
    assert len(budgeted) == n_trials and all(t.state == TrialState.COMPLETE for t in budgeted), ("every budgeted trial finished", summary)
    # One configuration, one result: each chain of retries (named by its first attempt) completed once.
    chains = [t.system_attrs.get("failed_trial", t.number) for t in budgeted]
    assert len(set(chains)) == n_trials, ("none trained twice", summary)
    for t in budgeted:
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1)), (t.number, t.intermediate_values)
    # The killed attempts that had trained (and so checkpointed) epochs were resumed from their checkpoint.
    resumed = [t for t in budgeted if t.system_attrs.get("inherited_epochs", 0) >= 1]
    assert resumed, ("no killed trial had trained an epoch", summary)
    for t in resumed:
        assert t.user_attrs.get("resumed_from_epoch", 0) >= t.system_attrs["inherited_epochs"], (t.number, t.user_attrs, summary)
    assert sum(t.state == TrialState.FAIL for t in done) >= 3, "the kills failed and retried trials"
