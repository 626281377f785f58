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

LAST = 3  # the objective: mean validation accuracy of the last 3 epochs


def load_pool(pattern: str) -> np.ndarray:
    curves = {}
    for path in sorted(glob.glob(pattern)):
        run = json.load(open(path))
        if run["method"] == "kerastuner":  # its full-length curves resume from reloaded weights
            continue
        for trial in run["trials"]:
            if trial.get("full") and len(trial["val_accuracy"]) == run["epochs_per_trial"]:
                curves[json.dumps(trial["config"], sort_keys=True)] = trial["val_accuracy"]
    return np.array(list(curves.values()))


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


def pick(curves: np.ndarray, first: int | None, eta: int) -> int:
    """Index of the configuration successive halving (or, with first=None, no pruning) keeps."""
    epochs, alive = curves.shape[1], np.arange(len(curves))
    if first is not None:
        for rung in rungs(first, eta, epochs)[:-1]:
            keep = max(1, math.ceil(len(alive) / eta))
            alive = alive[np.argsort(-curves[alive, rung - 1], kind="stable")[:keep]]
    final = curves[alive, -LAST:].mean(1)
    return int(alive[np.argmax(final)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="bench/results/search_efficiency*/run-*.json")
    parser.add_argument("--budgets", type=int, nargs="+", default=[27, 45, 63], help="total epochs a search")
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args()
    pool = load_pool(args.runs)
    epochs = pool.shape[1]
    final = pool[:, -LAST:].mean(1)
    print(f"{len(pool)} configurations with {epochs}-epoch curves; final = mean of the last {LAST} epochs\n")
    print("| epoch | Spearman with final | mean abs. change from the epoch before |\n| ---: | ---: | ---: |")
    for e in range(1, epochs + 1):
        jitter = np.abs(pool[:, e - 1] - pool[:, e - 2]).mean() if e > 1 else float("nan")
        print(f"| {e} | {spearmanr(pool[:, e - 1], final).statistic:.2f} | {jitter:.3f} |")
    print(f"\nstd. dev. of the last {LAST} epochs around their mean, per config: {pool[:, -LAST:].std(1, ddof=1).mean():.3f}\n")

    policies = [("no pruning", None, 1)] + [(f"halving from epoch {r}, eta {eta}", r, eta) for eta in (2, 3, 4) for r in (1, 2, 3, 4)]
    print("| policy | " + " | ".join(f"{b} epochs: configs, mean final, P(best)" for b in args.budgets) + " |")
    print("| --- |" + " --- |" * len(args.budgets))
    rng = np.random.default_rng(0)
    for name, first, eta in policies:
        cells = []
        for budget in args.budgets:
            cost = (lambda n: n * epochs) if first is None else (lambda n: halving_cost(n, first, eta, epochs))
            n = max([n for n in range(1, len(pool) + 1) if cost(n) <= budget], default=0)
            if n == 0:
                cells.append("-")
                continue
            picked, best = [], []
            for _ in range(args.draws):
                draw = rng.choice(len(pool), n, replace=False)
                chosen = draw[pick(pool[draw], first, eta)]
                picked.append(final[chosen])
                best.append(final[chosen] == final[draw].max())
            cells.append(f"{n}, {np.mean(picked):.4f}, {np.mean(best):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
