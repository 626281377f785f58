"""The pruners a study may name (``--pruner``, recorded as ``pruner``): one file each, registered here.

Adding one is a file beside these (a ``Pruner`` subclass: its name, help line, the Optuna pruner
it makes and the epochs it may prune at) and its line in ``PRUNERS`` (docs/architecture.md).
"""

from __future__ import annotations

from kilotune.search.pruners.base import Pruner
from kilotune.search.pruners.hyperband import Hyperband
from kilotune.search.pruners.median import Median
from kilotune.search.pruners.none import NoPruning
from kilotune.search.pruners.successive_halving import SuccessiveHalving

# By name, in the order ``--pruner``'s help lists them (its default: ``StudySettings.pruner``).
PRUNERS: dict[str, Pruner] = {p.name: p for p in (Hyperband(), SuccessiveHalving(), Median(), NoPruning())}
