"""What taking one trial costs with kilotune's TPE settings: the claim and the space's ~15 suggests.

    python bench/sampler_cost.py --storage postgresql://postgres@127.0.0.1:5432/postgres
    python bench/sampler_cost.py --running 128    # and with a 64-worker fleet's trials in flight

For kilotune's sampler (``search.samplers.SnapshotTPESampler``) and Optuna's ``TPESampler`` with
group and constant liar on or off, a fresh study in a fresh database (PostgreSQL: created and
dropped here) runs --trials takes (``claim_trial`` + ``SearchSpace.suggest``: the default space,
~15 params) + tell with a random value, and prints the median take time (wall
and CPU) of the first and the last ten trials. With --running N it then leaves N more trials
running with 30 reports each, as a fleet's are, and times ten more takes. Optuna's constant liar re-reads the study's
trials, running ones with all their reports, for every parameter group; kilotune's reads them
once a take, and the running ones without their reports. Here Optuna stores each param as it
is suggested; the worker's take (``TrialSource.take``) stores them in one transaction, ~20 ms of
CPU less (``bench/trial_writes.py``), and adds the budget lock and a heartbeat.
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

# Optuna's TPE variants: (group, constant_liar); "kilotune" is StudySettings.sampler_for's TPE.
OPTUNA_VARIANTS = {"optuna": (True, True), "optuna-no-liar": (True, False),
                   "optuna-no-group": (False, True), "optuna-no-group-no-liar": (False, False)}
VARIANTS = ("kilotune", *OPTUNA_VARIANTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server URL (a database is created per variant), or sqlite:///DIR/ for files")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="kilotune's sampler, or Optuna's TPE with or without group and constant liar (default: all)")
    parser.add_argument("--running", type=int, default=0, help="trials left running (30 reports each) before ten more takes")
    args = parser.parse_args()

    import optuna
    import sqlalchemy

    from kilotune.search.budget import claim_trial
    from kilotune.search.optuna_internals import SnapshotTPESampler
    from kilotune.search.settings import StudySettings
    from kilotune.search.space import SearchSpace
    from kilotune.search.storage import _with_driver, open_storage
    from kilotune.search.study import create_study, load_study
    from kilotune.search.trial_writes import PendingWrites, store

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_spec(None)
    server = sqlalchemy.engine.make_url(_with_driver(args.storage))
    settings = StudySettings(dataset="bench", dataset_checksum="-", subset_path="-",
                             subset_checksum="-", epochs=30, pruner="hyperband")
    kilotunes = settings.sampler_for()
    assert isinstance(kilotunes, SnapshotTPESampler)
    print(f"optuna {optuna.__version__}; storage {server.render_as_string(hide_password=True)}; "
          f"{args.trials} trials per variant, then {args.running} running")
    started = time.time()

    def take(study: optuna.Study, storage: optuna.storages.BaseStorage, timings: list[tuple[float, float]]) -> optuna.Trial:
        """Claim a trial and sample its config, as the worker's take does without its lock and batched writes."""
        wall, cpu = time.perf_counter(), time.process_time()
        trial = claim_trial(study, settings, storage, started)
        space.suggest(trial, settings.epochs)
        timings.append((time.perf_counter() - wall, time.process_time() - cpu))
        return trial

    for variant in args.variants:
        name = f"kilotune_sampler_{secrets.token_hex(4)}"
        admin = None
        if server.get_backend_name() == "postgresql":
            admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"create database {name}")
            url = server.set(database=name).render_as_string(hide_password=False)
        else:
            url = f"{args.storage.rstrip('/')}/{name}.db"
        try:
            storage = open_storage(url)
            create_study("sampler", settings, storage)
            study, _ = load_study("sampler", storage)
            if variant == "kilotune":
                study.sampler = settings.sampler_for()
            else:
                group, liar = OPTUNA_VARIANTS[variant]
                study.sampler = optuna.samplers.TPESampler(multivariate=True, group=group, constant_liar=liar,
                                                           n_startup_trials=kilotunes._n_startup_trials, seed=settings.seed)
            finished: list[tuple[float, float]] = []
            for _ in range(args.trials):
                study.tell(take(study, storage, finished), random.random())
            with_running: list[tuple[float, float]] = []
            if args.running:
                for _ in range(args.running):
                    trial = take(study, storage, [])
                    store(storage, trial._trial_id, PendingWrites(reports={step: random.random() for step in range(1, 31)}))
                for _ in range(10):
                    study.tell(take(study, storage, with_running), random.random())
            storage.engine.dispose()
        finally:
            if admin is not None:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"drop database if exists {name} with (force)")
        line = f"{variant:24}: a take (wall / CPU), median of trials 1-10 {_ms(finished[:10])}, of the last 10 {_ms(finished[-10:])}"
        print(line + (f", with {args.running} running {_ms(with_running)}" if args.running else ""), flush=True)


def _ms(timings: list[tuple[float, float]]) -> str:
    """Median wall / CPU milliseconds."""
    return f"{1e3 * median(t[0] for t in timings):.0f} / {1e3 * median(t[1] for t in timings):.0f} ms"


if __name__ == "__main__":
    main()
