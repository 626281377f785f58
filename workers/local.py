"""``kilotune run``: the main job on one machine, N real worker processes and a progress line."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from kilotune.search.space import PRESETS, params_for
from kilotune.search.study import load_study, open_storage, storage_url
from kilotune.search.study_commands import create_from_args

DEFAULT_TRIALS = 30
POLL_SECONDS = 5.0


def run_local(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers} must be at least 1")
    if args.n_trials is None and args.timeout is None:
        args.n_trials = DEFAULT_TRIALS  # a local run must end by itself
    unknown = [p for p in args.preset if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    study, created = create_from_args(args)
    url = storage_url(args.storage)
    if created:
        for name in args.preset:
            config = PRESETS[name].replace(epochs=args.epochs)
            study.enqueue_trial(params_for(config), user_attrs={"preset_config": config.to_dict(), "preset": name})
    print(f"study {study.study_name!r} on {study.user_attrs['dataset']}: {args.workers} workers, "
          f"budget {args.n_trials or '-'} trials / {args.timeout or '-'} s; dashboard: optuna-dashboard {url}")

    command = [sys.executable, "-m", "kilotune", "worker", "--study", study.study_name, "--storage", url]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    workers = [subprocess.Popen(command + ["--worker-id", f"local-{i}"]) for i in range(args.workers)]

    def forward(signum: int, frame: object) -> None:
        # Workers finish their batch, fail their trial for retry, and exit: nothing is lost.
        print("\nstopping workers; their trials will be retried on the next run", file=sys.stderr)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    study, _ = load_study(study.study_name, open_storage(url))
    last = ""
    while any(w.poll() is None for w in workers):
        time.sleep(POLL_SECONDS)
        line = progress(study)
        if line != last:
            print(line, flush=True)
            last = line
    print(progress(study))
    print_best(study)
    return 0 if all(w.returncode == 0 for w in workers) else 1


def progress(study: optuna.Study) -> str:
    """One line: trials by state, and the best so far."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    # A RUNNING trial without a status is one a worker took ahead; it trains when the current one ends.
    training = sum(t.state == TrialState.RUNNING and "status" in t.user_attrs for t in trials)
    failed = sum(t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed" for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value, default=None)
    best_text = f"best {best.value:.4f} (trial {best.number}, {best.user_attrs.get('config', {}).get('arch')})" if best else "best -"
    return (f"trials: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
            f"{training} training (+{count[TrialState.RUNNING] - training} taken ahead), {failed} failed; {best_text}")


def print_best(study: optuna.Study) -> None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        print("no complete trial yet")
        return
    best = max(complete, key=lambda t: t.value)
    print(f"best configuration (trial {best.number}, validation accuracy {best.value:.4f}):")
    print(json.dumps(best.user_attrs.get("config", best.params), indent=2, sort_keys=True))
    print(f"export it: kilotune export --study {study.study_name} --out best.json")
