"""Hyperband (the default): successive halving in brackets that start at each rung."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.pruners.base import REDUCTION_FACTOR, RungPruner, TrialLength, on_storage

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage


class Hyperband(RungPruner):
    name = "hyperband"
    help = "Hyperband's brackets of successive halving"

    def make(self, settings: TrialLength, storage: BaseStorage | None) -> optuna.pruners.BasePruner:
        import optuna

        from kilotune.search.optuna_internals import IndexedHyperbandPruner

        return on_storage(storage, optuna.pruners.HyperbandPruner, IndexedHyperbandPruner, min_resource=self.min_resource(settings),
                          max_resource=settings.epochs, reduction_factor=REDUCTION_FACTOR)  # fmt: skip
