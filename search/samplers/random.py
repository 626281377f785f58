"""Random search: every parameter drawn uniformly from its range, whatever came before."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.samplers.base import Sampler, Seeded

if TYPE_CHECKING:
    import optuna


class RandomSearch(Sampler):
    name = "random"
    help = "random search"

    def make(self, settings: Seeded) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=settings.seed)
