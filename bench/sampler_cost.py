"""What taking one trial costs with kilotune's TPE settings: ask + the default space's suggests.

    python bench/sampler_cost.py --storage postgresql://postgres@127.0.0.1:5432/postgres

For each TPE variant (group and constant liar on or off), a fresh study in a fresh database
(PostgreSQL: created and dropped here) runs --trials trials of ask + ``SearchSpace.suggest``
(the default space, ~15 params) + tell with a random value, and prints the median ask + suggest
time of the first and the last ten trials. Constant liar makes TPE re-read the study's trials
for every parameter group; this shows what that costs per trial.
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
    parser.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server URL (a database is created per variant), or sqlite:///DIR/ for files")
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()

    import optuna
    import sqlalchemy

    import search.study as study_module
    from search.space import SearchSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe = optuna.samplers.TPESampler
    space = SearchSpace.from_spec(None)
    server = sqlalchemy.engine.make_url(study_module._with_driver(args.storage))
    print(f"optuna {optuna.__version__}; storage {server.render_as_string(hide_password=True)}; {args.trials} trials per variant")
    for group in (True, False):
        for liar in (True, False):
            # kilotune's sampler with two of its switches changed
            study_module.optuna.samplers.TPESampler = lambda **kw: tpe(**{**kw, "group": group, "constant_liar": liar})
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
                storage = study_module.open_storage(url)
                settings = study_module.StudySettings(dataset="bench", dataset_checksum="-", subset_path="-",
                                                      subset_checksum="-", epochs=30, pruner="hyperband")
                study_module.create_study("sampler", settings, storage)
                study, settings = study_module.load_study("sampler", storage)
                seconds = []
                for _ in range(args.trials):
                    started = time.perf_counter()
                    trial = study.ask()
                    space.suggest(trial, settings.epochs)
                    seconds.append(time.perf_counter() - started)
                    study.tell(trial, random.random())
                storage.engine.dispose()
            finally:
                if admin is not None:
                    with admin.connect() as conn:
                        conn.exec_driver_sql(f"drop database if exists {name} with (force)")
            print(f"group={group!s:5} constant_liar={liar!s:5}: ask + suggest per trial, median of trials 1-10 "
                  f"{1e3 * median(seconds[:10]):.0f} ms, of the last 10 {1e3 * median(seconds[-10:]):.0f} ms")
    study_module.optuna.samplers.TPESampler = tpe


if __name__ == "__main__":
    main()
