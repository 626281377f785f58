"""Subset quality: every selection method's objectives and wall time on real data, side by side
with the reference (best of 10,000 random draws per class).

    python bench/subset_quality.py --dataset fashion-mnist --out runs/subset_quality.json

Trains the feature extractor once (or reuses the cached one), extracts features for the whole
training set, then for each method times ``select`` (per-class distance matrices included)
and scores the result: sum of pairwise cosine distances (and its gap to the upper bound),
minimum pairwise distance, mean distance of the unchosen to their nearest chosen.
Prints a markdown table and writes all numbers, per class too, as JSON. Wall and process CPU
time are both reported: on a shared machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kilotune.subset.datasets import load_dataset  # noqa: E402
from kilotune.subset.features import ensure_extractor, extract_features, load_extractor  # noqa: E402
from kilotune.subset.objectives import objectives  # noqa: E402
from kilotune.subset.selection import select  # noqa: E402
from environment import cpu_model  # noqa: E402  (this script's folder is on sys.path)

# (label, method, params); greedy-only variants show what the swap searches add.
RUNS = (
    ("random", "random", {}),
    ("reference: random-restarts 10k", "random-restarts", {"draws": 10_000}),
    ("max-sum greedy (no swaps)", "max-sum", {"max_swaps": 0}),
    ("max-sum", "max-sum", {}),
    ("k-center", "k-center", {}),
    ("representative greedy (no swaps)", "representative", {"max_swaps": 0}),
    ("representative", "representative", {}),
    ("mixed weight 0.5", "mixed", {"weight": 0.5}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--extractor", help="saved extractor (default: the cached one, trained if missing)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these labels' methods (e.g. max-sum random)")
    parser.add_argument("--out", default="runs/subset_quality.json")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.data_dir)
    started = time.perf_counter()
    extractor = load_extractor(ensure_extractor(dataset, args.extractor))
    trained = time.perf_counter() - started
    started = time.perf_counter()
    features = extract_features(extractor, dataset.x_train)
    extract_seconds = time.perf_counter() - started
    print(f"extractor {extractor.metadata['arch']} width {extractor.metadata['width']}: test accuracy "
          f"{extractor.metadata['test_accuracy']:.4f}, trained in {extractor.metadata.get('train_seconds', trained):.0f} s; "
          f"features {features.shape} in {extract_seconds:.1f} s")

    results = []
    for label, method, params in RUNS:
        if args.only and method not in args.only:
            continue
        started, cpu = time.perf_counter(), time.process_time()
        indices = select(method, features, dataset.y_train, args.per_class, args.seed, **params)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        scores = objectives(features, dataset.y_train, indices, upper_bound=True)
        results.append({"label": label, "method": method, "params": params, "seconds": seconds, "cpu_seconds": cpu_seconds, **scores})
        t = scores["total"]
        print(f"  {label}: sum {t['sum_distance']:.1f} (own-direction gap {t['sum_gap']:.2%}), min {t['min_distance']:.4f}, "
              f"mean nearest {t['mean_nearest']:.4f}, {seconds:.1f} s ({cpu_seconds:.1f} CPU s)", flush=True)

    # Every method's subset gives a valid bound; the tightest, class by class, judges them all.
    classes = results[0]["per_class"]
    bound = sum(min(r["per_class"][c]["sum_upper_bound"] for r in results) for c in classes)
    row = results[0]["total"]["sum_row_bound"]
    for r in results:
        r["total"]["sum_gap"] = (bound - r["total"]["sum_distance"]) / bound
        r["total"]["sum_row_gap"] = (row - r["total"]["sum_distance"]) / row
    print(f"\n{dataset.name}, {args.per_class} per class, seed {args.seed}; upper bound on the sum {bound:.1f} "
          f"(projection bound, tightest over the methods' directions); row bound {row:.1f}\n")
    print("| method | sum of distances | gap to bound | gap to row bound | min distance | mean nearest (unchosen) | wall time (s) | CPU time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t = r["total"]
        print(f"| {r['label']} | {t['sum_distance']:.1f} | {t['sum_gap']:.2%} | {t['sum_row_gap']:.1%} | {t['min_distance']:.4f} | {t['mean_nearest']:.4f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "dataset": dataset.name,
        "per_class": args.per_class,
        "seed": args.seed,
        "extractor": {k: extractor.metadata.get(k) for k in ("arch", "width", "epochs", "test_accuracy", "train_seconds")},
        "extract_seconds": extract_seconds,
        "machine": {"processor": cpu_model(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "sum_upper_bound": bound,
        "sum_row_bound": row,
        "results": results,
    }, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
