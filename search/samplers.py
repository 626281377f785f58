"""Optuna's TPE sampler, reading the trials it samples from once per trial (inside Optuna's tested
range; the class lives in search/optuna_internals.py, with every other use of Optuna's internals).

With ``constant_liar=True``, Optuna's TPE sampling bypasses the study's per-ask cache and
re-reads every trial from the storage for each parameter group (kilotune's conditional space has
~9) and each independently sampled param, so that the liar sees the trials running now. Through
Optuna's cached storage each read loads every unfinished trial with all its reports, user and
system attributes: with 64 workers, ~10 reads of 128 running trials a take.

``SnapshotTPESampler`` reads once per trial, at its first sample, and hands Optuna's TPE code a
study whose (private) trial reads answer from that snapshot. On an RDB storage the snapshot holds
only what TPE reads (``optuna_internals._read_for_tpe``): params, values, system attributes (the liar's relative
params) and a pruned trial's last report, none of the other reports a worker stores every
epoch. Finished (COMPLETE, PRUNED) trials are read once per worker, since a finished trial never
changes; running ones anew each time. The liar then sees the trials running when this trial
began sampling, not those that start during its sampling (well under a second), which do not
see it either. ``tests/search/test_samplers.py`` checks that it samples what Optuna's TPE
samples, on SQLite, PostgreSQL and in memory.
"""

from __future__ import annotations

from typing import Any

import optuna

from kilotune.search.optuna_internals import SnapshotTPESampler, fast_paths

__all__ = ["SnapshotTPESampler", "tpe_sampler"]


def tpe_sampler(**kwargs: Any) -> optuna.samplers.TPESampler:
    """``SnapshotTPESampler`` inside Optuna's tested range, Optuna's own ``TPESampler`` outside it.

    Args:
        **kwargs: ``optuna.samplers.TPESampler``'s arguments.
    """
    return SnapshotTPESampler(**kwargs) if fast_paths() else optuna.samplers.TPESampler(**kwargs)
