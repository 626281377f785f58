"""``kilotune run``: seeded workers' own streams, the live display and its plain lines, quiet
workers, the password kept out of output and command lines, and the best configuration."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from kilotune.cli.main import main
from kilotune.search.export import export_trial
from kilotune.search.settings import StudySettings
from kilotune.search.storage import open_storage
from kilotune.search.study import load_study
from kilotune.search.winner import StudyTrials
from kilotune.training.config import TrainConfig
from kilotune.workers.display import Display, Snapshot, print_best
from kilotune.workers.launch import QUIET
from tests.conftest import REPO, printed_best_config, run_bounded, tree_cpu_progress, wait_for, wait_for_exit

EPOCHS = 10
SETTINGS = StudySettings(dataset="fashion-mnist", dataset_checksum="sha256:aa", subset_path="/s.json", subset_checksum="sha256:bb",
                         epochs=EPOCHS, n_trials=6, cv_top_k=1, created_at=dt.datetime.now(dt.timezone.utc).isoformat())  # fmt: skip
assert (SETTINGS.search_trials, SETTINGS.cv_top_k, SETTINGS.cv_folds) == (4, 1, 3), "6 trials: the top 1 on 2 more folds"


def trial(number: int, state: TrialState, status: str | None, epochs: int, value: float | None = None, worker: str = "local-0",
          arch: str = "vgg8") -> FrozenTrial:
    """A trial as a kilotune worker leaves it (status, config, worker, one report per epoch)."""
    start = dt.datetime(2025, 1, 1, 10) + dt.timedelta(minutes=number)
    attrs = {"config": TrainConfig(arch=arch, epochs=EPOCHS).to_dict(), "worker_id": worker, "worker": f"host:{worker}"}
    if status is not None:
        attrs["status"] = status
    if status == "returned":  # taken ahead, handed back untrained: no config, no reports
        attrs = {"status": "returned"}
    return FrozenTrial(number=number, trial_id=number, state=state, value=value, datetime_start=start,
                       datetime_complete=None if state == TrialState.RUNNING else start + dt.timedelta(seconds=30),
                       params={"x": 0.1 * number}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs,
                       system_attrs={}, intermediate_values={e: 0.05 * e for e in range(1, epochs + 1)})  # fmt: skip


def study_of(tmp_path: Path, trials: list[FrozenTrial]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=storage_of(tmp_path), direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study


def storage_of(tmp_path: Path) -> optuna.storages.BaseStorage:
    return open_storage(f"sqlite:///{tmp_path / 's.db'}")


def plain(display_updates) -> list[str]:
    """The lines a non-terminal display prints for a sequence of snapshots."""
    out = io.StringIO()
    display = Display(Console(file=out, force_terminal=False, width=400))
    with display:
        for snapshot in display_updates:
            display.update(snapshot)
    return out.getvalue().splitlines()


def test_seeded_workers_sample_their_own_reproducible_streams(tmp_path, fashion_subset):
    """Issue 19.1: with --seed 0, trial 0 had trial 2's parameters and trial 1 trial 3's."""
    from kilotune.workers.worker import Worker

    def first_configs(db: str, worker_ids: list[str]) -> list[dict]:
        url = f"sqlite:///{tmp_path / db}"
        assert main(["study", "create", "--study", "seeded", "--storage", url, "--dataset", "fashion-mnist", "--subset",
                     str(fashion_subset), "--space", "small", "--epochs", "2", "--n-trials", "8", "--seed", "0", "--no-warm-start"]) == 0
        configs = []
        for worker_id in worker_ids:  # as `kilotune run` names its workers
            worker = Worker("seeded", url, worker_id=worker_id)
            taken = worker.source.take(time.time())
            taken.heartbeat.stop()
            configs.append(taken.trial.params)
        return configs

    a0, a1 = first_configs("a.db", ["local-0", "local-1"])
    assert a0 != a1, "two workers of one seeded study sampled the same trial"
    (b1,) = first_configs("b.db", ["local-1"])
    assert b1 == a1, "a worker's stream is reproducible from the study's seed and its id"


def test_a_resumed_seeded_worker_does_not_repeat_its_start_up_trials(tmp_path, fashion_subset):
    """A worker that joins a seeded study again (a resumed run) must not re-draw what it sampled before."""
    from kilotune.workers.worker import Worker

    url = f"sqlite:///{tmp_path / 'resumed.db'}"
    assert main(["study", "create", "--study", "resumed", "--storage", url, "--dataset", "fashion-mnist", "--subset",
                 str(fashion_subset), "--space", "small", "--epochs", "2", "--n-trials", "8", "--seed", "0", "--no-warm-start"]) == 0

    def take_and_finish() -> dict:
        worker = Worker("resumed", url, worker_id="local-0")
        taken = worker.source.take(time.time())
        taken.heartbeat.stop()
        worker.study.tell(taken.trial, 0.5)
        return taken.trial.params

    first, resumed = take_and_finish(), take_and_finish()
    assert first != resumed, "the resumed worker sampled its first trial again"


def test_an_unseeded_stream_keeps_the_studys_seed():
    settings = StudySettings(**{**SETTINGS.__dict__, "seed": 3})
    space = optuna.distributions.FloatDistribution(0, 1)

    def draw(sampler) -> float:
        study = optuna.create_study(sampler=sampler)
        return study.ask({"x": space}).params["x"]

    assert draw(settings.worker_sampler("")) == draw(settings.sampler_for()) == draw(settings.worker_sampler(""))
    assert draw(settings.worker_sampler("local-0")) == draw(settings.worker_sampler("local-0"))
    assert draw(settings.worker_sampler("local-0")) != draw(settings.worker_sampler("local-1"))


def test_plain_output_is_one_line_per_event_with_the_budget_and_handed_back_trials(tmp_path):
    """Issue 19.3 and 19.6: not three near-identical lines per event, and a handed-back trial is
    not a failure."""
    study = study_of(tmp_path, [trial(0, TrialState.RUNNING, "running", 3), trial(1, TrialState.RUNNING, None, 0, worker="local-1")])
    first = Snapshot.read(study, storage_of(tmp_path), SETTINGS, 60.0)
    same = Snapshot.read(study, storage_of(tmp_path), SETTINGS, 65.0)
    later = Snapshot(StudyTrials([
        trial(0, TrialState.COMPLETE, "complete", EPOCHS, value=0.5), trial(1, TrialState.FAIL, "returned", 0, worker="local-1"),
        trial(2, TrialState.RUNNING, "running", 2, worker="local-1", arch="resnet9"),
    ], []), SETTINGS, 300.0)  # fmt: skip
    lines = plain([first, same, later])
    assert len(lines) == 4, lines  # trial 0 starts; trial 0 ends, 1 is handed back, 2 starts
    assert lines[0].startswith("[0:01:00] trial 0 training on local-0 (vgg8)")
    assert not any("trial 1" in line for line in lines[:1]), "a trial only taken ahead is no event"
    handed = [line for line in lines if "trial 1" in line]
    assert len(handed) == 1 and "handed back" in handed[0] and "fail" not in handed[0].split("|")[0].lower()
    done = [line for line in lines if "trial 0 complete" in line]
    assert len(done) == 1 and "0.5000" in done[0] and f"{EPOCHS}/{EPOCHS} epochs" in done[0]
    # The budget: 1 of 6 trials finished (the handed-back one is outside it), 12 of 60 epochs.
    assert "1/6 trials, 12/60 epochs; best -" in lines[-1], lines[-1]
    assert "0:05:00 elapsed" in lines[-1] and "left" in lines[-1]


def test_live_display_shows_budget_workers_epochs_best_and_time(tmp_path):
    study = study_of(tmp_path, [
        trial(0, TrialState.COMPLETE, "complete", EPOCHS, value=0.8125), trial(1, TrialState.RUNNING, "running", 4),
        trial(2, TrialState.RUNNING, "running", 7, worker="local-1", arch="resnet9"),
        trial(3, TrialState.FAIL, "returned", 0, worker="local-1"),
    ])  # fmt: skip
    snapshot = Snapshot.read(study, storage_of(tmp_path), SETTINGS, 600.0)
    console = Console(file=io.StringIO(), force_terminal=True, width=120, record=True)
    with Display(console) as display:
        display.update(snapshot)
    text = console.export_text()
    for expected in ("trials", "1/6", "epochs", "21/60", "best", "0.8125 on fold 0 only (trial 0, vgg8)", "elapsed", "0:10:00", "left",
                     "1 handed back", "0 failed"):  # fmt: skip
        assert expected in text, (expected, text)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("local-")}
    assert rows == {"local-0": ["1", f"4/{EPOCHS}"], "local-1": ["2", f"7/{EPOCHS}"]}, text
    # ETA: 21 epochs in 600 s (no epoch times recorded: every epoch weighs alike). Left: the 4th
    # search trial at the expected length (the 10 epochs of the finished one and two full-length
    # trials of prior), the two running ones' rest, then cross-validation: 2 fold trials of 10.
    assert snapshot.seconds_left == pytest.approx((EPOCHS + (EPOCHS - 4) + (EPOCHS - 7) + 2 * EPOCHS) * 600.0 / 21)
    no_cv = Snapshot(snapshot.trials, StudySettings(**{**SETTINGS.__dict__, "cv_top_k": 0, "cv_folds": 1}), 600.0)
    assert no_cv.seconds_left == pytest.approx((3 * EPOCHS + (EPOCHS - 4) + (EPOCHS - 7)) * 600.0 / 21)


def test_the_estimate_weighs_each_trial_by_its_seconds_an_epoch_and_expects_pruning():
    """The main job's estimate read 0:32 at its start and 5-7 minutes with 8-13 left (issue 25):
    early pruned trials made every trial look 1 epoch long, and fold trials of slow top models
    looked as fast as the pruned search."""
    fast, slow = (trial(n, TrialState.PRUNED, "pruned", 1) for n in (0, 1)), trial(2, TrialState.COMPLETE, "complete", EPOCHS, value=0.8)
    trials = [*fast, slow]
    for t in trials[:2]:
        t.user_attrs["epoch_seconds"] = [1.0]
    slow.user_attrs["epoch_seconds"] = [4.0] * EPOCHS
    snapshot = Snapshot(StudyTrials(trials, []), SETTINGS, 84.0)
    done, left = snapshot._work()
    mean_epoch_s = (1 + 1 + 4 * EPOCHS) / (2 + EPOCHS)
    expected = (1 + 1 + EPOCHS + 2 * EPOCHS) / (3 + 2)  # two full trials of prior, not 1-epoch trials
    assert done == pytest.approx(2 * 1.0 + 4.0 * EPOCHS)
    assert left == pytest.approx(1 * expected * mean_epoch_s + 2 * EPOCHS * 4.0), "fold trials of the slow winner at its own pace"
    assert snapshot.seconds_left == pytest.approx(84.0 * left / done)


def test_print_best_prints_what_export_writes(tmp_path, capsys):
    """Issue 19.2: the closing best configuration printed {} while export wrote the full config."""
    diverged = trial(0, TrialState.COMPLETE, "diverged", 3, value=0.9)  # COMPLETE with its last finite accuracy
    best = trial(1, TrialState.COMPLETE, "complete", EPOCHS, value=0.8, arch="resnet9")
    study = study_of(tmp_path, [diverged, best, trial(2, TrialState.COMPLETE, "complete", EPOCHS, value=0.7)])
    for key, value in SETTINGS.__dict__.items():
        study.set_user_attr(key, value)
    print_best(study, storage_of(tmp_path))
    out = capsys.readouterr().out
    assert out.startswith("best configuration (trial 1, validation accuracy 0.8000 on fold 0 only (the top 1 is cross-validated by the time the")
    printed = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert printed == export_trial(study, storage_of(tmp_path))["config"] and printed["arch"] == "resnet9"
    # The export carries depth and widen_factor for every arch; the user is told resnet9 reads neither.
    assert "(resnet9 ignores depth and widen_factor: the export carries every field of the training config)" in out


@pytest.mark.parametrize(("line", "quiet"), [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1796299337.947769   18309 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.", True),
    ("E0000 00:00:1796298949.282785   13155 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)", True),
    ("2026-12-03 11:56:10,942 kilotune.worker INFO trial 1 complete value=0.1000", True),
    ("[I 2026-12-03 12:02:13,912] A new study created in RDB with name: kilotune", True),
    ("worker vm:13154: 2 trials", True),
    ("worker vm:13154: 1 trial", True),
    ("2026-12-03 11:56:10,942 kilotune.worker ERROR trial 1 failed: ValueError: bad", False),
    ("2026-12-03 11:56:10,942 kilotune.study WARNING storage unavailable during ask", False),
    ("Traceback (most recent call last):", False),
    ("kilotune worker: error: unknown study 'x'", False),
])  # fmt: skip
def test_worker_start_up_noise_is_quiet_and_problems_are_not(line, quiet):
    assert bool(QUIET.match(line)) is quiet


def _cpu_only() -> bool:
    return not Path("/dev/nvidia0").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _cpu_only(), reason="the CUDA start-up noise appears only on a host without a GPU")
def test_training_is_quiet_about_cuda_unless_debugging(tmp_path):
    """Issue 19.4: "failed call to cuInit" from every worker on a CPU-only machine. TensorFlow logs it
    at its first operation, so this trains (10 images, one epoch): a worker, `kilotune train` and
    `kilotune retrain` set the log level the same way (cli/main.py)."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"arch": "vgg8", "width": 0.125, "epochs": 1, "batch_size": 32}))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KILOTUNE_DEBUG")}
    command = [sys.executable, "-m", "kilotune", "train", "--config", str(config), "--dataset", "fashion-mnist",
               "--train-size", "10", "--val-fraction", "0"]  # fmt: skip
    quiet = run_bounded(command, cwd=REPO, env=env)
    debug = run_bounded(command, cwd=REPO, env=env | {"KILOTUNE_DEBUG": "1"})
    assert quiet.returncode == debug.returncode == 0, quiet.stderr[-2000:] + debug.stderr[-2000:]
    assert "cuInit" not in quiet.stderr, quiet.stderr
    assert "cuInit" in debug.stderr, "KILOTUNE_DEBUG=1 shows the backend's logs"


