"""Training speed per architecture: what one trial pays on this machine, fixed cost included.

    python bench/train_speed.py --out runs/train_speed.json                  # 1-channel Fashion-MNIST
    python bench/train_speed.py --channels 3 --out runs/train_speed_rgb.json # tiled to RGB (CIFAR-10 compute)

For every architecture (vgg8, vgg16, resnet9, resnet18, resnet20 depth 20, wrn depth 16 k 4)
it runs the real training core, ``training.train.train``, on 1000 class-balanced Fashion-MNIST
images (32x32, from ``load_dataset``) with a TrainConfig per arch (batch 128, 3 epochs, default
augmentation and schedule), and reads the figures trials pay from the core itself:
``TrainResult.build_seconds`` (build + compile) and ``EpochReport.seconds`` per epoch.
Epoch 1 includes tracing the train and eval steps, so

    per-trial fixed cost = build + first epoch - a later epoch (median of epochs 2..N)

is what every trial pays before it learns anything: the figure later work must shrink.
A tiny 50-image validation set (not taken from the 1000) makes epoch 1 trace the eval step
too, as a real trial's does. An arch whose build + epochs exceed --slow-seconds (3 minutes)
is also run at --fallback-width (0.5). Process CPU seconds are recorded too (a later epoch, and
the fixed cost from train() start to the end of epoch 1): on a shared machine they move much
less with others' load than wall time does. Prints a markdown table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from environment import environment  # noqa: E402  (this script's folder is on sys.path)
from kilotune.subset.datasets import load_dataset  # noqa: E402

# (arch, depth, widen_factor): depth/k only matter for resnet20 and wrn.
ARCHS: dict[str, tuple[int, int]] = {
    "vgg8": (20, 4),
    "vgg16": (20, 4),
    "resnet9": (20, 4),
    "resnet18": (20, 4),
    "resnet20": (20, 4),
    "wrn": (16, 4),
}


def balanced_indices(labels: np.ndarray, per_class: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` random indices of every class, optionally avoiding ``exclude``."""
    rng = np.random.default_rng(seed)
    taken = set() if exclude is None else set(exclude.tolist())
    out = []
    for c in np.unique(labels):
        pool = np.array([i for i in np.flatnonzero(labels == c) if i not in taken])
        out.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(out))


def make_data(images: int, val_images: int, channels: int, seed: int):  # -> training.train.TrainData
    from kilotune.training.train import TrainData

    ds = load_dataset("fashion-mnist")
    train_idx = balanced_indices(ds.y_train, images // ds.num_classes, seed)
    val_idx = balanced_indices(ds.y_train, max(1, val_images // ds.num_classes), seed + 1, exclude=train_idx) if val_images else train_idx[:0]

    def take(idx: np.ndarray) -> np.ndarray:
        x = np.asarray(ds.x_train[idx])
        # Tiling the grey channel gives CIFAR-10's input shape, so the first conv costs what it would.
        return np.repeat(x, channels, axis=-1) if channels > 1 else x

    return TrainData(take(train_idx), ds.y_train[train_idx], take(val_idx), ds.y_train[val_idx], ds.num_classes)


def bench_arch(arch: str, width: float, data, epochs: int, batch_size: int) -> dict[str, Any]:
    import keras

    from kilotune.training.config import TrainConfig
    from kilotune.training.train import train

    depth, k = ARCHS[arch]
    config = TrainConfig(arch=arch, width=width, depth=depth, widen_factor=k, batch_size=batch_size, epochs=epochs)
    # CPU seconds of the whole process at every epoch end: on a shared machine wall time depends on
    # others' load, CPU time much less, so both are kept.
    cpu_marks: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train(config, data, [lambda report: cpu_marks.append(time.process_time())])
    wall = time.perf_counter() - started
    keras.backend.clear_session()  # as the worker does between trials
    seconds = [r.seconds for r in result.history]
    later = statistics.median(seconds[1:]) if len(seconds) > 1 else float("nan")
    cpu_epochs = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])]  # epochs 2..N
    cpu_later = statistics.median(cpu_epochs) if cpu_epochs else float("nan")
    return {
        "arch": arch,
        "width": width,
        "depth": depth if arch in ("resnet20", "wrn") else None,
        "widen_factor": k if arch == "wrn" else None,
        "params": result.params,
        "build_seconds": result.build_seconds,
        "epoch_seconds": seconds,
        "first_epoch_seconds": seconds[0],
        "later_epoch_seconds": later,
        "fixed_cost_seconds": result.build_seconds + seconds[0] - later,
        # train() also normalises data and sets up fit outside build and the epochs; shown, not hidden.
        "train_wall_seconds": wall,
        "other_seconds": wall - result.build_seconds - sum(seconds),
        "images_per_second": len(data.x_train) / later,
        # CPU view: train() start to the end of epoch 1 (build, set-up, trace, first epoch) less a later epoch.
        "cpu_to_first_epoch_end_seconds": cpu_marks[0] - cpu_started,
        "cpu_later_epoch_seconds": cpu_later,
        "cpu_fixed_cost_seconds": cpu_marks[0] - cpu_started - cpu_later,
        "status": result.status,
    }


