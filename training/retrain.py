"""Retrain an exported configuration on all the chosen images and measure it on the test set.

The search held out part of the subset for validation; the final model trains on every
chosen image (no validation), once per seed, and is evaluated once on the official test
set. Optional extras are reported beside the plain figure, never in place of it: flip
test-time augmentation, and a snapshot ensemble that averages the softmax of the model at
K epochs near the end of training (at the end of each warm-restart cycle for
``cosine_restarts``).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kilotune.models.progress import EpochProgress, duration
from kilotune.subset.datasets import ImageDataset, accuracy, load_dataset, normalize
from kilotune.subset.files import count_of, now_iso, write_json
from kilotune.subset.subsetfile import SubsetFile, find_subset
from kilotune.training.config import RetrainOptions, TrainConfig
from kilotune.training.predictor import ensemble_predictor, load_predictor
from kilotune.training.train import TrainData, TrainResult, batches_per_epoch, train, view_probabilities


def load_training_set(export: dict[str, Any], data_dir: str | None = None, subset_path: str | None = None) -> tuple[ImageDataset, SubsetFile]:
    """The dataset and subset named by the export's provenance, checked against its checksums.

    Args:
        export: What ``kilotune export`` wrote.
        data_dir: Where the dataset files are (default: per dataset).
        subset_path: The subset file, where it is not at the recorded ``subset_path``
            (e.g. the study ran in a container); it must still be the same subset. Without
            it: the recorded path, else this host's cache, else the copy the export carries
            (``subset_content``, written into the cache): ``subset.subsetfile.find_subset``.

    Raises:
        ValueError: if the data or the subset differ from those the study searched on.
    """
    p = export["provenance"]
    dataset = load_dataset(p["dataset"], data_dir)
    if dataset.checksum != p["dataset_checksum"]:
        raise ValueError(
            f"study {p['study']!r} searched on {p['dataset']} with checksum {p['dataset_checksum'][:19]}..., "
            f"but the {dataset.name} found here has checksum {dataset.checksum[:19]}..."
        )
    # Another host may lack the study's file: the export carries a copy (find_subset's order).
    subset = find_subset(dataset, p["subset_checksum"], given=subset_path, recorded=p["subset_path"], stored=p.get("subset_content"))
    if subset.checksum != p["subset_checksum"]:  # only a given --subset can differ
        raise ValueError(
            f"subset {subset.path} ({subset.checksum[:19]}...) is not the one study {p['study']!r} searched on "
            f"({p['subset_checksum'][:19]}...); pass --subset with that file"
        )
    return dataset, subset


def all_chosen(dataset: ImageDataset, indices: np.ndarray) -> TrainData:
    """Every chosen image for training, and an empty validation set."""
    indices = np.asarray(indices)
    return TrainData(
        x_train=dataset.x_train[indices],
        y_train=dataset.y_train[indices],
        x_val=np.empty((0, *dataset.input_shape), np.uint8),
        y_val=np.empty((0,), np.int64),
        num_classes=dataset.num_classes,
    )


def snapshot_epochs(config: TrainConfig, steps_per_epoch: int, k: int) -> list[int]:
    """The ``k`` epochs whose weights a snapshot ensemble keeps.

    ``cosine_restarts`` (see ``training.train.make_schedule``: cycles of f, 2f and 4f steps,
    f = total // 7) is snapshotted at the last epoch before each restart, where the learning
    rate is lowest. Other schedules, or more snapshots than cycles, take ``k`` evenly spaced
    epochs over the last quarter of training (at least ``k`` epochs), ending at the last.
    """
    if not 1 <= k <= config.epochs:
        raise ValueError(f"snapshots must be from 1 to the {count_of(config.epochs, 'epoch')} trained, got {k=}")
    if config.schedule == "cosine_restarts":
        first = max(1, config.epochs * steps_per_epoch // 7)
        ends = sorted({max(1, first * (2**c - 1) // steps_per_epoch) for c in (1, 2, 3)})
        ends = [e for e in ends if e <= config.epochs]
        if len(ends) >= k:
            return ends[-k:]
    tail = max(k, math.ceil(config.epochs / 4))
    step = (tail - 1) / (k - 1) if k > 1 else 0.0
    # floor(x + 0.5) rather than round(): banker's rounding could map two epochs to one.
    return sorted(config.epochs - math.floor(i * step + 0.5) for i in range(k))


class SnapshotSaver(keras.callbacks.Callback):
    """Keeps the weights of the chosen (1-based) epochs: ``files`` maps each epoch saved to its file,
    in training order (a run that diverged early saves fewer)."""

    def __init__(self, epochs: list[int], directory: Path) -> None:
        super().__init__()
        self.epochs, self.directory = set(epochs), directory
        self.files: dict[int, Path] = {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 not in self.epochs:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(path)
        self.files[epoch + 1] = path


def ensemble_accuracy(result: TrainResult, weight_files: list[Path], x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Accuracy of the mean softmax of ``result.model`` loaded with each weight file in turn.

    Leaves ``result.model`` holding the last file's weights.
    """
    xs = normalize(x, *result.normalization)
    probabilities = np.zeros((len(x), int(result.model.output.shape[-1])), np.float64)
    for path in weight_files:
        result.model.load_weights(path)
        logits = result.model.predict(xs, batch_size=batch_size, verbose=0)
        probabilities += keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return accuracy(probabilities, y)


def retrain(
    export: dict[str, Any],
    dataset: ImageDataset,
    subset_indices: np.ndarray,
    *,
    seeds: int = RetrainOptions.seeds,
    tta: bool = False,
    snapshots: int = RetrainOptions.snapshots,
    out_dir: str | Path,
    epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains the exported config on all chosen images for ``seeds`` seeds and tests each once.

    Args:
        export: What ``kilotune export`` wrote; its config's seed is the first seed.
        dataset: The data (its test set is used once per seed).
        subset_indices: The chosen images, indices into the training set.
        seeds: Runs with seeds ``config.seed``, ``config.seed + 1``, ...
        tta: Also report accuracy with horizontal-flip test-time augmentation.
        snapshots: If positive, also report a snapshot ensemble of this many epochs.
        out_dir: Gets ``seed-<s>/model.keras`` per seed (plus snapshot weights) and ``results.json``.
        epochs: Overrides the config's epochs.
        progress: A line per epoch (elapsed, an estimate of what is left) and per seed.

    Returns:
        What ``results.json`` holds: per-seed figures and mean and std over seeds.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds=}")
    _check_tta(tta, dataset)
    if snapshots < 0:
        raise ValueError(f"snapshots must be 0 (off) or positive, got {snapshots=}")
    config = TrainConfig.from_dict(export["config"])
    if epochs is not None:
        config = config.replace(epochs=epochs)
    data = all_chosen(dataset, subset_indices)
    if snapshots:
        snapshot_epochs(config, batches_per_epoch(config, len(data.x_train)), snapshots)  # a bad --snapshots fails before any training
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    started = time.perf_counter()
    for i in range(seeds):
        seed_config = config.replace(seed=config.seed + i)
        if progress:
            print(f"seed {seed_config.seed} ({i + 1}/{seeds}): {config.arch}, {count_of(config.epochs, 'epoch')} on {len(data.x_train)} {dataset.name} images", flush=True)
        run = _retrain_one(seed_config, data, dataset, tta=tta, snapshots=snapshots, seed_dir=out_dir / f"seed-{seed_config.seed}", progress=progress)
        runs.append(run)
        if progress:
            extras = "".join(f", {k.removesuffix('_test_accuracy')} {run[k]:.4f}" for k in ("tta_test_accuracy", "snapshot_test_accuracy") if run.get(k) is not None)
            print(f"seed {seed_config.seed}: test accuracy {run['test_accuracy']:.4f}{extras} ({run['status']})", flush=True)
            if i + 1 < seeds:  # each seed's own lines estimate that seed; this one, the whole retrain
                elapsed = time.perf_counter() - started
                print(f"retrain: {i + 1}/{seeds} seeds, {duration(elapsed)} elapsed, "
                      f"about {duration(elapsed / (i + 1) * (seeds - i - 1))} left", flush=True)  # fmt: skip
        keras.backend.clear_session()  # free the graph before the next seed's model

    results: dict[str, Any] = {
        "study": export["provenance"].get("study"),
        "trial": export["provenance"].get("trial"),
        "dataset": dataset.name,
        "train_images": len(data.x_train),
        "test_images": len(dataset.x_test),
        "config": config.to_dict(),
        "runs": runs,
        "test_accuracy": _summary([r["test_accuracy"] for r in runs]),
    }
    for key in ("tta_test_accuracy", "snapshot_test_accuracy"):
        if key in runs[0]:
            results[key] = _summary([r[key] for r in runs])
    results.update(provenance=export["provenance"], finished_at=now_iso())
    write_json(results, out_dir / "results.json", sort_keys=True)
    return results


def final_shape(members: int, total_epochs: int, min_member_epochs: int = RetrainOptions.min_member_epochs) -> tuple[int, int]:
    """How many of an ensemble's ``members`` train, and for how many epochs each, in ``total_epochs``
    in all: as many as get ``min_member_epochs`` each (at least one), the total shared among them.

    Raises:
        ValueError: if ``members`` or ``total_epochs`` is under 1.
    """
    if members < 1 or total_epochs < 1 or min_member_epochs < 1:
        raise ValueError(f"an ensemble's shape needs members, total_epochs and min_member_epochs of at least 1, got {members=}, {total_epochs=}, {min_member_epochs=}")
    trained = max(1, min(members, total_epochs // min_member_epochs))
    return trained, total_epochs // trained


def retrain_ensemble(
    export: dict[str, Any],
    dataset: ImageDataset,
    subset_indices: np.ndarray,
    *,
    out_dir: str | Path,
    epochs: int | None = None,
    total_epochs: int | None = None,
    tta: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains every member of an ensemble export on all chosen images, tests each once, and
    saves them as one predictor (``ensemble.keras``, ``training.predictor``).

    The ensemble's figure is its predictor's, computed from the members' test probabilities (the
    saved file is checked to give the same): the members' weighted mean softmax, with flip
    test-time augmentation for the members trained with flips where the dataset allows it
    (``ImageDataset.flip_keeps_class``), or for every member where ``tta`` asks for it. (A member
    trained without flips lost 1-3 points with flipped test images on Fashion-MNIST.)

    Args:
        export: What ``kilotune export --ensemble K`` wrote (``ensemble.members``).
        dataset: The data (its test set is used once per member, each of its views once).
        subset_indices: The chosen images, indices into the training set.
        out_dir: Gets ``member-<i>/model.keras``, ``ensemble.keras`` and ``results.json``.
        epochs: Every member's epochs (its schedule spans them); default each member's own.
        total_epochs: Instead of ``epochs``, the epochs of all members together: the first members
            (the winner first) that get ``RetrainOptions.min_member_epochs`` each train, sharing
            them (``final_shape``); results.json's ``shape`` says how many were left out.
        tta: Flip test-time augmentation even where the dataset is not known to allow it.
        progress: A line per epoch and per member.

    Returns:
        What ``results.json`` holds: each member's test accuracy, the ensemble's, the epochs.
    """
    _check_tta(tta, dataset)
    if epochs is not None and total_epochs is not None:
        raise ValueError(f"give a member's epochs or the total, not both: {epochs=}, {total_epochs=}")
    members, shape = export["ensemble"]["members"], None
    if total_epochs is not None:
        trained, epochs = final_shape(len(members), total_epochs, RetrainOptions.min_member_epochs)
        shape = {"total_epochs": total_epochs, "members_exported": len(members), "members_trained": trained,
                 "min_member_epochs": RetrainOptions.min_member_epochs}
        members = members[:trained]  # the CLI says how many trained, from ``shape``
    configs = [TrainConfig.from_dict(m["config"]) for m in members]
    if epochs is not None:
        configs = [c.replace(epochs=epochs) for c in configs]
    flips = [tta or (dataset.flip_keeps_class and c.flip) for c in configs]
    data, out_dir = all_chosen(dataset, subset_indices), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained, rows, member_probabilities, started = [], [], [], time.perf_counter()
    for i, (member, config) in enumerate(zip(members, configs)):
        label = f"member {i + 1}/{len(members)}"
        if progress:
            print(f"{label} (trial {member.get('trial', '-')}, seed {config.seed}): {config.arch}, "
                  f"{count_of(config.epochs, 'epoch')} on {len(data.x_train)} {dataset.name} images", flush=True)
        callbacks = [EpochProgress(label, stream=sys.stdout)] if progress else []
        result = train(config, data, keras_callbacks=callbacks)
        member_dir = out_dir / f"member-{i}"
        member_dir.mkdir(exist_ok=True)
        result.model.save(member_dir / "model.keras")
        views = view_probabilities(result, dataset.x_test, flip_tta=flips[i])  # each view once: the test set is 10,000 images
        member_probabilities.append(np.mean(views, axis=0))
        row = {"trial": member.get("trial"), "weight": member.get("weight", 1), "seed": config.seed, "status": result.status,
               "epochs": len(result.history), "test_accuracy": accuracy(views[0], dataset.y_test),
               "model": f"{member_dir.name}/model.keras"}  # fmt: skip
        if flips[i]:
            row["tta_test_accuracy"] = accuracy(member_probabilities[-1], dataset.y_test)
        rows.append(row)
        trained.append((result.model, result.normalization))
        if progress:
            elapsed = time.perf_counter() - started
            print(f"{label}: test accuracy {row['test_accuracy']:.4f} ({result.status}); {duration(elapsed)} elapsed, "
                  f"about {duration(elapsed / (i + 1) * (len(members) - i - 1))} left", flush=True)
    predictor = ensemble_predictor(trained, [r["weight"] for r in rows], dataset.input_shape, flip_tta=flips)
    predictor.save(out_dir / "ensemble.keras")
    weights = np.asarray([r["weight"] for r in rows], np.float64)
    ensemble = np.tensordot(weights / weights.sum(), np.asarray(member_probabilities), axes=1)
    _check_saved_predictor(out_dir / "ensemble.keras", dataset.x_test, ensemble)
    results: dict[str, Any] = {
        "study": export["provenance"].get("study"),
        "trial": export["provenance"].get("trial"),
        "dataset": dataset.name,
        "train_images": len(data.x_train),
        "test_images": len(dataset.x_test),
        "selection": export["ensemble"].get("selection"),
        "members": rows,
        "ensemble_test_accuracy": accuracy(ensemble, dataset.y_test),
        "flip_tta": flips,
        "final_epochs": [c.epochs for c in configs],
        "total_epochs": sum(c.epochs for c in configs),
        "predictor": "ensemble.keras",
        **({"shape": shape} if shape else {}),
        "test_accuracy": _summary([r["test_accuracy"] for r in rows]),  # the members', one by one
        "provenance": export["provenance"],
        "finished_at": now_iso(),
    }
    write_json(results, out_dir / "results.json", sort_keys=True)
    return results


def _check_saved_predictor(path: Path, x_test: np.ndarray, expected: np.ndarray, images: int = 500) -> None:
    """The ensemble's figure comes from its members' test probabilities, each view computed once;
    the file a user loads must give the same probabilities (checked on the first ``images`` test
    images: the whole test set again would cost as much as every member's test)."""
    saved = load_predictor(path).predict(x_test[:images].astype(np.float32), batch_size=500, verbose=0)
    if not np.allclose(saved, expected[:images], atol=1e-4):
        worst = float(np.max(np.abs(saved - expected[:images])))
        raise RuntimeError(f"the saved predictor {path} does not give its members' mean softmax (largest difference {worst:.2g})")


def _check_tta(tta: bool, dataset: ImageDataset) -> None:
    if tta and not dataset.flip_keeps_class:
        raise ValueError(f"flip test-time augmentation averages over flipped test images, but a horizontal flip changes the class of an image of {dataset.name}")


def _retrain_one(config: TrainConfig, data: TrainData, dataset: ImageDataset, *, tta: bool, snapshots: int, seed_dir: Path, progress: bool) -> dict[str, Any]:
    seed_dir.mkdir(parents=True, exist_ok=True)
    saver = None
    if snapshots:
        saver = SnapshotSaver(snapshot_epochs(config, batches_per_epoch(config, len(data.x_train)), snapshots), seed_dir / "snapshots")
    callbacks = ([saver] if saver else []) + ([EpochProgress(f"seed {config.seed}", stream=sys.stdout)] if progress else [])
    result = train(config, data, keras_callbacks=callbacks)
    model_path = seed_dir / "model.keras"
    result.model.save(model_path)
    last = result.history[-1] if result.history else None
    views = view_probabilities(result, dataset.x_test, flip_tta=tta)
    run: dict[str, Any] = {
        "seed": config.seed,
        "status": result.status,
        "epochs": len(result.history),
        "train_loss": last.loss if last else None,
        "train_accuracy": last.accuracy if last else None,
        "test_accuracy": accuracy(views[0], dataset.y_test),
        "model": f"{seed_dir.name}/{model_path.name}",  # relative to the results file
    }
    if tta:
        run["tta_test_accuracy"] = accuracy(np.mean(views, axis=0), dataset.y_test)
    if saver is not None:
        run["snapshot_epochs"] = sorted(saver.epochs)
        # A run that diverged before the first snapshot epoch has nothing to ensemble.
        run["snapshot_test_accuracy"] = ensemble_accuracy(result, list(saver.files.values()), dataset.x_test, dataset.y_test) if saver.files else None
    return run


def _summary(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation over the seeds that have a value (std 0 for one)."""
    known = [float(v) for v in values if v is not None]
    return {
        "mean": float(np.mean(known)) if known else None,
        "std": float(np.std(known, ddof=1)) if len(known) > 1 else 0.0,
        "values": values,
    }
