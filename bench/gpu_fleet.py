"""GPU fleet (issue 28): trials a minute and where a trial's seconds go with 1, 2, 4 and 8 workers on one device.

    KERAS_BACKEND=jax python bench/gpu_fleet.py --out $OUT     # a GPU machine, one call of < 8 min
    python bench/gpu_fleet.py --smoke --out runs/gpu_fleet      # end to end on a CPU in a few minutes

For each worker count it creates a kilotune study on SQLite (``--storage`` a PostgreSQL URL
instead) whose space fixes every parameter to one trial configuration (default: the
resnet9-davidnet preset at 30 epochs; no pruning, no cross-validation, no warm start), gives it
``--trials-per-worker`` trials a worker, and runs the workers with kilotune's own launcher
(``workers.launch.LocalProcesses``: ``python -m kilotune.workers`` processes, as ``kilotune run``
starts them), all on the one device. A row per worker count: trials finished a minute of the
cell's wall time (launch to the last worker's exit, start-up included), the mean of the
finished trials' ``time_split`` (docs/study-format.md: build, train, validation, checkpoint,
storage, other, summing to the trial's wall) and the workers' mean start-up, GPU utilisation
and memory from ``nvidia-smi -l 1`` sampled in the background ("n/a" without nvidia-smi), and
the trials failed out of memory. Data: CIFAR-shaped random images (32x32x3, 10 classes, a mean
colour a class so they can be learnt; 1000 training images, 800 of them trained on and 200
validated), or ``--dataset fashion-mnist`` / ``FILE.npz`` (the default random 1000-image subset).
Writes ``gpu_fleet.json`` and ``gpu_fleet.md`` under ``--out`` (default ``$OUT``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from environment import environment  # bench/, this script's folder, is on sys.path

REPO = Path(__file__).resolve().parents[1]
SPLIT_KEYS = ("build", "train", "validation", "checkpoint", "storage", "other")
NEEDED = ("numpy", "keras", "optuna", "optuna_dashboard", "sqlalchemy", "alembic", "colorlog", "yaml", "rich")
BACKEND_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def missing_packages(backend: str, storage: str | None) -> list[str]:
    """The modules a worker needs that this Python cannot import (a bare GPU machine lacks several)."""
    wanted = [*NEEDED, BACKEND_MODULE.get(backend, backend)] + (["psycopg2"] if storage and storage.startswith("postgresql") else [])
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def importable_kilotune() -> None:
    """Makes ``import kilotune`` work here and in the workers where it is not installed: the
    repository root is the package (pyproject's package-dir), linked as ``kilotune`` in a temporary folder."""
    if importlib.util.find_spec("kilotune") is not None:
        return
    folder = Path(tempfile.mkdtemp(prefix="kilotune-path-"))
    (folder / "kilotune").symlink_to(REPO)
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)


# -- nvidia-smi, sampled in the background ------------------------------------------------------


def parse_nvidia_smi(line: str) -> tuple[float, float] | None:
    """``(utilisation %, memory used MiB)`` from a line of ``--query-gpu=utilization.gpu,memory.used
    --format=csv``; None for its header or anything else ("[N/A]" included)."""
    parts = [p.strip().removesuffix("%").removesuffix("MiB").strip() for p in line.split(",")]
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


class GpuSampler:
    """``nvidia-smi ... -l 1`` in the background: ``(time, utilisation, MiB)`` samples; none where it is absent."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self.process: subprocess.Popen | None = None
        if self.available:
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv", "-l", "1"],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            threading.Thread(target=self._read, daemon=True, name="nvidia-smi").start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if (parsed := parse_nvidia_smi(line)) is not None:
                self.samples.append((time.time(), *parsed))

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(u, m) for t, u, m in self.samples if start <= t <= end]

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


def gpu_summary(samples: list[tuple[float, float]], available: bool = True) -> dict[str, Any]:
    """Mean and peak utilisation and peak memory of a cell's samples; "n/a" without nvidia-smi or samples."""
    if not available or not samples:
        return {"gpu_util_mean": "n/a", "gpu_util_max": "n/a", "gpu_mem_max_mib": "n/a", "gpu_samples": len(samples)}
    return {"gpu_util_mean": round(statistics.fmean(u for u, _ in samples), 1), "gpu_util_max": max(u for u, _ in samples),
            "gpu_mem_max_mib": max(m for _, m in samples), "gpu_samples": len(samples)}  # fmt: skip


# -- the table ----------------------------------------------------------------------------------


