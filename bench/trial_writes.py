"""What one trial's writes cost: Optuna's call per write against ``search.trial_writes.store``.

    python bench/trial_writes.py            # PostgreSQL on 127.0.0.1:5432 and SQLite, ~20 s

A worker's trial writes ~15 params (the space's suggests), 30 reports and ~10 user attributes.
For each storage, a fresh study; each of ``--trials`` trials makes those writes either through
Optuna's ``Trial`` onto its storage (one transaction each) or through a ``BufferedWrites``
stand-in stored by one ``store`` call. Prints the median client CPU (this process) and wall
time per trial for each kind of write, as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from kilotune.search.storage import open_storage  # noqa: E402
from kilotune.search.trial_writes import BufferedWrites, store  # noqa: E402

PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
N_PARAMS, N_REPORTS, N_ATTRS = 15, 30, 10


def writes(trial: optuna.Trial, kind: str) -> None:
    """One kind of a trial's writes, through Optuna's Trial API."""
    if kind == "params":
        for i in range(N_PARAMS):
            trial.suggest_float(f"p{i}", 0.0, 1.0)
    elif kind == "reports":
        for step in range(1, N_REPORTS + 1):
            trial.report(step / N_REPORTS, step)
    else:
        for i in range(N_ATTRS):
            trial.set_user_attr(f"a{i}", {"value": i, "list": [i, i]})


def timed(call: Any) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(url: str, trials: int) -> dict[tuple[str, str], tuple[float, float]]:
    """Median (cpu, wall) seconds per trial for each (kind, way)."""
    storage = open_storage(url)
    # Random sampling: what is timed is the writes, not a sampler reading the study.
    study = optuna.create_study(storage=storage, study_name=f"writes-{secrets.token_hex(3)}", sampler=optuna.samplers.RandomSampler(seed=0))
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(trials):
        for kind in ("params", "reports", "user_attrs"):
            trial = study.ask()
            samples.setdefault((kind, "optuna"), []).append(timed(lambda: writes(trial, kind)))
            study.tell(trial, 0.0)

            trial = study.ask()
            buffer = BufferedWrites(trial.storage, trial._trial_id)
            trial.storage = buffer

            def buffered() -> None:
                writes(trial, kind)
                store(buffer.storage, trial._trial_id, buffer.take())

            samples.setdefault((kind, "kilotune"), []).append(timed(buffered))
            trial.storage = buffer.storage
            study.tell(trial, 0.0)
    if hasattr(storage, "engine"):
        storage.engine.dispose()
    return {key: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for key, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    import sqlalchemy

    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    dbname = f"bench_writes_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {dbname}")
    results = {}
    try:
        results["postgresql"] = measure(PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}", args.trials)
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = measure(f"sqlite:///{tmp}/writes.db", args.trials)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {dbname} WITH (FORCE)")
    print(f"median of {args.trials} trials; load {os.getloadavg()[0]:.2f}; optuna {optuna.__version__}\n")
    print("| storage | writes | Optuna, one call each: CPU / wall ms | kilotune, one `store`: CPU / wall ms |")
    print("| --- | --- | ---: | ---: |")
    counts = {"params": N_PARAMS, "reports": N_REPORTS, "user_attrs": N_ATTRS}
    for backend, by_key in results.items():
        for kind, n in counts.items():
            (oc, ow), (kc, kw) = by_key[(kind, "optuna")], by_key[(kind, "kilotune")]
            print(f"| {backend} | {n} {kind} | {1e3 * oc:.1f} / {1e3 * ow:.1f} | {1e3 * kc:.1f} / {1e3 * kw:.1f} |")


if __name__ == "__main__":
    main()
