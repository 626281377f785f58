"""No pruning: every trial trains every epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.pruners.base import Pruner, TrialLength

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage


class NoPruning(Pruner):
    name = "none"
    help = "no pruning"

    def make(self, settings: TrialLength, storage: BaseStorage | None) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()

    def may_prune_at(self, settings: TrialLength, epoch: int) -> bool:
        return False
