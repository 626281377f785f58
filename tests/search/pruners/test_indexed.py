"""kilotune's pruners decide exactly as Optuna's own, on copies of the same study."""

from __future__ import annotations

import dataclasses
import random
import shutil

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from kilotune.search.optuna_internals import IndexedHyperbandPruner, IndexedMedianPruner, IndexedSuccessiveHalvingPruner
from kilotune.search.settings import StudySettings

EPOCHS = 27  # Hyperband: rungs 3, 9, 27 in 3 brackets


def settings(pruner: str) -> StudySettings:
    return StudySettings(dataset="d", dataset_checksum="-", subset_path="-", subset_checksum="-", epochs=EPOCHS, pruner=pruner)


def fill(study: optuna.Study, prune_at, rng: random.Random, n: int = 45) -> None:
    """Trials as a fleet leaves them: complete, pruned, failed, and still running mid-way."""
    for _ in range(n):
        trial, quality, fate = study.ask(), rng.random(), rng.random()
        last = EPOCHS if fate > 0.3 else rng.randint(1, EPOCHS - 1)
        for epoch in range(1, last + 1):
            trial.report(quality * epoch / EPOCHS + rng.gauss(0, 0.03), epoch)
            if prune_at(epoch) and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            if last == EPOCHS:
                study.tell(trial, quality)
            elif fate < 0.1:
                study.tell(trial, state=TrialState.FAIL)  # else left RUNNING, as a working fleet leaves it


def probe(study: optuna.Study, prune_at, seed: int, n: int = 25) -> list[tuple[int, int, bool]]:
    """Every prune decision for ``n`` new trials: (trial number, epoch, pruned)."""
    rng, decisions = random.Random(seed), []
    for _ in range(n):
        trial, quality = study.ask(), rng.random()
        for epoch in range(1, EPOCHS + 1):
            trial.report(quality * epoch / EPOCHS + rng.gauss(0, 0.03), epoch)
            if prune_at(epoch):
                pruned = trial.should_prune()
                decisions.append((trial.number, epoch, pruned))
                if pruned:
                    study.tell(trial, state=TrialState.PRUNED)
                    break
        else:
            study.tell(trial, quality)
    return decisions


INDEXED = {
    "hyperband": IndexedHyperbandPruner,
    "successive-halving": IndexedSuccessiveHalvingPruner,
    "median": IndexedMedianPruner,
}


def compare_on_copies(url: str, make_copy, pruner: str) -> None:
    """Fills a study at ``url``, copies it (``make_copy`` returns the copy's URL), and probes
    the original with Optuna's pruner and the copy with kilotune's."""
    study_settings = settings(pruner)
    sampler = optuna.samplers.RandomSampler(seed=0)
    original = RDBStorage(url)
    study = optuna.create_study(study_name="s", storage=original, direction="maximize", sampler=sampler,
                                pruner=study_settings.pruner_for())
    fill(study, study_settings.may_prune_at, random.Random(1))
    original.engine.dispose()
    copy_url = make_copy()  # the same study twice: Optuna's pruner decides in one, kilotune's in the other
    optuna_storage, kilotune_storage = RDBStorage(url), RDBStorage(copy_url)
    ours = study_settings.pruner_for(kilotune_storage)
    assert isinstance(ours, INDEXED[pruner])
    theirs = optuna.load_study(study_name="s", storage=optuna_storage, sampler=sampler, pruner=study_settings.pruner_for())
    mine = optuna.load_study(study_name="s", storage=kilotune_storage, sampler=sampler, pruner=ours)
    expected = probe(theirs, study_settings.may_prune_at, seed=2)
    assert probe(mine, study_settings.may_prune_at, seed=2) == expected
    assert any(pruned for *_, pruned in expected) and not all(pruned for *_, pruned in expected)
    # The rung values the rule wrote are the same too: the next trials would see the same study.
    assert [t.system_attrs for t in mine.get_trials()] == [t.system_attrs for t in theirs.get_trials()]
    optuna_storage.engine.dispose()
    kilotune_storage.engine.dispose()


@pytest.mark.parametrize("pruner", sorted(INDEXED))
def test_decisions_match_optuna_on_sqlite(tmp_path, pruner):
    path, copy_path = tmp_path / "a.db", tmp_path / "b.db"

    def make_copy() -> str:
        shutil.copy(path, copy_path)
        return f"sqlite:///{copy_path}"

    compare_on_copies(f"sqlite:///{path}", make_copy, pruner)


def test_decisions_match_optuna_on_postgresql(pg_server):
    url = pg_server()
    compare_on_copies(url, lambda: pg_server(template=url), "hyperband")


def test_automatic_resources_are_refused():
    with pytest.raises(ValueError, match="min_resource='auto' is not allowed"):
        IndexedSuccessiveHalvingPruner(RDBStorage("sqlite://"))
    with pytest.raises(ValueError, match="max_resource='auto' is not allowed"):
        IndexedHyperbandPruner(RDBStorage("sqlite://"), min_resource=3)


def test_other_storages_get_optunas_own_pruners():
    assert type(settings("hyperband").pruner_for(None)) is optuna.pruners.HyperbandPruner
    assert type(settings("median").pruner_for(optuna.storages.InMemoryStorage())) is optuna.pruners.MedianPruner


def sample_and_train(study: optuna.Study, prune_at, n: int) -> list[dict]:
    """``n`` trials of a small conditional space, each trained to its rung or the end."""
    sampled = []
    for _ in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", -3.0, 3.0)
        arch = trial.suggest_categorical("arch", ["a", "b"])
        y = trial.suggest_int("depth", 1, 8) if arch == "a" else trial.suggest_float("width", 0.1, 1.0, log=True)
        quality = 1.0 / (1.0 + (x - 1.0) ** 2) + 0.05 * y
        sampled.append(trial.params)
        for epoch in range(1, EPOCHS + 1):
            trial.report(quality * epoch / EPOCHS, epoch)
            if prune_at(epoch) and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, quality)
    return sampled


def test_tpe_samples_as_under_optunas_own_hyperband(tmp_path):
    """kilotune's Hyperband keeps one bracket study per bracket (Optuna builds one per suggest):
    TPE must still see the same trials, so both copies of a study sample the same params."""
    hyperband = settings("hyperband")
    path, copy_path = tmp_path / "a.db", tmp_path / "b.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{path}", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0), pruner=hyperband.pruner_for())
    sample_and_train(study, hyperband.may_prune_at, 2)  # fewer than TPE's start-up: it must see the new ones
    shutil.copy(path, copy_path)
    samplers = [dataclasses.replace(hyperband, seed=3).sampler_for() for _ in range(2)]
    theirs = optuna.load_study(study_name="s", storage=RDBStorage(f"sqlite:///{path}"), sampler=samplers[0], pruner=hyperband.pruner_for())
    kilotune_storage = RDBStorage(f"sqlite:///{copy_path}")
    mine = optuna.load_study(study_name="s", storage=kilotune_storage, sampler=samplers[1], pruner=hyperband.pruner_for(kilotune_storage))
    expected = sample_and_train(theirs, hyperband.may_prune_at, 15)
    assert sample_and_train(mine, hyperband.may_prune_at, 15) == expected
    assert len({round(p["x"], 6) for p in expected}) == 15, "every trial sampled anew"
