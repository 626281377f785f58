"""``kilotune subset build|show|compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kilotune.cli.options import add_option, argument
from kilotune.models.names import listing
from kilotune.search.checks import readable_file, real, whole_number, writable_file
from kilotune.search.settings import RunOptions
from kilotune.subset.files import count_of


def register_subset(sub: argparse._SubParsersAction) -> None:
    from kilotune.subset.features import DEFAULT_METHOD, DEFAULT_PER_CLASS  # numpy only; Keras stays unimported

    p = sub.add_parser("subset", help="choose, inspect and compare training subsets")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="select a subset of the training set and write it as JSON")
    add_option(b, RunOptions, "dataset")
    add_option(b, RunOptions, "data_dir")
    b.add_argument("--method", default=DEFAULT_METHOD, help="random, random-restarts, max-sum, k-center, representative or mixed (default: %(default)s, chosen by held-out accuracy in docs/subset.md)")
    b.add_argument("--per-class", type=argument(whole_number(1)), default=DEFAULT_PER_CLASS, help="images per class (default: %(default)s)")
    b.add_argument("--seed", type=argument(whole_number(0)), default=0, help="selection seed (default: %(default)s)")
    b.add_argument("--extractor", type=argument(readable_file), help="saved feature extractor (.keras); default: the cached one, trained on first use")
    b.add_argument("--draws", type=argument(whole_number(1)), help="random-restarts: random draws per class (default: 10000)")
    b.add_argument("--weight", type=argument(real(0, 1)), help="mixed: weight of diversity against representativeness, in [0, 1] (default: 0.5)")
    b.add_argument("--out", type=argument(writable_file), help="subset file to write (default: in the cache, named by dataset, method, params, per-class and seed)")
    b.set_defaults(func=run_build)

    s = actions.add_parser("show", help="print a subset file's objectives and class counts")
    s.add_argument("file", type=argument(readable_file), help="subset JSON file")
    s.add_argument("--grid", type=argument(writable_file), help="also write a PNG of chosen images, one row per class")
    s.add_argument("--per-row", type=argument(whole_number(1)), default=10, help="images per class in the grid (default: %(default)s)")
    add_option(s, RunOptions, "data_dir")
    s.set_defaults(func=run_show)

    c = actions.add_parser("compare", help="train one config on several subsets and compare held-out accuracy")
    c.add_argument("files", nargs="+", type=argument(readable_file), help="subset JSON files, all of the same dataset")
    c.add_argument("--config", type=argument(readable_file), help="TrainConfig JSON (default: a small CPU-sized VGG-8, see training/compare.py)")
    c.add_argument("--seeds", type=argument(whole_number(1)), default=3, help="training seeds per subset: 0..N-1 (default: %(default)s)")
    c.add_argument("--holdout", type=argument(whole_number(1)), default=2000, help="class-balanced held-out training images, in no subset (default: %(default)s)")
    c.add_argument("--epochs", type=argument(whole_number(1)), help="override the config's epochs")
    add_option(c, RunOptions, "data_dir")
    c.add_argument("--out", type=argument(writable_file), help="write the results as JSON here")
    c.set_defaults(func=run_compare)


def run_build(args: argparse.Namespace) -> int:
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import build_subset, default_extractor_path, default_subset_path
    from kilotune.subset.selection import METHODS
    from kilotune.subset.subsetfile import load_subset

    if args.method not in METHODS:
        raise ValueError(f"unknown --method {args.method!r}; choose one of {listing(METHODS)}")
    params = {}
    for flag, method in (("draws", "random-restarts"), ("weight", "mixed")):
        if (value := getattr(args, flag)) is not None:
            if args.method != method:
                raise ValueError(f"--{flag} applies to --method {method}, not {args.method}")
            params[flag] = value
    if args.method == "random" and args.extractor:
        raise ValueError("--method random uses no feature extractor; drop --extractor")
    dataset = load_dataset(args.dataset, args.data_dir)
    tag = args.method + "".join(f"-{k}{v}" for k, v in params.items())  # e.g. mixed-weight0.3
    out = Path(args.out) if args.out else default_subset_path(dataset.name, tag, args.per_class, args.seed)
    if args.method != "random" and not args.extractor and not default_extractor_path(dataset.name).is_file():
        print(f"training the feature extractor for {dataset.name} (once; cached at {default_extractor_path(dataset.name)})")
    build_subset(dataset, args.method, out, per_class=args.per_class, seed=args.seed, extractor_path=args.extractor, **params)
    subset = load_subset(out)
    print(f"wrote {out}: {len(subset.indices)} {dataset.name} images by {subset.method} ({subset.checksum[:19]}...)")
    _print_objectives(subset.objectives)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from kilotune.subset.subsetfile import load_subset

    subset = load_subset(args.file)
    class_names = None
    if args.grid:
        from kilotune.subset.datasets import load_dataset

        dataset = load_dataset(subset.dataset, args.data_dir)
        subset = load_subset(args.file, dataset)
        class_names = dataset.class_names
    params = f" {json.dumps(subset.params)}" if subset.params else ""
    print(f"{args.file}: {subset.dataset}, {subset.method}{params}, seed {subset.seed}, {len(subset.indices)} images")
    print(f"  checksum {subset.checksum}  dataset {subset.dataset_checksum[:19]}...  created {subset.created}")
    if subset.extractor:
        # Older subset files recorded the extractor's test accuracy; it now reads only training images.
        label, accuracy = next(((label, subset.extractor[key]) for key, label in (("train_accuracy", "training accuracy"), ("test_accuracy", "test accuracy"))
                                if subset.extractor.get(key) is not None), ("accuracy", float("nan")))
        print(f"  extractor {subset.extractor.get('arch')} ({label} {accuracy:.4f}) {subset.extractor.get('path')}")
    print("  per class: " + ", ".join(f"{_name(label, class_names)}={count}" for label, count in subset.counts().items()))
    _print_objectives(subset.objectives)
    for label, row in ((subset.objectives or {}).get("per_class") or {}).items():
        values = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k in ("sum_distance", "min_distance", "mean_nearest", "sum_gap") and isinstance(v, float))
        print(f"    class {label}: {values}")
    if args.grid:
        _write_grid(args.grid, dataset, subset, args.per_row)
        print(f"wrote {args.grid}: one row per class, {count_of(args.per_row, 'image')} each, rows in label order")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.files import write_json
    from kilotune.subset.subsetfile import load_subset
    from kilotune.training.compare import COMPARE_CONFIG, compare_subsets
    from kilotune.training.config import TrainConfig

    subsets = [load_subset(f) for f in args.files]
    if len({s.dataset_checksum for s in subsets}) > 1:
        found = ", ".join(f"{s.path}: {s.dataset} ({s.dataset_checksum[:19]}...)" for s in subsets)
        raise ValueError(f"subsets to compare must be of the same dataset; got {found}")
    config = TrainConfig.from_json(args.config) if args.config else COMPARE_CONFIG
    if args.epochs is not None:
        config = config.replace(epochs=args.epochs)
    dataset = load_dataset(subsets[0].dataset, args.data_dir)
    print(f"comparing {len(subsets)} subsets of {dataset.name}: {config.arch} width {config.width}, {count_of(config.epochs, 'epoch')}, seeds 0..{args.seeds - 1}, {count_of(args.holdout, 'held-out image')}")

    def report(run: dict) -> None:
        print(f"  {run['subset']} seed {run['seed']}: held-out accuracy {run['accuracy']:.4f} ({run['seconds']:.0f} s{', ' + run['status'] if run['status'] != 'complete' else ''})", flush=True)

    rows = compare_subsets(dataset, subsets, config, range(args.seeds), args.holdout, on_run=report)
    print(f"\n| subset | method | held-out accuracy (mean ± std over {count_of(args.seeds, 'seed')}) | per seed |\n|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['subset']).name} | {r['method']} | {r['mean']:.4f} ± {r['std']:.4f} | {', '.join(f'{a:.4f}' for a in r['accuracies'])} |")
    if args.out:
        write_json({"dataset": dataset.name, "config": config.to_dict(), "seeds": args.seeds, "results": rows}, args.out)
        print(f"wrote {args.out}")
    return 0


def _name(label: int, class_names: tuple[str, ...] | None) -> str:
    return f"{label}:{class_names[label]}" if class_names and 0 <= label < len(class_names) else str(label)


def _print_objectives(objectives: dict | None) -> None:
    if not objectives:
        return
    total = objectives.get("total", {})
    parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in total.items()]
    print("  objectives (total): " + ", ".join(parts))


def _write_grid(path: str, dataset, subset, per_row: int) -> None:
    import numpy as np
    from PIL import Image

    h, w, c = dataset.input_shape
    pad = 2
    labels = sorted(subset.counts())
    canvas = np.full((len(labels) * (h + pad) + pad, per_row * (w + pad) + pad, c), 255, np.uint8)
    for r, label in enumerate(labels):
        for col, idx in enumerate(subset.indices[subset.labels == label][:per_row]):
            y, x = pad + r * (h + pad), pad + col * (w + pad)
            canvas[y : y + h, x : x + w] = dataset.x_train[idx]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)


REGISTER = [register_subset]
