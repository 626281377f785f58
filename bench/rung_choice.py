"""Which rungs and reduction factor pay at small budgets, replayed on recorded learning curves.

    python bench/rung_choice.py      # seconds; reads bench/results/search_efficiency*/run-*.json

No training: every configuration that search_efficiency.py trained to its full 9 epochs
(Fashion-MNIST, max-sum subset, 200 validation images; kilotune and random-search runs,
deduplicated by config) is a pool of real curves. For each epoch it prints the rank correlation
of that epoch's accuracy with the final value (the mean of the last 3 epochs, the study's
objective), and the epoch-to-epoch jitter of one reading. Then it replays successive halving
(synchronous: at each rung the top 1/eta go on) for every first rung and reduction factor, and
plain random search, at equal total epochs: drawing configurations from the pool without
replacement, many times, and reports the mean final value of the configuration each picks
(the best survivor by its final value) and the chance it picks the pool draw's best.

The last rows replay kilotune's rule that no trial is judged while its learning rate still warms
up (``TrainConfig.peak_epoch``: a one-cycle schedule peaks at 30% of its epochs, a warm-up at its
end): at a rung, a configuration not yet at its peak goes on unjudged. They are drawn at the same
number of configurations as halving from that rung, and their mean epochs spent say what the
rule costs.

Caveats: 33 curves of 9 epochs; kilotune's full trials had survived its pruner, so the pool
leans to good configurations; a budget is capped by the pool (a draw takes at most all 33).
"""

from __future__ import annotations

import argparse
import glob
import json
import math

import numpy as np
from scipy.stats import spearmanr

from kilotune.training.config import TrainConfig

LAST = 3  # the objective: mean validation accuracy of the last 3 epochs


def load_pool(pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """The recorded full-length curves, and each configuration's learning-rate peak epoch."""
    curves, peaks = {}, {}
    for path in sorted(glob.glob(pattern)):
        run = json.load(open(path))
        if run["method"] == "kerastuner":  # its full-length curves resume from reloaded weights
            continue
        for trial in run["trials"]:
            if trial.get("full") and len(trial["val_accuracy"]) == run["epochs_per_trial"]:
                key = json.dumps(trial["config"], sort_keys=True)
                curves[key] = trial["val_accuracy"]
                peaks[key] = TrainConfig.from_dict(trial["config"]).peak_epoch
    return np.array(list(curves.values())), np.array(list(peaks.values()))


def rungs(first: int, eta: int, epochs: int) -> list[int]:
    out, rung = [], first
    while rung < epochs:
        out.append(rung)
        rung *= eta
    return out + [epochs]


def halving_cost(n: int, first: int, eta: int, epochs: int) -> int:
    """Epochs that synchronous successive halving spends on ``n`` configurations."""
    cost, alive, done = 0, n, 0
    for rung in rungs(first, eta, epochs):
        cost += alive * (rung - done)
        alive, done = max(1, math.ceil(alive / eta)), rung
    return cost


def pick(curves: np.ndarray, first: int | None, eta: int, peaks: np.ndarray | None = None) -> tuple[int, int]:
    """Index of the configuration successive halving (or, with first=None, no pruning) keeps, and
    the epochs it spent. With ``peaks``, a configuration whose learning rate peaks after a rung
    goes on unjudged there, and the others compete for their share."""
    epochs, alive = curves.shape[1], np.arange(len(curves))
    spent, done = 0, 0
    if first is not None:
        for rung in rungs(first, eta, epochs)[:-1]:
            spent += len(alive) * (rung - done)
            done = rung
            waiting = peaks[alive] > rung if peaks is not None else np.zeros(len(alive), bool)
            exempt, judged = alive[waiting], alive[~waiting]
            keep = max(1, math.ceil(len(judged) / eta)) if len(judged) else 0
            alive = np.concatenate([exempt, judged[np.argsort(-curves[judged, rung - 1], kind="stable")[:keep]]])
    spent += len(alive) * (epochs - done)
    final = curves[alive, -LAST:].mean(1)
    return int(alive[np.argmax(final)]), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="bench/results/search_efficiency*/run-*.json")
    parser.add_argument("--budgets", type=int, nargs="+", default=[27, 45, 63], help="total epochs a search")
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args()
    pool, peaks = load_pool(args.runs)
    epochs = pool.shape[1]
    final = pool[:, -LAST:].mean(1)
    print(f"{len(pool)} configurations with {epochs}-epoch curves; final = mean of the last {LAST} epochs\n")
    print("| epoch | Spearman with final | mean abs. change from the epoch before |\n| ---: | ---: | ---: |")
    for e in range(1, epochs + 1):
        jitter = np.abs(pool[:, e - 1] - pool[:, e - 2]).mean() if e > 1 else float("nan")
        print(f"| {e} | {spearmanr(pool[:, e - 1], final).statistic:.2f} | {jitter:.3f} |")
    print(f"\nstd. dev. of the last {LAST} epochs around their mean, per config: {pool[:, -LAST:].std(1, ddof=1).mean():.3f}\n")

    print(f"learning-rate peak epoch of the {len(pool)} configurations: " + ", ".join(
        f"{count} at {peak}" for peak, count in zip(*np.unique(peaks, return_counts=True))) + "\n")

    policies = [("no pruning", None, 1, False)] + [(f"halving from epoch {r}, eta {eta}", r, eta, False) for eta in (2, 3, 4) for r in (1, 2, 3, 4)]
    policies += [(f"halving from epoch {r}, eta 3, none judged before its peak", r, 3, True) for r in (1, 2, 3)]
    print("| policy | " + " | ".join(f"{b} epochs: configs, epochs spent, mean final, P(best)" for b in args.budgets) + " |")
    print("| --- |" + " --- |" * len(args.budgets))
    rng = np.random.default_rng(0)
    for name, first, eta, after_peak in policies:
        cells = []
        for budget in args.budgets:
            cost = (lambda n: n * epochs) if first is None else (lambda n: halving_cost(n, first, eta, epochs))
            n = max([n for n in range(1, len(pool) + 1) if cost(n) <= budget], default=0)
            if n == 0:
                cells.append("-")
                continue
            picked, best, spent = [], [], []
            for _ in range(args.draws):
                draw = rng.choice(len(pool), n, replace=False)
                index, epochs_spent = pick(pool[draw], first, eta, peaks[draw] if after_peak else None)
                chosen = draw[index]
                picked.append(final[chosen])
                best.append(final[chosen] == final[draw].max())
                spent.append(epochs_spent)
            cells.append(f"{n}, {np.mean(spent):.0f}, {np.mean(picked):.4f}, {np.mean(best):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
