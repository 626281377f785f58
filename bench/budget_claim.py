"""A worker's reads that grow with the study: the budget claim and the prune check, as running trials fill it.

    python bench/budget_claim.py --storage postgresql://postgres@127.0.0.1:5432/postgres

Every worker's take queues for the budget lock, so the time it is held caps how many trials the
whole fleet can start per second. This builds one study in a fresh database (created and dropped
here) with --finished finished trials and, step by step, 0 to --running RUNNING trials (each with
the default space's params, a config attribute and 10 reports, as a worker leaves them), and at
each step times, single process and uncontended, the two ways to claim a trial:

- ``budget_left`` + ``study.ask()`` (kilotune before 2026-11-22): both re-read every unfinished
  trial through Optuna's cached storage;
- ``search.budget.claim_trial``: two indexed queries, then the trial is created;

and the two ways to check a trial at the first rung of its Hyperband bracket (epoch 3, 9 or 27;
before it, the rule reads nothing), ``trial.should_prune()``:

- with Optuna's ``HyperbandPruner`` (kilotune before 2026-12-02): reads every trial of the
  bracket, and Optuna's cached storage re-reads every unfinished one;
- with ``search.pruners.IndexedHyperbandPruner``: the bracket's rung values in one query.

Prints the median of --repeats per step; each claimed or checked trial is told COMPLETE at once,
so the number of running trials stays fixed; the last column times that ``study.tell``.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/postgres", help="a PostgreSQL server URL")
    parser.add_argument("--finished", type=int, default=200)
    parser.add_argument("--running", type=int, nargs="*", default=[0, 16, 64, 128])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import optuna
    import sqlalchemy

    from kilotune.search.space import SearchSpace
    from kilotune.search.budget import budget_left, claim_trial
    from kilotune.search.pruners import PRUNERS
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import _with_driver, open_storage
    from kilotune.search.study import create_study, load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    server = sqlalchemy.engine.make_url(_with_driver(args.storage))
    name = f"kilotune_claim_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"create database {name}")
    try:
        storage = open_storage(server.set(database=name).render_as_string(hide_password=False))
        settings = StudySettings(dataset="bench", dataset_checksum="-", subset_path="-", subset_checksum="-",
                                 epochs=30, n_trials=10**6)
        create_study("claims", settings, storage)
        study, settings = load_study("claims", storage)
        indexed_pruner, optuna_pruner = settings.pruner_for(storage), settings.pruner_for()
        optuna_pruner._try_initialization(study)  # private, read-only use: which bracket a trial is in
        space = SearchSpace.from_spec(None)

        def worker_trial() -> optuna.Trial:
            trial = study.ask()
            trial.set_user_attr("config", space.suggest(trial, settings.epochs).to_dict())
            for step in range(1, 11):
                trial.report(random.random(), step)
                if settings.may_prune_at(step):
                    trial.should_prune()  # records the trial's rung value, as a worker's check does
            return trial

        for _ in range(args.finished):
            study.tell(worker_trial(), random.random())
        print(f"optuna {optuna.__version__}; {server.render_as_string(hide_password=True)}; {args.finished} finished trials; "
              f"median of {args.repeats} claims, one process, no contention")
        running: list[optuna.Trial] = []
        for target in sorted(args.running):
            while len(running) < target:
                running.append(worker_trial())
            timings: dict[str, list[float]] = {"budget_left + ask": [], "claim_trial": []}
            for _ in range(args.repeats):
                for way in timings:
                    started = time.perf_counter()
                    if way == "claim_trial":
                        trial = claim_trial(study, settings, storage, time.time())
                    else:
                        trial = study.ask() if budget_left(study, settings, time.time()) else None
                    timings[way].append(time.perf_counter() - started)
                    study.tell(trial, random.random())  # keep the number of running trials fixed
            # The other per-trial read that grows with the study: the pruner's check at a rung.
            pruners = {"should_prune (Optuna)": optuna_pruner, "should_prune (indexed)": indexed_pruner}
            for way in pruners:
                timings[way] = []
            for _ in range(args.repeats):
                for way, pruner in pruners.items():
                    study.pruner = pruner
                    trial = claim_trial(study, settings, storage, time.time())
                    # At the first rung of the trial's bracket (epoch 3, 9 or 27), where the rule reads the study.
                    for step in range(1, PRUNERS[settings.pruner].min_resource(settings) * 3 ** optuna_pruner._get_bracket_id(study, trial) + 1):
                        trial.report(random.random(), step)
                    started = time.perf_counter()
                    trial.should_prune()
                    timings[way].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    study.tell(trial, random.random())
                    if way.endswith("(indexed)"):
                        timings.setdefault("tell", []).append(time.perf_counter() - started)
            print(f"{target:4d} running: " + ", ".join(f"{way} {1e3 * median(v):.1f} ms" for way, v in timings.items()))
        storage.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"drop database if exists {name} with (force)")


if __name__ == "__main__":
    main()
