"""TPE (the default), reading the trials it samples from once per trial.

With ``constant_liar=True``, Optuna's TPE sampling bypasses the study's per-ask cache and
re-reads every trial from the storage for each parameter group (kilotune's conditional space has
~9) and each independently sampled param, so that the liar sees the trials running now. Through
Optuna's cached storage each read loads every unfinished trial with all its reports, user and
system attributes: with 64 workers, ~10 reads of 128 running trials a take.

``SnapshotTPESampler`` (search/optuna_internals/tpe.py, with every other use of Optuna's internals)
reads once per trial, at its first sample, and hands Optuna's TPE code a study whose (private)
trial reads answer from that snapshot. On an RDB storage the snapshot holds only what TPE reads:
params, values, system attributes (the liar's relative params) and a pruned trial's last report,
none of the other reports a worker stores every epoch. Finished (COMPLETE, PRUNED) trials are
read once per worker, since a finished trial never changes; running ones anew each time. The liar
then sees the trials running when this trial began sampling, not those that start during its
sampling (well under a second), which do not see it either. ``tests/search/test_samplers.py``
checks that it samples what Optuna's TPE samples, on SQLite, PostgreSQL and in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kilotune.search.samplers.base import Sampler, Seeded

if TYPE_CHECKING:
    import optuna

# Small budgets (tens of trials), chosen in docs/search-efficiency.md ("Small budgets"):
STARTUP_TRIALS = 5  # against Optuna's default 10: better in 5 of 6 cells (search_budget.py kilotune-startup10)


class TPE(Sampler):
    name = "tpe"
    help = "multivariate TPE over the conditional space"

    def make(self, settings: Seeded) -> optuna.samplers.BaseSampler:
        """group=True keeps multivariate TPE exact over the conditional (define-by-run) space;
        constant_liar stops parallel workers from sampling the same point. TPE models from the
        6th finished (complete or pruned) trial, the warm-start presets among the first 5: with
        Optuna's 10, runs of 8-13 trials had 0-2 trials sampled by TPE (docs/search-efficiency.md).
        TPE sees every trial, Hyperband's brackets included (optuna 5.1's TPE reads the study's
        unfiltered trials, which brackets do not filter). ``SnapshotTPESampler`` inside Optuna's
        tested range, Optuna's own ``TPESampler`` outside it."""
        import optuna

        from kilotune.search.optuna_internals import SnapshotTPESampler, fast_paths

        kind = SnapshotTPESampler if fast_paths() else optuna.samplers.TPESampler
        return kind(multivariate=True, group=True, constant_liar=True, n_startup_trials=STARTUP_TRIALS, seed=settings.seed)
