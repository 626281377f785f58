"""The ``kilotune`` command line (``kilotune.cli.main:main``, ``python -m kilotune``): the top layer,
which may import every other (docs/architecture.md); each subcommand's module declares its
arguments and imports the heavy modules (Keras, Optuna) in its handler.
"""
