"""A pruner a study can name: the Optuna pruner it makes, and the epochs at which it may stop a trial.

A worker asks the study's pruner only where it can decide (``may_prune_at``): each question costs
storage reads. On an RDB storage inside Optuna's tested range the pruner's checks read one indexed
query instead of every running trial (``on_storage``; the classes are in search/optuna_internals/pruners.py
with every other use of Optuna's internals). Optuna reads the other trials' values with
``study.get_trials()``, whose cached storage re-reads every unfinished trial with all its reports:
Hyperband's check took 19-22 ms in an idle study and 254-288 ms with 128 running trials, the
indexed one 15-16 and 26-27 ms (``bench/budget_claim.py``, v4 in docs/bench-storage.md).
``tests/search/test_pruners.py`` checks every decision against Optuna's own pruner on copies of
the same study, so a change in Optuna's rules or schema fails a test, not the search.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

REDUCTION_FACTOR = 3  # of the rung pruners: replayed against 2 and 4 by bench/rung_choice.py, best or within 1 point


class TrialLength(Protocol):
    """What a pruner reads of a study's settings (``search.settings.StudySettings``)."""

    epochs: int


class Pruner(ABC):
    """One pruner of ``PRUNERS``: stateless, so one instance serves every study."""

    name: ClassVar[str]  # what ``--pruner`` takes and the study records
    help: ClassVar[str]  # a few words for ``--pruner``'s help

    @abstractmethod
    def make(self, settings: TrialLength, storage: BaseStorage | None) -> optuna.pruners.BasePruner:
        """The Optuna pruner of a study with these settings; ``storage``: where the study lives
        (its indexed checks where it has some), None for Optuna's own."""

    @abstractmethod
    def may_prune_at(self, settings: TrialLength, epoch: int) -> bool:
        """Whether the pruner can stop a trial after this (1-based) epoch."""


class RungPruner(Pruner):
    """Successive halving's family: it decides only at its rungs, ``min_resource * REDUCTION_FACTOR**k``."""

    def min_resource(self, settings: TrialLength) -> int:
        """The first rung, at 1/9 of a trial (epoch 1 of 9). Replayed on recorded 9-epoch curves at
        18-63 epochs a search (bench/rung_choice.py), halving from there kept the best or nearly the
        best final value: a weak rung (Spearman 0.50-0.65 with the final value) that screens twice
        the configurations of one at epoch 3 (0.75-0.84). Every halving beat no pruning by 2-4
        points. A fraction, as the learning-rate schedules scale with the epochs."""
        return max(1, round(settings.epochs / 9))

    def rungs(self, settings: TrialLength) -> list[int]:
        """The epochs at which the pruner decides: the first rung times powers of the reduction factor."""
        rungs = [self.min_resource(settings)]
        while rungs[-1] * REDUCTION_FACTOR <= settings.epochs:
            rungs.append(rungs[-1] * REDUCTION_FACTOR)
        return rungs

    def may_prune_at(self, settings: TrialLength, epoch: int) -> bool:
        return epoch in self.rungs(settings)


def on_storage(storage: BaseStorage | None, plain: type, indexed: type, **kwargs: Any) -> optuna.pruners.BasePruner:
    """``indexed(rdb, **kwargs)`` on an RDB storage inside Optuna's tested range, else Optuna's ``plain(**kwargs)``."""
    from kilotune.search.optuna_internals import rdb_of

    rdb = rdb_of(storage) if storage is not None else None
    return plain(**kwargs) if rdb is None else indexed(rdb, **kwargs)
