"""Subset accuracy: held-out accuracy of one fixed config trained on each selection method's
1000 images, the measurement the default subset method (``subset.features.DEFAULT_METHOD``)
is chosen by.

    nice -n 10 python bench/subset_accuracy.py --dataset fashion-mnist --out bench/results/subset_accuracy.json

Builds every method's subset with the product's ``build_subset`` (100 per class; the feature
extractor is the cached one, trained on first use; existing subset files in ``--subsets-dir``
are reused), then runs ``compare_subsets`` (what ``kilotune subset compare`` runs): the
compare config (``training.compare.COMPARE_CONFIG``) trained on each subset with seeds
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
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from kilotune.subset.datasets import load_dataset  # noqa: E402
from kilotune.subset.features import build_subset  # noqa: E402
from kilotune.subset.subsetfile import load_subset  # noqa: E402
from kilotune.training.compare import COMPARE_CONFIG, compare_subsets  # noqa: E402
from environment import cpu_model  # noqa: E402  (this script's folder is on sys.path)

# (label, method, params, selection seed); --random-draws adds random seeds 1, 2...
RUNS = (
    ("random", "random", {}, 0),
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
    parser.add_argument("--random-draws", type=int, default=1, help="random subsets (selection seeds 0..N-1) (default: %(default)s)")
    parser.add_argument("--subsets-dir", default="runs/subset_accuracy", help="where the subset files go; existing ones are reused")
    parser.add_argument("--out", default="bench/results/subset_accuracy.json")
    parser.add_argument("--summarize", action="store_true", help="only summarise the runs already in --out (e.g. of a stopped run)")
    args = parser.parse_args()
    if args.summarize:
        _summarize(json.loads(Path(args.out).read_text()), Path(args.out))
        return

    started = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir)
    runs = list(RUNS[:1]) + [(f"random (seed {s})", "random", {}, s) for s in range(1, args.random_draws)] + list(RUNS[1:])
    runs = [r for r in runs if not args.only or r[1] in args.only]
    subsets_dir = Path(args.subsets_dir)
    subsets = []
    for label, method, params, seed in runs:
        path = subsets_dir / f"{dataset.name}-{method}-{args.per_class}pc-seed{seed}.json"
        if not _reusable(path, dataset, method, params, seed, args.per_class):
            # One feature extraction per method (a minute of CPU each): the price of using
            # the product's own build path.
            build_subset(dataset, method, path, per_class=args.per_class, seed=seed, **params)
        subsets.append(load_subset(path, dataset))
        print(f"  {label}: {path}", flush=True)
    extractor = next((s.extractor for s in subsets if s.extractor), None)
    if extractor:  # The file name only: the result is shared, the cache path is this machine's.
        extractor = {**extractor, "path": Path(extractor["path"]).name}

    config = COMPARE_CONFIG if args.epochs is None else COMPARE_CONFIG.replace(epochs=args.epochs)
    result = {
        "dataset": dataset.name,
        "per_class": args.per_class,
        "seeds": args.seeds,
        "holdout": args.holdout,
        "config": config.to_dict(),
        "extractor": extractor,
        "machine": {"processor": cpu_model(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
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
    compare_subsets(dataset, subsets, config, range(args.seeds), args.holdout, on_run=on_run)
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    _summarize(result, out)


def _summarize(result: dict, out: Path) -> None:
    """Per-subset rows from the recorded runs (all of them, or those a stopped run finished),
    the difference of each to the best with its standard error, and the chosen method."""
    labels = {(method, seed): label for label, method, _, seed in RUNS}
    rows: dict[str, dict] = {}
    for run in result["runs"]:
        if run["subset"] not in rows:
            s = load_subset(run["subset"])
            rows[run["subset"]] = {
                "subset": run["subset"], "method": s.method, "params": s.params,
                "label": labels.get((s.method, s.seed), f"{s.method} (seed {s.seed})"),
                "objectives": (s.objectives or {}).get("total"),  # random records none: it uses no features
                "accuracies": [],
            }
        rows[run["subset"]]["accuracies"].append(run["accuracy"])
    for row in rows.values():
        row["mean"] = float(np.mean(row["accuracies"]))
        row["std"] = float(np.std(row["accuracies"], ddof=1)) if len(row["accuracies"]) > 1 else 0.0
        row["complete"] = len(row["accuracies"]) == result["seeds"]  # a stopped run's last subset may not be
    best = max((r for r in rows.values() if r["complete"]), key=lambda r: r["mean"])
    for row in rows.values():
        # Standard error of the difference of two means over independent seeds.
        row["diff_to_best"] = row["mean"] - best["mean"]
        row["diff_se"] = float(np.hypot(row["std"] / np.sqrt(len(row["accuracies"])), best["std"] / np.sqrt(len(best["accuracies"]))))
    result["results"] = list(rows.values())
    # The rule the default is chosen by: the cheapest method within noise of the best mean.
    tied = [r["method"] for r in rows.values() if r["complete"] and -r["diff_to_best"] <= NOISE_SE * r["diff_se"]]
    result["chosen"] = min(tied, key=COST_ORDER.index)
    result["rule"] = f"cheapest method ({' < '.join(COST_ORDER)}) whose mean is within {NOISE_SE:g} SE of the best mean"
    _write(out, result)

    print("\n| method | sum of distances | min distance | mean nearest (unchosen) | held-out accuracy (mean ± std over seeds) | per seed | vs best (± SE) |")
    print("|---|---:|---:|---:|---|---|---:|")
    for r in rows.values():
        t = r["objectives"] or {}
        cells = " | ".join(f"{t[k]:{f}}" if k in t else "-" for k, f in (("sum_distance", ".1f"), ("min_distance", ".4f"), ("mean_nearest", ".4f")))
        print(f"| {r['label']}{'' if r['complete'] else ' (incomplete)'} | {cells} | {r['mean']:.4f} ± {r['std']:.4f} | "
              f"{', '.join(f'{a:.4f}' for a in r['accuracies'])} | {r['diff_to_best']:+.4f} ± {r['diff_se']:.4f} |")
    print(f"\nbest mean: {best['label']}; within noise ({NOISE_SE:g} SE): {', '.join(sorted(set(tied)))}; chosen: {result['chosen']}")
    print(f"wrote {out}")


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


if __name__ == "__main__":
    main()
