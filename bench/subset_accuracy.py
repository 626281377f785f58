"""Subset accuracy: held-out accuracy of one fixed config trained on each selection method's
1000 images, the measurement the default subset method (``subset.features.DEFAULT_METHOD``)
is chosen by.

    nice -n 10 python bench/subset_accuracy.py --dataset fashion-mnist --out bench/results/subset_accuracy.json

Builds every method's subset with the product's ``build_subset`` (100 per class; the feature
extractor is the cached one, trained on first use), scores every subset's objectives on the
same features, then runs ``compare_subsets`` (what ``kilotune subset compare`` runs): the
compare config (``workers.compare.COMPARE_CONFIG``) trained on each subset with seeds
0..N-1, scored on held-out training images in none of the subsets. The test set is not used.
Prints a markdown table, each method's difference to the best with its standard error, and
writes everything as JSON (rewritten after every training run, so a stopped run keeps its runs).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from kilotune.subset.datasets import load_dataset  # noqa: E402
from kilotune.subset.features import build_subset, ensure_extractor, extract_features, load_extractor  # noqa: E402
from kilotune.subset.selection import objectives  # noqa: E402
from kilotune.subset.subsetfile import load_subset  # noqa: E402
from kilotune.workers.compare import COMPARE_CONFIG, compare_subsets  # noqa: E402

# (label, method, params, selection seed): two random draws show the spread between draws.
RUNS = (
    ("random (seed 0)", "random", {}, 0),
    ("random (seed 1)", "random", {}, 1),
    ("reference: random-restarts 10k", "random-restarts", {"draws": 10_000}, 0),
    ("max-sum", "max-sum", {}, 0),
    ("representative", "representative", {}, 0),
    ("k-center", "k-center", {}, 0),
)
# Cheapest first: random needs no feature extractor (minutes of training); the others by the
# CPU time of their selection in docs/subset.md's quality table.
COST_ORDER = ("random", "k-center", "max-sum", "random-restarts", "representative")
NOISE_SE = 2.0  # Differences under this many standard errors are taken as noise.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per subset (default: %(default)s)")
    parser.add_argument("--holdout", type=int, default=2000, help="held-out training images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help="override the compare config's epochs")
    parser.add_argument("--only", nargs="*", help="only these methods (e.g. random max-sum)")
    parser.add_argument("--subsets-dir", default="runs/subset_accuracy", help="where the subset files go; existing ones are reused")
    parser.add_argument("--out", default="bench/results/subset_accuracy.json")
    args = parser.parse_args()

    started = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir)
    runs = [r for r in RUNS if not args.only or r[1] in args.only]
    subsets_dir = Path(args.subsets_dir)
    extractor = load_extractor(ensure_extractor(dataset))
    features = extract_features(extractor, dataset.x_train)
    subsets, scores = [], {}
    for label, method, params, seed in runs:
        path = subsets_dir / f"{dataset.name}-{method}-{args.per_class}pc-seed{seed}.json"
        if not _reusable(path, dataset, method, params, seed, args.per_class):
            build_subset(dataset, method, path, per_class=args.per_class, seed=seed, **params)
        subsets.append(load_subset(path, dataset))
        # Every method scored on the same features, random too (its file records none).
        scores[str(path)] = objectives(features, dataset.y_train, subsets[-1].indices)["total"]
        print(f"  {label}: {path} mean nearest {scores[str(path)]['mean_nearest']:.4f}", flush=True)

    config = COMPARE_CONFIG if args.epochs is None else COMPARE_CONFIG.replace(epochs=args.epochs)
    result = {
        "dataset": dataset.name,
        "per_class": args.per_class,
        "seeds": args.seeds,
        "holdout": args.holdout,
        "config": config.to_dict(),
        "extractor": {k: extractor.metadata.get(k) for k in ("arch", "width", "epochs", "test_accuracy")},
        "machine": {"processor": _cpu_model(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/subset_accuracy.py " + " ".join(sys.argv[1:]),
        "runs": [],
        "results": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_run(run: dict) -> None:
        result["runs"].append(run)
        _write(out, result)
        print(f"  {Path(run['subset']).name} seed {run['seed']}: {run['accuracy']:.4f} ({run['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)

    print(f"training {config.arch} width {config.width}, {config.epochs} epochs, seeds 0..{args.seeds - 1}, {args.holdout} held-out images", flush=True)
    rows = compare_subsets(dataset, subsets, config, range(args.seeds), args.holdout, on_run=on_run)
    for (label, *_), row in zip(runs, rows):
        row["label"] = label
        row["objectives"] = scores[row["subset"]]
    best = max(rows, key=lambda r: r["mean"])
    for row in rows:
        # Standard error of the difference of two means over independent seeds.
        row["diff_to_best"] = row["mean"] - best["mean"]
        row["diff_se"] = float(np.hypot(row["std"], best["std"]) / np.sqrt(args.seeds))
    result["results"] = rows
    # The rule the default is chosen by: the cheapest method within noise of the best mean.
    tied = [r["method"] for r in rows if -r["diff_to_best"] <= NOISE_SE * r["diff_se"]]
    result["chosen"] = min(tied, key=COST_ORDER.index)
    result["rule"] = f"cheapest method ({' < '.join(COST_ORDER)}) whose mean is within {NOISE_SE:g} SE of the best mean"
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    _write(out, result)

    print(f"\n| method | sum of distances | min distance | mean nearest (unchosen) | held-out accuracy (mean ± std, {args.seeds} seeds) | per seed | vs best (± SE) |")
    print("|---|---:|---:|---:|---|---|---:|")
    for r in rows:
        t = r["objectives"]
        print(f"| {r['label']} | {t['sum_distance']:.1f} | {t['min_distance']:.4f} | {t['mean_nearest']:.4f} | {r['mean']:.4f} ± {r['std']:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in r['accuracies'])} | {r['diff_to_best']:+.4f} ± {r['diff_se']:.4f} |")
    print(f"\nbest mean: {best['label']}; within noise ({NOISE_SE:g} SE): {', '.join(sorted(set(tied)))}; chosen: {result['chosen']}")
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")


def _reusable(path: Path, dataset, method: str, params: dict, seed: int, per_class: int) -> bool:
    """Whether ``path`` is already this method's subset of this data (a rerun skips the build)."""
    try:
        s = load_subset(path, dataset)
    except ValueError:
        return False
    return (s.method, s.params, s.seed, s.per_class) == (method, params, seed, per_class)


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


if __name__ == "__main__":
    main()
