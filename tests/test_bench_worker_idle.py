"""bench/worker_idle.py: each worker's training time against a finished study's span."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.trial import TrialState

from kilotune.search.winner import StudyTrials
from tests.conftest import REPO, load_script

bench = load_script(REPO / "bench" / "worker_idle.py")
T0 = datetime.datetime(2026, 12, 6, 12, 0, 0)


def trial(number: int, worker: str, start: float, end: float, **attrs) -> optuna.trial.FrozenTrial:
    """A complete trial that trained from ``start`` to ``end`` seconds after T0 on ``worker``, having
    waited 3 s for it to be handed out; its recorded start is earlier (a worker takes its next
    trial while one trains)."""
    return optuna.trial.FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=0.5, values=None,
        datetime_start=T0, datetime_complete=T0 + datetime.timedelta(seconds=end), params={}, distributions={},
        user_attrs={"worker": worker, "time_split": {"wall": end - start + 3.0, "train": end - start, "storage": 3.0}, **attrs},
        system_attrs={}, intermediate_values={}, trial_id=number)


def test_a_worker_is_idle_for_the_span_less_its_trials_and_early_folds_are_counted():
    search = [trial(0, "a", 0, 10), trial(1, "b", 0, 8), trial(2, "a", 10, 20)]
    folds = [trial(0, "b", 12, 20, cv_of=0, fold=1), trial(1, "b", 20, 26, cv_of=0, fold=2)]
    found = bench.idle(StudyTrials(search, folds))
    assert found.span == pytest.approx(26)
    assert found.trained == pytest.approx({"a": 20, "b": 22})
    assert (found.early_folds, found.folds) == (1, 2), "fold 1 started at 12 s, before the last search trial's end at 20 s"


def test_a_study_with_no_timed_trial_is_a_clear_error():
    untimed = trial(0, "a", 0, 10)
    del untimed.user_attrs["time_split"]
    with pytest.raises(ValueError, match="time_split"):
        bench.idle(StudyTrials([untimed], []))