def cell_row(workers: int, trials: list[dict[str, Any]], wall_s: float, busy_s: float, gpu: dict[str, Any]) -> dict[str, Any]:
    """One worker count's row from its trials (``{"state", "status", "fail_reason", "time_split"}`` each).

    ``trials_per_minute`` counts the trials that trained to the end (complete or diverged) over
    ``busy_s``, from the launch to the last one's tell (start-up included); ``tail_s`` is the
    rest of the cell's ``wall_s``, the workers' finishing (a worker whose ask-ahead found the
    budget spent while its own last trial ran waits a heartbeat, 10 s, before it exits). The
    split is the mean over the finished trials, ``startup_s`` the mean over the workers (each
    records it on its first trial, finished or not).
    """
    finished = [t for t in trials if t["state"] == "COMPLETE"]
    splits = [t["time_split"] for t in finished if t.get("time_split")]
    startups = [t["time_split"]["startup"] for t in trials if "startup" in (t.get("time_split") or {})]
    mean = {k: round(statistics.fmean(s[k] for s in splits), 2) if splits else None for k in ("wall", *SPLIT_KEYS)}
    return {
        "workers": workers,
        "trials": len(finished),
        "failed": sum(t["state"] == "FAIL" and t["status"] != "interrupted" for t in trials),
        "out_of_memory": sum(t.get("fail_reason") == "out of memory" for t in trials),
        "wall_s": round(wall_s, 1),
        "tail_s": round(wall_s - busy_s, 1),
        "trials_per_minute": round(len(finished) / (busy_s / 60), 2) if busy_s > 0 else 0.0,
        "startup_s": round(statistics.fmean(startups), 2) if startups else None,
        "trial_s": mean["wall"],
        **{f"{k}_s": mean[k] for k in SPLIT_KEYS},
        **gpu,
    }


COLUMNS = (("workers", "workers"), ("trials", "trials"), ("trials_per_minute", "trials/min"), ("wall_s", "cell s"), ("tail_s", "tail s"),
           ("startup_s", "start-up s"), ("trial_s", "trial s"), *((f"{k}_s", k) for k in SPLIT_KEYS),
           ("gpu_util_mean", "GPU util % mean"), ("gpu_util_max", "max"), ("gpu_mem_max_mib", "GPU MiB max"),
           ("out_of_memory", "OOM"), ("failed", "failed"))  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table; a missing figure is "-"."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------


