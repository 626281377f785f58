"""Successive halving (ASHA): a trial goes on past a rung if it is in the top third there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.pruners.base import REDUCTION_FACTOR, RungPruner, TrialLength, on_storage

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage


class SuccessiveHalving(RungPruner):
    name = "successive-halving"
    help = "asynchronous successive halving"

    def make(self, settings: TrialLength, storage: BaseStorage | None) -> optuna.pruners.BasePruner:
        import optuna

        from kilotune.search.optuna_internals import IndexedSuccessiveHalvingPruner

        return on_storage(storage, optuna.pruners.SuccessiveHalvingPruner, IndexedSuccessiveHalvingPruner,
                          min_resource=self.min_resource(settings), reduction_factor=REDUCTION_FACTOR)  # fmt: skip
