"""kilotune: hyperparameter search for small-data image classification.

The repository root is this package (pyproject's package-dir): ``kilotune.models``,
``kilotune.subset``, ``kilotune.training``, ``kilotune.search``, ``kilotune.workers`` and
``kilotune.cli`` are the top-level folders, a layer each (docs/architecture.md).

The Python API (``kilotune.run``, ``best``, ``retrain``, ``report``, ``dataset_from_arrays``...)
lives in ``kilotune.workers.api`` and is imported on first use, so ``import kilotune`` (and
``kilotune --help``) loads neither Keras nor Optuna.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkersFailed", "best", "dataset_from_arrays", "load_dataset", "load_predictor", "report", "retrain", "run", "save_dataset"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kilotune.models.quiet import quiet_tensorflow

        quiet_tensorflow()  # before the API's imports can load TensorFlow
        from kilotune.workers import api

        return getattr(api, name)
    raise AttributeError(f"module 'kilotune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
