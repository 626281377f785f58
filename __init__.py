"""kilotune: hyperparameter search for small-data image classification.

The repository root is this package (pyproject's package-dir): ``kilotune.models``,
``kilotune.subset``, ``kilotune.workers`` and ``kilotune.search`` are the top-level folders.
"""
