"""Optuna's pruners with a prune check whose cost does not grow with the number of running trials
(inside Optuna's tested range; the classes live in search/optuna_internals.py, with every other
use of Optuna's internals).

Optuna's rules compare a trial with what the other trials recorded: successive halving (and
Hyperband, which runs it per bracket) with their values at a rung (``completed_rung_<k>`` system
attributes), the median rule with complete trials' values at a step. Optuna reads them with
``study.get_trials()``, and its cached storage re-reads every unfinished trial with all its
reports on every call: Hyperband's check took 19-22 ms in an idle study and 254-288 ms with 128
running trials, where kilotune's took 15-16 and 26-27 ms (``bench/budget_claim.py``, v4 in
docs/bench-storage.md).

The classes here keep Optuna's rules and their code: each hands the rule a study view
whose ``get_trials`` answers with just those values, from one indexed query on Optuna's schema,
and the trial with its own rung values from the same query (Optuna's trial reads all its system
attributes with a query of its own: v8 in docs/bench-storage.md).
``tests/search/test_pruners.py`` checks every decision against Optuna's own pruner on copies of
the same study, so a change in Optuna's rules or schema fails a test, not the search.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage

from kilotune.search.optuna_internals import (
    IndexedHyperbandPruner,
    IndexedMedianPruner,
    IndexedSuccessiveHalvingPruner,
    rdb_of,
)

__all__ = ["IndexedHyperbandPruner", "IndexedMedianPruner", "IndexedSuccessiveHalvingPruner", "pruner"]
_INDEXED: dict[type, type] = {
    optuna.pruners.HyperbandPruner: IndexedHyperbandPruner,
    optuna.pruners.SuccessiveHalvingPruner: IndexedSuccessiveHalvingPruner,
    optuna.pruners.MedianPruner: IndexedMedianPruner,
}


def pruner(optuna_pruner: type, storage: BaseStorage | None, **kwargs: Any) -> optuna.pruners.BasePruner:
    """Optuna's ``optuna_pruner``; its indexed kind on an RDB storage inside Optuna's tested range.

    Args:
        optuna_pruner: ``optuna.pruners.HyperbandPruner``, ``SuccessiveHalvingPruner`` or ``MedianPruner``.
        storage: The storage the study lives in; None: Optuna's own pruner.
        **kwargs: The pruner's arguments.
    """
    rdb = rdb_of(storage) if storage is not None else None
    if rdb is None:
        return optuna_pruner(**kwargs)
    return _INDEXED[optuna_pruner](rdb, **kwargs)
