"""The final step's shape at equal compute: k seeds of E/k epochs against one model of E, on held-out images only.

    python bench/final_shape.py --out runs/final_shape                 # every winner, resumes
    python bench/final_shape.py --out runs/final_shape --winners 1 2   # some of them (a second process)
    python bench/final_shape.py --out runs/final_shape --report        # the table (docs/benchmarks.md)
    python bench/final_shape.py --out runs/final_shape --report --horizons 6 12 18 54   # one model at each length
    python bench/final_shape.py --out runs/final_shape --snapshots 2 3 5            # one model and its snapshot ensembles
    python bench/final_shape.py --out runs/final_shape --snapshots 2 3 5 --report

The winners are kilotune's in bench/results/search_budget.json (the delivered rows at a budget,
``--budget``; one a seed). Each is trained the way ``kilotune retrain`` trains it (its schedule
spanning the epochs given), with ``--total-epochs`` split among k seeds (``--members``, e.g. 1 2 3:
one model of E, two of E/2, three of E/3), on the search's own training split of the subset (fold
0: 800 images), and scored by the mean softmax of its seeds on two sets of images no model trained
on, never the test set:

    validation  fold 0's 200 held-out images of the subset (what a study can measure itself);
    dev         ``--dev-images`` images of the official training set outside the subset, class
                balanced (a bench's luxury: 25 times the images, so about a fifth of the noise).

With ``--snapshots``, one model of ``--total-epochs`` per winner (its first seed) also keeps its
softmax at the epochs ``kilotune retrain --snapshots K`` averages (``training.retrain.snapshot_epochs``),
so a snapshot ensemble, an ensemble at no more training, is scored against the model's last epoch
(rows in ``snapshots-<budget>.json``).

Each member (winner, seed, epochs) is one row of ``rows.json`` with its softmax on both sets in
``probs/``, so a stopped run resumes at the member it was training. Measured in docs/benchmarks.md
sections 10 (it chose ``RetrainOptions.min_member_epochs``, training/config.py), 13 and 16 (snapshots).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "bench" / "results" / "search_budget.json"
SUBSET = "subset-random-100-seed0.json"


def winners(budget: int) -> dict[int, dict[str, Any]]:
    """The kilotune search's winner config per seed at ``budget`` (rows with ``final_epochs``; the
    ensemble's arm, ``kilotune-ensemble``, shares kilotune's search)."""
    rows = json.loads(ROWS.read_text())
    return {r["seed"]: r["winner_config"] for r in rows
            if r["method"] in ("kilotune", "kilotune-ensemble") and r["budget_epochs"] == budget and r.get("final_epochs")}


def dev_indices(labels: np.ndarray, subset: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` class-balanced indices of the training set outside ``subset``."""
    rng = np.random.default_rng(seed)
    outside = np.setdiff1d(np.arange(len(labels)), subset)
    classes = np.unique(labels)
    return np.sort(np.concatenate([rng.choice(outside[labels[outside] == c], n // len(classes), replace=False) for c in classes]))


@functools.cache
def held_out_sets(subset_path: Path, dev_images: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The dataset, fold 0's split of the subset and the dev images: read once a process."""
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.subsetfile import load_subset
    from kilotune.training.data import holdout_data

    dataset, subset = load_dataset("fashion-mnist"), load_subset(subset_path)
    data = holdout_data(dataset, subset.indices, val_fraction=0.2, seed=0, fold=0)
    return dataset, data, dev_indices(dataset.y_train, subset.indices, dev_images)


def train_member(config: dict[str, Any], seed: int, epochs: int, subset_path: Path, dev_images: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One member trained on fold 0's training split: its row and its softmax on both sets."""
    from kilotune.training.config import TrainConfig
    from kilotune.training.train import probabilities, train

    dataset, data, dev = held_out_sets(subset_path, dev_images)
    started = time.perf_counter()
    result = train(TrainConfig.from_dict(config).replace(epochs=epochs, seed=seed), data)
    # float16 keeps a member's files near 100 kB, so the rows and their softmax can be committed.
    probs = {"val": probabilities(result, data.x_val).astype(np.float16), "dev": probabilities(result, dataset.x_train[dev]).astype(np.float16)}
    labels = {"val": data.y_val, "dev": dataset.y_train[dev]}
    row = {"seed": seed, "epochs": epochs, "status": result.status, "wall_s": round(time.perf_counter() - started, 1),
           **{f"{s}_accuracy": float(np.mean(np.argmax(p, 1) == labels[s])) for s, p in probs.items()}}
    return row, {**probs, **{f"{s}_labels": y for s, y in labels.items()}}


def snapshot_member(config: dict[str, Any], epochs: int, ks: list[int], subset_path: Path, dev_images: int, scratch: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One model of ``epochs`` on fold 0's training split, as ``retrain --snapshots K`` trains it:
    its row and its softmax on both sets at every epoch a snapshot ensemble of each K in ``ks`` keeps."""
    from kilotune.training.config import TrainConfig
    from kilotune.training.retrain import SnapshotSaver, snapshot_epochs
    from kilotune.training.train import batches_per_epoch, probabilities, train

    dataset, data, dev = held_out_sets(subset_path, dev_images)
    train_config = TrainConfig.from_dict(config).replace(epochs=epochs)
    steps = batches_per_epoch(train_config, len(data.x_train))
    by_k = {str(k): snapshot_epochs(train_config, steps, k) for k in ks}
    saver = SnapshotSaver(sorted({e for kept in by_k.values() for e in kept}), scratch)
    started = time.perf_counter()
    result = train(train_config, data, keras_callbacks=[saver])
    wall = round(time.perf_counter() - started, 1)
    labels = {"val": data.y_val, "dev": dataset.y_train[dev]}
    arrays: dict[str, np.ndarray] = {f"{s}_labels": y for s, y in labels.items()}
    for epoch, path in saver.files.items():
        result.model.load_weights(path)
        arrays |= {f"val@{epoch}": probabilities(result, data.x_val).astype(np.float16),
                   f"dev@{epoch}": probabilities(result, dataset.x_train[dev]).astype(np.float16)}
        path.unlink()
    row = {"seed": train_config.seed, "epochs": epochs, "status": result.status, "wall_s": wall,
           "kept_epochs": sorted(saver.epochs), "snapshot_epochs": by_k}
    return row, arrays


def append_row(out: Path, rows_file: Path, row: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Saves a trained model's softmax and adds its row, re-reading the rows (another process may have written)."""
    np.savez_compressed(out / "probs" / f"{row['name']}.npz", **arrays)
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
    rows_file.write_text(json.dumps([*rows, row], indent=1))


def has_row(rows_file: Path, name: str) -> bool:
    """Whether ``name`` was trained already (a stopped run resumes after it)."""
    return rows_file.is_file() and any(r["name"] == name for r in json.loads(rows_file.read_text()))


def run_snapshots(args: argparse.Namespace, subset_path: Path) -> None:
    out = Path(args.out)
    rows_file = out / f"snapshots-{args.budget}.json"
    configs = winners(args.budget)
    for winner in args.winners or sorted(configs):
        config = configs[winner]
        name = f"b{args.budget}-s{winner}-seed{config['seed']}-e{args.total_epochs}-snapshots"
        if has_row(rows_file, name):
            continue
        print(f"{name}: {config['arch']} width {config['width']}, {args.total_epochs} epochs", flush=True)
        row, arrays = snapshot_member(config, args.total_epochs, args.snapshots, subset_path, args.dev_images, out / "scratch" / name)
        append_row(out, rows_file, {"name": name, "budget": args.budget, "winner": winner, "arch": config["arch"], **row}, arrays)
        print(f"{name}: done ({row['wall_s']:.0f} s)", flush=True)


def snapshot_rows(out: Path, budget: int) -> list[dict[str, Any]]:
    """The ``--snapshots`` rows at ``budget``; ValueError if there are none."""
    path = out / f"snapshots-{budget}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    if not rows:
        raise ValueError(f"no snapshot rows for {budget=}: train them with --snapshots")
    return rows


def snapshot_scores(out: Path, rows: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, float]]]:
    """winner -> "last" or K -> {"val": accuracy, "dev": accuracy}: the model's last epoch against
    the mean softmax of each snapshot ensemble's epochs."""
    scores: dict[int, dict[str, dict[str, float]]] = {}
    for row in rows:
        a = np.load(out / "probs" / f"{row['name']}.npz")

        def score(epochs: list[int], s: str) -> float:
            return float(np.mean(np.argmax(sum(a[f"{s}@{e}"].astype(np.float32) for e in epochs), 1) == a[f"{s}_labels"]))

        by = {"last": {s: score([row["epochs"]], s) for s in ("val", "dev")}}
        by |= {k: {s: score(epochs, s) for s in ("val", "dev")} for k, epochs in row["snapshot_epochs"].items()}
        scores[row["winner"]] = by
    return scores


def snapshot_report(out: Path, budget: int) -> str:
    rows = snapshot_rows(out, budget)
    scores, kept = snapshot_scores(out, rows), {r["winner"]: r["snapshot_epochs"] for r in rows}
    configs = winners(budget)
    ks = sorted({k for by in scores.values() for k in by if k != "last"}, key=int)
    lines = [f"| winner (budget {budget}, seed) | arch | last epoch: val / dev | " + " | ".join(f"{k} snapshots (epochs): val / dev" for k in ks) + " |",
             "| ---: | --- | --- |" + " --- |" * len(ks)]
    for w, by in sorted(scores.items()):
        c = configs[w]
        cells = [f"{by[k]['val']:.3f} / {by[k]['dev']:.4f} ({', '.join(map(str, kept[w][k]))})" for k in ks]
        lines.append(f"| {w} | {c['arch']} {c['width']} {c['schedule']} | {by['last']['val']:.3f} / {by['last']['dev']:.4f} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in ks:
        for s in ("val", "dev"):
            diffs = [100 * (by[k][s] - by["last"][s]) for by in scores.values()]
            spread = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
            lines.append(f"{k} snapshots less the last epoch on {s}: {statistics.fmean(diffs):+.1f} ± {spread:.1f} points over "
                         f"{len(diffs)} winners, ahead in {sum(d > 0 for d in diffs)}, behind in {sum(d < 0 for d in diffs)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    (out / "probs").mkdir(parents=True, exist_ok=True)
    subset_path = out / SUBSET
    if not subset_path.is_file():
        from kilotune.cli.main import main as kilotune

        if kilotune(["subset", "build", "--dataset", "fashion-mnist", "--method", "random", "--per-class", "100", "--seed", "0", "--out", str(subset_path)]):
            sys.exit("kilotune subset build failed")
    if args.snapshots:
        run_snapshots(args, subset_path)
        return
    configs = winners(args.budget)
    for winner in args.winners or sorted(configs):
        config = configs[winner]
        for k in args.members:
            for i in range(k):
                seed, epochs = int(config["seed"]) + i, args.total_epochs // k
                name = f"b{args.budget}-s{winner}-seed{seed}-e{epochs}"
                rows_file = out / f"rows-{args.budget}.json"
                if has_row(rows_file, name):
                    continue
                print(f"{name}: {config['arch']} width {config['width']}, {epochs} epochs", flush=True)
                row, arrays = train_member(config, seed, epochs, subset_path, args.dev_images)
                append_row(out, rows_file, {"name": name, "budget": args.budget, "winner": winner, "arch": config["arch"], **row}, arrays)
                print(f"{name}: validation {row['val_accuracy']:.4f}, dev {row['dev_accuracy']:.4f} ({row['wall_s']:.0f} s)", flush=True)


def shape_scores(out: Path, budget: int, total_epochs: int, members: list[int]) -> dict[int, dict[int, dict[str, float]]]:
    """winner -> k -> {"val": accuracy, "dev": accuracy, "members_dev": the seeds' mean} of the complete shapes."""
    rows = json.loads((out / f"rows-{budget}.json").read_text())
    scores: dict[int, dict[int, dict[str, float]]] = {}
    for winner in sorted({r["winner"] for r in rows}):
        for k in members:
            mine = [r for r in rows if r["winner"] == winner and r["epochs"] == total_epochs // k]
            mine = sorted(mine, key=lambda r: r["seed"])[:k]
            if len(mine) < k:
                continue
            arrays = [np.load(out / "probs" / f"{r['name']}.npz") for r in mine]
            scores.setdefault(winner, {})[k] = {
                s: float(np.mean(np.argmax(sum(a[s].astype(np.float32) for a in arrays), 1) == arrays[0][f"{s}_labels"])) for s in ("val", "dev")
            } | {"members_dev": statistics.fmean(r["dev_accuracy"] for r in mine)}
    return scores


def report(args: argparse.Namespace) -> str:
    scores = shape_scores(Path(args.out), args.budget, args.total_epochs, args.members)
    ks = args.members
    head = " | ".join(f"{k} x {args.total_epochs // k}: val / dev (members)" for k in ks)
    lines = [f"| winner (budget {args.budget}, seed) | arch | {head} |", "| ---: | --- |" + " --- |" * len(ks)]
    configs = winners(args.budget)
    for winner, by_k in scores.items():
        cells = [f"{by_k[k]['val']:.3f} / {by_k[k]['dev']:.4f} ({by_k[k]['members_dev']:.4f})" if k in by_k else "-" for k in ks]
        c = configs[winner]
        lines.append(f"| {winner} | {c['arch']} {c['width']} {c['schedule']} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in ks[1:]:
        for s in ("val", "dev"):
            diffs = [100 * (by_k[k][s] - by_k[ks[0]][s]) for by_k in scores.values() if k in by_k and ks[0] in by_k]
            if diffs:
                spread = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
                wins = sum(d > 0 for d in diffs)
                lines.append(f"{k} x {args.total_epochs // k} less {ks[0]} x {args.total_epochs // ks[0]} on {s}: "
                             f"{statistics.fmean(diffs):+.1f} ± {spread:.1f} points over {len(diffs)} winners, ahead in {wins}")
    return "\n".join(lines)


def horizon_report(out: Path, budget: int, horizons: list[int]) -> str:
    """One model per winner (its first seed) at each horizon: does a shorter run rank the winners
    as the longest does? Pairs are winners of different architectures; each is counted in the
    order the longest horizon's dev accuracy puts it, on dev and on the 200 validation images."""
    rows = json.loads((out / f"rows-{budget}.json").read_text())
    configs = winners(budget)
    first = {w: int(c["seed"]) for w, c in configs.items()}
    scores = {(r["winner"], r["epochs"]): (r["val_accuracy"], r["dev_accuracy"]) for r in rows if r["seed"] == first[r["winner"]]}
    done = sorted(w for w in configs if all((w, h) in scores for h in horizons))
    if not done:
        raise ValueError(f"no winner has a model at every horizon {horizons=}: train them with --total-epochs H --members 1")
    lines = [f"| winner (budget {budget}, seed) | arch | " + " | ".join(f"{h} epochs: val / dev" for h in horizons) + " |",
             "| ---: | --- |" + " --- |" * len(horizons)]
    for w in done:
        c = configs[w]
        cells = [f"{scores[w, h][0]:.3f} / {scores[w, h][1]:.4f}" for h in horizons]
        lines.append(f"| {w} | {c['arch']} {c['width']} {c['schedule']} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a in done for b in done if a < b and configs[a]["arch"] != configs[b]["arch"]]
    longest = horizons[-1]
    lines.append("")
    for h in horizons:
        agree = {s: sum((scores[a, h][s] - scores[b, h][s]) * (scores[a, longest][1] - scores[b, longest][1]) > 0 for a, b in pairs) for s in (0, 1)}
        lines.append(f"{h} epochs: {agree[1]} of {len(pairs)} pairs of architectures in the order {longest} epochs give them on dev; "
                     f"on validation {agree[0]} (a tie counts as out of order)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="rows, softmax files and the subset go here")
    parser.add_argument("--budget", type=int, default=60, help="whose winners: the search budget in epochs (default: %(default)s)")
    parser.add_argument("--winners", type=int, nargs="*", help="the seeds of the winners to train (default: all)")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 3], help="ensemble sizes k to compare (default: %(default)s)")
    parser.add_argument("--total-epochs", type=int, default=54, help="epochs of a shape, split among its k seeds (default: %(default)s)")
    parser.add_argument("--dev-images", type=int, default=5000, help="held-out images outside the subset (default: %(default)s)")
    parser.add_argument("--snapshots", type=int, nargs="+", help="instead of the shapes: one model of --total-epochs per winner and its snapshot ensembles of these sizes")
    parser.add_argument("--report", action="store_true", help="print the table instead of training")
    parser.add_argument("--horizons", type=int, nargs="+", help="with --report: one model per winner at each of these epochs, ranked against the last")
    args = parser.parse_args(argv)
    if min(args.members) < 1 or args.total_epochs < max(args.members) or args.dev_images < 10:
        parser.error(f"need members >= 1, total epochs >= the largest k and at least 10 dev images, got {args.members=}, {args.total_epochs=}, {args.dev_images=}")
    if args.snapshots and not all(2 <= k <= args.total_epochs for k in args.snapshots):
        parser.error(f"snapshot ensembles need 2 to --total-epochs snapshots, got {args.snapshots=}")
    try:
        if args.report:
            if args.snapshots:
                print(snapshot_report(Path(args.out), args.budget))
            else:
                print(horizon_report(Path(args.out), args.budget, sorted(args.horizons)) if args.horizons else report(args))
        else:
            run(args)
    except ValueError as e:  # e.g. a member too short for its config's warm-up
        sys.exit(f"final_shape: {e}")


if __name__ == "__main__":
    main()
