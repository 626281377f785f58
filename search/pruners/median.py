"""The median rule: after a warm-up, a trial below the median of the complete trials at that epoch stops."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.pruners.base import Pruner, TrialLength, on_storage

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

STARTUP_TRIALS = 5  # complete trials before it prunes at all


class Median(Pruner):
    name = "median"
    help = "below the median of the complete trials, after a fifth of the epochs"

    def warmup(self, settings: TrialLength) -> int:
        """Epochs every trial trains before the rule applies: a fifth of them."""
        return max(1, settings.epochs // 5)

    def make(self, settings: TrialLength, storage: BaseStorage | None) -> optuna.pruners.BasePruner:
        import optuna

        from kilotune.search.optuna_internals import IndexedMedianPruner

        return on_storage(storage, optuna.pruners.MedianPruner, IndexedMedianPruner, n_startup_trials=STARTUP_TRIALS,
                          n_warmup_steps=self.warmup(settings))  # fmt: skip

    def may_prune_at(self, settings: TrialLength, epoch: int) -> bool:
        return epoch > self.warmup(settings)