@pytest.mark.slow
def test_run_keeps_the_password_out_of_its_output_and_the_workers_command_lines(tmp_path, pg_server, fashion_subset):
    """Issue 17.7 and 19.2-4 in one real run: 2 workers, 3 trials of 1 epoch on PostgreSQL."""
    from sqlalchemy.engine import make_url

    password = "pw-not-to-be-seen"  # trust auth: the server never asks for it
    url = make_url(pg_server()).set(password=password).render_as_string(hide_password=False)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none"}))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KILOTUNE_DEBUG")}
    env |= {"KILOTUNE_STORAGE": url, "KILOTUNE_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    run = subprocess.Popen(
        [sys.executable, "-m", "kilotune", "run", "--study", "masked", "--dataset", "fashion-mnist", "--subset", str(fashion_subset),
         "--space", str(space), "--epochs", "1", "--n-trials", "3", "--workers", "2", "--seed", "0", "--no-warm-start", "--cv-top-k", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        children = wait_for(lambda: _children(run.pid) if len(_children(run.pid)) == 2 else None, 120, "two workers",
                            progress=tree_cpu_progress([run]))  # fmt: skip
        for pid in children:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert "worker" in cmdline and password not in cmdline and "postgresql" not in cmdline, cmdline
            assert Path(f"/proc/{pid}/environ").read_bytes().decode().count(password) == 1, "the URL goes in the environment"
        out = wait_for_exit([run], 300, "kilotune run", progress=tree_cpu_progress([run]))[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-3000:]
    assert password not in out, out
    first = next(line for line in out.splitlines() if line.startswith("study 'masked'"))
    assert "***@" in first and "dashboard: kilotune dashboard" in first, first
    for noise in ("cuInit", "cudart_stub", "absl::InitializeLog", " INFO "):
        assert noise not in out, (noise, out[-3000:])
    for number in range(3):
        assert sum(line.startswith("[") and f"] trial {number} " in line and "training" not in line for line in out.splitlines()) == 1, out
    study, _ = load_study("masked", open_storage(url))
    printed = printed_best_config(out)
    assert printed == export_trial(study, open_storage(url))["config"]
    params = [t.params for t in study.trials]
    assert len(params) == 3 and len({json.dumps(p, sort_keys=True) for p in params}) == 3, "seeded workers sampled alike"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_the_estimate_counts_the_cross_validation_still_to_train():
    folds = [trial(0, TrialState.COMPLETE, "complete", EPOCHS, value=0.8), trial(1, TrialState.RUNNING, "running", 2),
             trial(2, TrialState.WAITING, None, 0)]  # fmt: skip
    for number, t in enumerate(folds):
        t.user_attrs.update(cv_of=0, fold=number + 1)
    settings = StudySettings(**{**SETTINGS.__dict__, "cv_top_k": 1, "cv_folds": 5})  # 4 fold trials, 2 search trials
    snapshot = Snapshot(StudyTrials([trial(0, TrialState.COMPLETE, "complete", EPOCHS, value=0.8)], folds), settings, 600.0)
    # Done: the search trial and 12 fold epochs. Left: the other search trial, the running fold's
    # 8 epochs, the queued one's 10, and the fourth fold trial, not queued yet.
    assert snapshot._work() == (EPOCHS + EPOCHS + 2, EPOCHS + (EPOCHS - 2) + EPOCHS + EPOCHS)
    assert snapshot.finished == 2 and snapshot.epochs_done == 22, "fold trials count in the budget"
    assert [r.trial for r in snapshot.running] == ["fold trial 1 (trial 0 on fold 2)"]


def test_a_progress_poll_reads_the_trials_once(tmp_path, monkeypatch):
    """The display polls every few seconds; each poll reads the study's trials once, winner line included."""
    study = study_of(tmp_path, [trial(0, TrialState.COMPLETE, "complete", EPOCHS, value=0.8), trial(1, TrialState.RUNNING, "running", 4)])
    reads = []
    original = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda *a, **k: reads.append(1) or original(*a, **k))
    snapshot = Snapshot.read(study, storage_of(tmp_path), SETTINGS, 60.0)
    assert len(reads) == 1 and "best 0.8000" in snapshot.best, (reads, snapshot.best)