def warm_up(data) -> float:
    """One tiny trial first, so the TF runtime's one-off start-up lands on no architecture."""
    from kilotune.training.config import TrainConfig
    from kilotune.training.train import TrainData, train

    import keras

    tiny = TrainData(data.x_train[:64], data.y_train[:64], data.x_val[:8], data.y_val[:8], data.num_classes)
    started = time.perf_counter()
    train(TrainConfig(arch="vgg8", width=0.125, epochs=1, batch_size=32), tiny)
    keras.backend.clear_session()
    return time.perf_counter() - started


def label(row: dict[str, Any]) -> str:
    if row["arch"] == "resnet20":
        return f"resnet20 (depth {row['depth']})"
    if row["arch"] == "wrn":
        return f"wrn ({row['depth']}-{row['widen_factor']})"
    return row["arch"]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| arch | width | params | build+compile s | first epoch s | later epoch s (median 2..N) | **fixed cost / trial s** | "
        "train() wall s | images/s | CPU s: later epoch / fixed cost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {label(r)} | {r['width']:g} | {r['params']:,} | {r['build_seconds']:.2f} | {r['first_epoch_seconds']:.2f} | "
            f"{r['later_epoch_seconds']:.2f} | **{r['fixed_cost_seconds']:.2f}** | {r['train_wall_seconds']:.1f} | {r['images_per_second']:.0f} | "
            f"{r['cpu_later_epoch_seconds']:.1f} / {r['cpu_fixed_cost_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="3 tiles grey to RGB, CIFAR-10's shape")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=50, help="tiny separate validation set (0: none)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--slow-seconds", type=float, default=180.0, help="rerun an arch slower than this at --fallback-width")
    parser.add_argument("--fallback-width", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/train_speed.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    data = make_data(args.images, args.val_images, args.channels, args.seed)
    info = environment()
    print(f"{info['machine']['cpu']}, {info['machine']['cores']} CPUs; Keras {info['libraries'].get('keras')} ({info['backend']}); "
          f"{len(data.x_train)} images {data.x_train.shape[1:]}, {len(data.x_val)} val; load before {load_before}", flush=True)
    warm = warm_up(data)
    print(f"warm-up trial: {warm:.1f} s", flush=True)

    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(done: bool) -> None:
        # Written after every arch, so a long run that is cut short still leaves its numbers.
        payload = {"args": vars(args), "machine": info, "load_before": load_before, "warm_up_seconds": warm, "results": rows, "done": done}
        if done:
            payload["load_after"] = os.getloadavg()
        out.write_text(json.dumps(payload, indent=2) + "\n")

    for arch in args.archs:
        row = bench_arch(arch, args.width, data, args.epochs, args.batch_size)
        row["load"] = os.getloadavg()
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        save(False)
        total = row["train_wall_seconds"]
        if total > args.slow_seconds and args.fallback_width < args.width:
            print(f"{arch}: {total:.0f} s for {args.epochs} epochs > {args.slow_seconds:.0f} s; also at width {args.fallback_width}", flush=True)
            row = bench_arch(arch, args.fallback_width, data, args.epochs, args.batch_size)
            row["load"] = os.getloadavg()
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            save(False)

    save(True)
    print()
    print(table(rows))
    print(f"\nload average before {load_before}, after {os.getloadavg()}; JSON: {out}")


if __name__ == "__main__":
    main()
