"""The samplers a study may name (``--sampler``, recorded as ``sampler``): one file each, registered here.

Adding one is a file beside these (a ``Sampler`` subclass: its name, help line and the Optuna
sampler it makes) and its line in ``SAMPLERS``.
"""

from __future__ import annotations

from kilotune.search.samplers.base import Sampler
from kilotune.search.samplers.random import RandomSearch
from kilotune.search.samplers.tpe import TPE

# By name, in the order ``--sampler``'s help lists them (its default: ``StudySettings.sampler``).
SAMPLERS: dict[str, Sampler] = {s.name: s for s in (TPE(), RandomSearch())}
