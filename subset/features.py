"""CNN feature vectors for subset selection, and the cached default subset.

A small CNN is trained once on the *whole* training set (the subset has not been chosen
yet, so nothing else is available) and saved as ``.keras`` with a JSON sidecar holding the
normalisation statistics; its penultimate "features" layer, L2-normalised, is what the
selection methods measure cosine distances on.

Keras is imported inside the functions that need it so that ``subset.features`` stays cheap
to import for code that only wants paths.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import json
import os
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np

from kilotune.models.names import listing
from kilotune.subset.datasets import channel_stats, ImageDataset, normalize
from kilotune.subset.files import cache_dir, file_lock, write_json  # cache_dir: search/create.py imports it from here

EXTRACTOR_ARCH = "resnet9"
EXTRACTOR_WIDTH = 0.25  # 16..128 channels, 128-d features: ~90% on Fashion-MNIST in 3 CPU epochs.
EXTRACTOR_EPOCHS = 3
# Chosen by held-out accuracy (bench/subset_accuracy.py, docs/subset.md): random subsets train
# better than every optimised one, and need no feature extractor.
DEFAULT_METHOD = "random"
DEFAULT_PER_CLASS = 100


@dataclass(frozen=True)
class Extractor:
    """A trained CNN cut at its "features" layer, with the statistics its inputs need.

    Attributes:
        model: Maps normalised images to the (un-normalised) feature vectors.
        mean: Per-channel mean of the training images, in [0, 1].
        std: Per-channel std of the training images.
        metadata: The JSON sidecar (arch, dataset, train_accuracy, ...).
        path: Where the ``.keras`` file is.
    """

    model: Any  # keras.Model; not annotated so that importing this module needs no Keras.
    mean: np.ndarray
    std: np.ndarray
    metadata: dict
    path: Path


def default_extractor_path(dataset_name: str) -> Path:
    return cache_dir() / "extractors" / f"{dataset_name}.keras"


def default_subset_path(dataset_name: str, method: str = DEFAULT_METHOD, per_class: int = DEFAULT_PER_CLASS, seed: int = 0) -> Path:
    return cache_dir() / "subsets" / f"{dataset_name}-{method}-{per_class}pc-seed{seed}.json"


def metadata_path(path: str | Path) -> Path:
    """The JSON sidecar next to an extractor: ``x.keras`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def train_extractor(
    dataset: ImageDataset,
    path: str | Path,
    *,
    epochs: int = EXTRACTOR_EPOCHS,
    seed: int = 0,
    arch: str = EXTRACTOR_ARCH,
    width: float = EXTRACTOR_WIDTH,
    batch_size: int = 128,
    verbose: int = 0,
) -> float:
    """Trains a feature extractor on the whole training set and saves it to ``path``.

    Args:
        dataset: Its full training set is used; its test set is not read.
        path: Where to save the model (must end in ``.keras``); the metadata (statistics,
            training accuracy) goes next to it as ``.json``.
        epochs: Passes over the training set; a few suffice, features need not be perfect.
        seed: Seeds Keras (weights, shuffling, flips).
        arch: Any ``models.build_model`` architecture.
        width: Its channel multiplier.
        batch_size: Images per step.
        verbose: Keras' progress output; 0 prints a line per epoch with an estimate instead.

    Returns:
        The extractor's accuracy on its (flipped) training images in the last epoch. The test
        set is not read: only ``train`` and ``retrain`` look at it.
    """
    import keras

    from kilotune.models import build_model
    from kilotune.models.progress import EpochProgress

    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"an extractor is saved as .keras, got {path=}")
    if epochs < 1:
        raise ValueError(f"{epochs=} must be >= 1")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    mean, std = channel_stats(dataset.x_train)
    x_train = normalize(dataset.x_train, mean, std)
    backbone = build_model(arch, dataset.input_shape, dataset.num_classes, width=width)
    # Flips are applied in a wrapper only so that the saved model is the bare backbone.
    inputs = keras.Input(dataset.input_shape)
    trainer = keras.Model(inputs, backbone(keras.layers.RandomFlip("horizontal", seed=seed)(inputs)))
    steps = epochs * -(-len(x_train) // batch_size)
    trainer.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Without Keras' own output, a line per epoch (and every half minute) with an estimate.
    progress = [] if verbose else [EpochProgress(f"feature extractor ({len(x_train)} {dataset.name} images)")]
    history = trainer.fit(x_train, dataset.y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose, callbacks=progress)
    accuracy = float(history.history["accuracy"][-1])

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")  # Keras insists on the suffix.
    backbone.save(tmp)
    metadata = {
        "arch": arch,
        "width": width,
        "epochs": epochs,
        "seed": seed,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "train_accuracy": accuracy,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    # Sidecar first, model last: a reader that finds the model also finds its statistics.
    write_json(metadata, metadata_path(path), sort_keys=False)
    os.replace(tmp, path)
    return accuracy


def load_extractor(path: str | Path) -> Extractor:
    """Loads a saved extractor and cuts it at its "features" layer.

    Raises:
        ValueError: The model or its metadata is missing or unreadable.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature extractor not found: {path}")
    try:
        metadata = json.loads(metadata_path(path).read_text())
        mean, std = np.asarray(metadata["mean"], np.float32), np.asarray(metadata["std"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"feature extractor {path}: missing or bad metadata {metadata_path(path)} ({e})") from None
    try:
        model = keras.models.load_model(path, compile=False)
        features = keras.Model(model.inputs, model.get_layer("features").output)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile errors... on a bad file.
        raise ValueError(f"feature extractor {path} is not a readable Keras model with a 'features' layer ({type(e).__name__}: {e})") from None
    return Extractor(features, mean, std, metadata, path)


def extract_features(extractor: Extractor, images: np.ndarray, *, batch_size: int = 1000, every_s: float | None = 30.0) -> np.ndarray:
    """Feature vectors of uint8 images, L2-normalised rows, ``float32`` of shape (N, D).

    Args:
        extractor: From :func:`load_extractor`.
        images: uint8 images, (N, H, W, C).
        batch_size: Images a forward pass.
        every_s: Print a progress line (images done, elapsed, estimate) to stderr when this
            long has passed since the last one; None: silent. 50,000 images take minutes on a busy CPU.
    """
    from kilotune.models.progress import duration

    chunks = []
    started = last = time.perf_counter()
    # Normalising chunk by chunk keeps a float copy of the whole training set out of memory.
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size], extractor.mean, extractor.std)
        chunks.append(np.asarray(extractor.model.predict_on_batch(x), np.float32).reshape(len(x), -1))
        done, now = start + len(x), time.perf_counter()
        if every_s is not None and now - last >= every_s and done < len(images):
            last, elapsed = now, now - started
            print(f"features: {done}/{len(images)} images, {duration(elapsed)} elapsed, "
                  f"about {duration(elapsed / done * (len(images) - done))} left", file=sys.stderr, flush=True)  # fmt: skip
    features = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)  # An all-zero vector stays zero instead of NaN.


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """A line when a step of a subset build starts and one with its time when it ends (stderr):
    on a busy CPU each takes from seconds to minutes, after the extractor's own progress."""
    started = time.perf_counter()
    print(f"{what} ...", file=sys.stderr, flush=True)
    yield
    print(f"{what}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def ensure_extractor(dataset: ImageDataset, path: str | Path | None = None, *, epochs: int = EXTRACTOR_EPOCHS, seed: int = 0) -> Path:
    """The extractor at ``path`` (default: the cache), trained there first if it is missing."""
    path = Path(path) if path is not None else default_extractor_path(dataset.name)
    if not path.is_file():
        train_extractor(dataset, path, epochs=epochs, seed=seed)
    return path


def build_subset(
    dataset: ImageDataset,
    method: str,
    out: str | Path,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    extractor_path: str | Path | None = None,
    **params: Any,
) -> Path:
    """Selects a subset of ``dataset``'s training set and writes it as a subset file.

    Args:
        dataset: Data to select from.
        method: A :data:`subset.selection.METHODS` name.
        out: The subset file to write.
        per_class: Images per class.
        seed: Selection seed.
        extractor_path: Extractor for the features; trained there (default: the cache) if
            missing. ``random`` uses none.
        **params: Method parameters (``draws``, ``weight``...).

    Returns:
        ``out``.
    """
    from kilotune.subset import objectives as measures
    from kilotune.subset import selection, subsetfile

    if method not in selection.METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {listing(sorted(selection.METHODS))}")
    if method == "random":
        indices = selection.select(method, None, dataset.y_train, per_class, seed, **params)
        return subsetfile.write_subset(out, dataset, indices, method=method, params=params, seed=seed, per_class=per_class).path
    extractor = load_extractor(ensure_extractor(dataset, extractor_path))
    if extractor.metadata.get("dataset_checksum") not in (None, dataset.checksum):
        raise ValueError(
            f"feature extractor {extractor.path} was trained on other data than {dataset.name} ({dataset.checksum[:19]}...); "
            "delete it to retrain, or pass another extractor"
        )
    with _step(f"subset ({method}): feature vectors of {len(dataset.x_train)} {dataset.name} images"):
        features = extract_features(extractor, dataset.x_train)
    with _step(f"subset ({method}): choosing {per_class} a class"):
        indices = selection.select(method, features, dataset.y_train, per_class, seed, **params)
        objectives = measures.objectives(features, dataset.y_train, indices, upper_bound=method == "max-sum")
    info = {"path": str(extractor.path), "train_accuracy": extractor.metadata.get("train_accuracy"), "arch": extractor.metadata.get("arch")}
    return subsetfile.write_subset(
        out, dataset, indices, method=method, params=params, seed=seed, per_class=per_class, extractor=info, objectives=objectives
    ).path


def ensure_default_subset(
    dataset: ImageDataset,
    *,
    method: str = DEFAULT_METHOD,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = 0,
    extractor_path: str | Path | None = None,
) -> Path:
    """The cached default subset (:data:`DEFAULT_METHOD`, 100 per class) of ``dataset``, built once.

    Used by ``kilotune run`` when no ``--subset`` is given. Several workers may call this at
    once; a file lock makes one of them build (and train the extractor, if the method needs
    one) while the others wait. A cached file is reused only if it records this method,
    per-class count and seed, so a file of another method is never taken for the default.
    """
    from kilotune.subset.subsetfile import load_subset

    path = default_subset_path(dataset.name, method, per_class, seed)
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                cached = load_subset(path, dataset)
                if (cached.method, cached.params, cached.per_class, cached.seed) == (method, {}, per_class, seed):
                    return path
            except ValueError:
                pass  # Corrupt, or built for other data under the same name: rebuild it.
        return build_subset(dataset, method, path, per_class=per_class, seed=seed, extractor_path=extractor_path)
