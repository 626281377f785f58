"""kilotune's TPE samples what Optuna's samples, reading the study once a trial and no running trial's reports."""

from __future__ import annotations

import random
import secrets

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

import kilotune.search.optuna_internals.tpe
from kilotune.search.optuna_internals import SnapshotTPESampler
from kilotune.search.space import SearchSpace
from kilotune.search.settings import StudySettings

EPOCHS = 9
SETTINGS = StudySettings(dataset="d", dataset_checksum="-", subset_path="-", subset_checksum="-",
                         epochs=EPOCHS, pruner="median", seed=5)


def objective(params: dict) -> float:
    """Any deterministic function of the params, so both studies see the same values."""
    return random.Random(str(sorted(params.items()))).random()


def take_and_run(study: optuna.Study, n: int, keep_running: int, prune_every: int = 5) -> list[dict]:
    """``n`` takes of kilotune's whole space, each reporting every epoch it runs. Every
    ``keep_running``-th trial is left RUNNING, as a fleet's trials are while others take (the
    liar reads them); every ``prune_every``-th of the rest is PRUNED at an epoch of its own
    (TPE ranks pruned trials by their last report); the others COMPLETE."""
    space, sampled = SearchSpace.from_spec(None), []
    for i in range(n):
        trial = study.ask()
        space.suggest(trial, EPOCHS)
        sampled.append(trial.params)
        pruned = i % keep_running != 0 and i % prune_every == 0
        for epoch in range(1, 1 + (1 + i % EPOCHS if pruned else EPOCHS)):
            trial.report(objective(trial.params) * epoch / EPOCHS, epoch)
        if i % keep_running == 0:
            continue
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, objective(trial.params))
    return sampled


def tpe_like_kilotunes(sampler_class: type[optuna.samplers.TPESampler]) -> optuna.samplers.TPESampler:
    kilotunes = SETTINGS.sampler_for()
    assert isinstance(kilotunes, SnapshotTPESampler)
    return sampler_class(multivariate=True, group=True, constant_liar=True,
                         n_startup_trials=kilotunes._n_startup_trials, seed=SETTINGS.seed)


@pytest.fixture(params=["sqlite", "postgresql", "inmemory"])
def storage_url(request, tmp_path):
    """A storage URL, or None for Optuna's in-memory storage."""
    return {"sqlite": lambda: f"sqlite:///{tmp_path / 's.db'}",
            "postgresql": lambda: request.getfixturevalue("pg_url"),
            "inmemory": lambda: None}[request.param]()


def sample_with(storage_url: str | None, sampler_class: type[optuna.samplers.TPESampler], prune_every: int) -> list[dict]:
    """A study filled past TPE's start-up, then 12 takes with ``sampler_class``."""
    storage = optuna.storages.InMemoryStorage() if storage_url is None else RDBStorage(storage_url)
    name = f"s{secrets.token_hex(4)}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    take_and_run(study, 16, keep_running=4, prune_every=prune_every)  # 12 finished (TPE starts after 10), 4 running
    study.sampler = tpe_like_kilotunes(sampler_class)
    return take_and_run(study, 12, keep_running=2, prune_every=prune_every)


@pytest.mark.parametrize("prune_every", [5, 1])  # 1: TPE's best trials are pruned ones, ranked by their last report
def test_samples_as_optunas_tpe(storage_url, prune_every):
    expected = sample_with(storage_url, optuna.samplers.TPESampler, prune_every)
    assert sample_with(storage_url, SnapshotTPESampler, prune_every) == expected
    assert len({tuple(sorted(p.items())) for p in expected}) == len(expected), "every trial sampled anew"


def test_samples_as_optunas_tpe_reading_in_chunks(tmp_path, monkeypatch):
    """A worker joining a big study reads its trials a chunk a query (SQLite bounds a query's variables)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    expected = sample_with(url, optuna.samplers.TPESampler, prune_every=3)
    monkeypatch.setattr(kilotune.search.optuna_internals.tpe, "READ_CHUNK", 4)
    assert sample_with(url, SnapshotTPESampler, prune_every=3) == expected


def test_sampling_reads_no_running_trials_reports(tmp_path, monkeypatch):
    """Optuna's liar re-reads every running trial's reports per parameter group; kilotune's
    reads only the last report of trials pruned since its last take."""
    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    take_and_run(study, 16, keep_running=4)
    sampling, statements = [], []  # statements run while the sampler samples
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                            lambda conn, cursor, statement, *rest: sampling and statements.append(statement))
    reads = {}
    for sampler_class in (optuna.samplers.TPESampler, SnapshotTPESampler):
        study.sampler = tpe_like_kilotunes(sampler_class)
        for name in ("infer_relative_search_space", "sample_relative", "sample_independent"):
            def while_sampling(*args, method=getattr(study.sampler, name), **kwargs):
                sampling.append(1)
                try:
                    return method(*args, **kwargs)
                finally:
                    sampling.pop()
            monkeypatch.setattr(study.sampler, name, while_sampling)
        take_and_run(study, 1, keep_running=1)  # the first take reads every finished trial
        statements.clear()
        take_and_run(study, 1, keep_running=1)  # 5 running trials, none finished since
        reads[sampler_class] = sum("FROM trial_intermediate_values" in s for s in statements)
    assert reads[optuna.samplers.TPESampler] > 3
    assert reads[SnapshotTPESampler] == 0
