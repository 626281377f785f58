"""Where each pruner may decide (its rungs, its warm-up), computed once and the same as Optuna's own pruners decide."""

import optuna
import pytest

from kilotune.search.pruners import PRUNERS
from tests.search.test_settings import settings


def test_prune_checks_only_where_the_pruner_can_decide():
    assert [e for e in range(1, 31) if settings(epochs=30).may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 41) if settings(epochs=40, pruner="hyperband").may_prune_at(e)] == [4, 12, 36]
    assert [e for e in range(1, 31) if settings(epochs=30, pruner="successive-halving").may_prune_at(e)] == [3, 9, 27]
    assert [e for e in range(1, 11) if settings(epochs=10, pruner="median").may_prune_at(e)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert not any(settings(epochs=10, pruner="none").may_prune_at(e) for e in range(1, 11))


@pytest.mark.parametrize("pruner", ["hyperband", "successive-halving"])
def test_rung_pruners_decide_only_at_their_rungs(pruner):
    """The rung rule above matches what Optuna's pruners actually do: a trial that reports
    worse than every other at each epoch is pruned at a rung epoch, never in between."""
    study = optuna.create_study(direction="maximize", pruner=settings(epochs=30, pruner=pruner).pruner_for(),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned_at = []
    for i in range(60):
        trial = study.ask()
        for epoch in range(1, 31):
            trial.report(float(i % 7) / 10 + epoch / 100, epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(i % 7))
    assert pruned_at and set(pruned_at) <= {3, 9, 27}


def test_small_budgets_get_an_early_first_rung_and_a_short_tpe_start_up():
    """The rungs are at 1/9 of a trial times powers of 3, and TPE models from the 6th trial (see sampler_for)."""
    assert [e for e in range(1, 10) if settings(epochs=9).may_prune_at(e)] == [1, 3, 9]
    assert [e for e in range(1, 16) if settings(epochs=15).may_prune_at(e)] == [2, 6]
    for epochs, brackets in ((9, 3), (15, 2), (2, 1)):  # Hyperband: a bracket starts at each rung
        hyperband = settings(epochs=epochs).pruner_for()
        hyperband._try_initialization(None)  # with the resources given it reads no study
        assert hyperband._n_brackets == brackets == len(PRUNERS["hyperband"].rungs(settings(epochs=epochs)))
    assert settings(epochs=9).pruner_for()._min_resource == 1
    for pruner in ("hyperband", "median", "none"):
        assert settings(epochs=30, pruner=pruner).sampler_for()._n_startup_trials == 5