def make_data(out: Path, train: int, test: int, seed: int = 0) -> Path:
    """CIFAR-shaped random uint8 images, a mean colour a class (learnable), saved as ``.npz``."""
    import numpy as np

    from kilotune.subset.datasets import dataset_from_arrays, save_dataset

    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (10, 3))

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = np.clip(colours[y][:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, y

    return save_dataset(dataset_from_arrays(*images(train), *images(test), name="cifar-shaped"), out / "cifar-shaped.npz")


def trial_config(smoke: bool, epochs: int | None, width: float | None) -> Any:
    from kilotune.search.presets import PRESETS
    from kilotune.training.config import TrainConfig

    if smoke:
        return TrainConfig(arch="vgg8", width=0.125, batch_size=32, optimizer="sgd", learning_rate=0.05, cutout=0, epochs=epochs or 2)
    preset = PRESETS["resnet9-davidnet"]
    return preset.replace(epochs=epochs or 30, width=width or preset.width)


def run_cell(workers: int, args: argparse.Namespace, space: Path, dataset: str, subset: str | None, gpu: GpuSampler,
             share_s: float, deadline: float) -> dict[str, Any]:  # fmt: skip
    """Creates the cell's study, runs ``workers`` worker processes until its trials are done (none
    starts after ``share_s``; all are stopped at ``deadline``), and reads its row."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from kilotune.search.attrs import FAIL_REASON, STATUS, TIME_SPLIT
    from kilotune.search.create import create, run_options
    from kilotune.search.storage import open_storage
    from kilotune.workers.launch import LocalProcesses

    study = f"fleet-{workers}w-{int(time.time())}"
    options = run_options({"study": study, "storage": args.storage, "dataset": dataset, "subset": subset, "space": str(space),
                           "warm_start": False, "epochs": args.config.epochs, "n_trials": workers * args.trials_per_worker,
                           "timeout": share_s, "sampler": "random", "pruner": "none", "cv_top_k": 0, "seed": 0},
                          run=False)  # fmt: skip
    create(options)
    log = open(args.out / f"workers-{workers}.log", "w")
    launcher = LocalProcesses(on_line=lambda line: print(line, file=log, flush=True))
    env = {**os.environ, "KILOTUNE_STORAGE": options.storage, "KILOTUNE_CHECKPOINT_DIR": str(args.out / "checkpoints")}
    start = time.time()
    launcher.start(workers, study, env)
    stopped = False
    while launcher.poll():
        if time.time() > deadline and not stopped:
            print(f"  workers={workers}: past the run's time budget; stopping them (SIGTERM)", flush=True)
            launcher.stop()
            stopped = True
        time.sleep(0.5)
    codes, end = launcher.wait(), time.time()
    log.close()
    frozen = optuna.load_study(study_name=study, storage=open_storage(options.storage)).get_trials()
    trials = [{"state": t.state.name, "status": t.user_attrs.get(STATUS), "fail_reason": t.user_attrs.get(FAIL_REASON),
               "time_split": t.user_attrs.get(TIME_SPLIT)} for t in frozen]  # fmt: skip
    told = [t.datetime_complete.timestamp() for t in frozen if t.datetime_complete]  # local time, as time.time()
    busy = (max(told) if told else end) - start
    row = cell_row(workers, trials, end - start, busy, gpu_summary(gpu.between(start, end), gpu.available))
    row.update(study=study, exit_codes=codes, stopped=stopped, trial_splits=[t["time_split"] for t in trials])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="folder for gpu_fleet.json and .md (default: $OUT)")
    p.add_argument("--smoke", action="store_true", help="tiny: vgg8 at width 1/8, 2 epochs, 1 and 2 workers, 200 images (a CPU, a few minutes)")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1 2 4 8; --smoke: 1 2)")
    p.add_argument("--epochs", type=int, help="epochs a trial (default: 30; --smoke: 2)")
    p.add_argument("--width", type=float, help="the resnet9-davidnet trial's width (default: the preset's, 1.0)")
    p.add_argument("--trials-per-worker", type=int, default=2, help="trials a worker in each cell (default: %(default)s)")
    p.add_argument("--dataset", default="cifar-shaped", help="cifar-shaped (generated), fashion-mnist, or FILE.npz (default: %(default)s)")
    p.add_argument("--storage", help="a PostgreSQL URL (default: SQLite in --out)")
    p.add_argument("--budget-s", type=float, default=420, help="the whole run's time (default: %(default)s): each cell starts no "
                   "trial after its share, and workers still running at the end are stopped")  # fmt: skip
    args = p.parse_args(argv)
    if args.out is None:
        p.error("give --out (or set $OUT)")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if missing := missing_packages(backend, args.storage):
        print(f"gpu_fleet: missing Python packages: {', '.join(missing)} (KERAS_BACKEND={backend}); on a GPU machine carry them "
              "as wheels: docs/benchmarks.md, 'GPU fleet (issue 28)'", file=sys.stderr)  # fmt: skip
        return 2
    importable_kilotune()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.out = Path(args.out).absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    args.storage = args.storage or f"sqlite:///{args.out / 'gpu_fleet.db'}"
    counts = args.workers or ([1, 2] if args.smoke else [1, 2, 4, 8])
    args.config = trial_config(args.smoke, args.epochs, args.width)
    from kilotune.search.space import params_for

    space = args.out / "space.json"
    space.write_text(json.dumps(params_for(args.config)))  # every parameter fixed: each trial trains this config
    if args.dataset == "cifar-shaped":
        dataset, subset = str(make_data(args.out, *((200, 50) if args.smoke else (1000, 200)))), "all"
    else:
        dataset, subset = args.dataset, None
    began = time.time()
    deadline = began + args.budget_s
    print(f"gpu_fleet: {args.config.arch} (width {args.config.width}) x {args.config.epochs} epochs, {args.trials_per_worker} trials a worker, workers "
          f"{counts}, {dataset}, {backend}; budget {args.budget_s:g} s", flush=True)  # fmt: skip
    gpu, rows = GpuSampler(), []
    try:
        for i, n in enumerate(counts):
            share = max(30.0, (deadline - time.time()) / (len(counts) - i))
            rows.append(run_cell(n, args, space, dataset, subset, gpu, share, deadline))
            r = rows[-1]
            print(f"  workers={n}: {r['trials']} trials in {r['wall_s']} s, {r['trials_per_minute']} trials/min; trial "
                  f"{r['trial_s']} s (build {r['build_s']}, train {r['train_s']}, validation {r['validation_s']}); "
                  f"GPU util % {r['gpu_util_mean']}, OOM {r['out_of_memory']}", flush=True)  # fmt: skip
    finally:
        gpu.close()
    result = {"machine": environment(), "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "config": args.config.to_dict(), "dataset": dataset, "trials_per_worker": args.trials_per_worker,
              "total_s": round(time.time() - began, 1), "rows": rows}  # fmt: skip
    (args.out / "gpu_fleet.json").write_text(json.dumps(result, indent=1))
    env, host = result["machine"], result["machine"]["machine"]
    text = (f"{host['cpu']} ({host['cores']} cores), GPU {host['gpu'] or 'none'}, Keras {env['libraries'].get('keras')} on "
            f"{env['backend']}, commit {(env['commit'] or 'unknown')[:7]}{' (dirty)' if env['commit_dirty'] else ''}; "
            f"{args.config.arch} (width {args.config.width}) x {args.config.epochs} epochs\n\n{markdown(rows)}\n")  # fmt: skip
    (args.out / "gpu_fleet.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
