"""``kilotune run``: the main job on one machine, N worker processes (workers/launch.py) and the
progress display (workers/display.py), then the best configuration.
"""

from __future__ import annotations

import os
import signal
import time

import optuna
from rich.console import Console

from kilotune.search.attrs import DATASET
from kilotune.search.create import create
from kilotune.search.settings import RunOptions
from kilotune.search.storage import open_storage, redact, storage_url
from kilotune.search.study import load_study
from kilotune.subset.files import count_of
from kilotune.workers.display import Display, Snapshot, print_best
from kilotune.workers.launch import LocalProcesses

POLL_SECONDS = 2.0


def run_local(options: RunOptions) -> int:
    """Creates (or joins) the study, runs ``options.workers`` worker processes until its budget is
    spent, shows their progress and prints the best configuration; 0 if every worker exited 0."""
    study, _ = create(options)
    storage = open_storage(options.storage)
    study, settings = load_study(study.study_name, storage)  # as recorded (--keep-settings keeps the study's)
    # `kilotune dashboard` finds the storage as this run did, unless it was given here.
    dashboard = "kilotune dashboard" + (f" --storage {redact(options.storage)}" if options.storage != storage_url(None) else "")
    print(f"study {study.study_name!r} on {study.user_attrs[DATASET]} in {redact(options.storage)}, {count_of(options.workers, 'worker')}; "
          f"budget {settings.budget_text()}; dashboard: {dashboard}", flush=True)

    display = Display(Console())
    workers = LocalProcesses(on_line=display.log)
    # The URL goes to the workers in their environment: on their command lines `ps` would show its password.
    workers.start(options.workers, study.study_name, {**os.environ, "KILOTUNE_STORAGE": options.storage}, data_dir=options.data_dir)

    def forward(signum: int, frame: object) -> None:
        display.log("stopping workers; their trials will be retried on the next run")
        workers.stop()

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    started = time.time()
    with display:
        while workers.poll():
            display.update(Snapshot.read(study, storage, settings, time.time() - started))
            time.sleep(POLL_SECONDS)
        display.update(Snapshot.read(study, storage, settings, time.time() - started), final=True)
    # A fresh read, as `kilotune export` makes: the best configuration is the one it writes.
    print_best(optuna.load_study(study_name=study.study_name, storage=storage), storage)
    return 0 if all(code == 0 for code in workers.wait()) else 1
