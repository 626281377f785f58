"""The subset file: one JSON document naming the chosen training images and how they were chosen.

    {"format": "kilotune-subset/1", "dataset": "fashion-mnist", "dataset_checksum": "sha256:...",
     "method": "max-sum", "params": {}, "seed": 0, "per_class": 100,
     "indices": [...], "labels": [...],   # into the official training set
     "extractor": {"path": ..., "train_accuracy": ..., "arch": ...} or null,
     "objectives": {"total": {...}, "per_class": {...}} or null,
     "created": "2025-...Z", "kilotune_version": "0.1.0"}

The dataset checksum ties a subset to the exact data it indexes: loading it against other
data is an error rather than a silently different training set.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from kilotune.models.names import listing
from kilotune.subset.datasets import ImageDataset
from kilotune.subset.files import cache_dir, installed_version, now_iso, read_json, write_json

FORMAT = "kilotune-subset/1"
_REQUIRED = ("format", "dataset", "dataset_checksum", "method", "params", "seed", "per_class", "indices", "labels")


@dataclass(frozen=True, eq=False)  # eq=False: comparing index arrays with == is ambiguous.
class SubsetFile:
    """A loaded subset file; the attributes mirror the JSON keys.

    Attributes:
        indices: Sorted ``int64`` indices into the dataset's official training set.
        labels: ``int64`` label of each index.
        path: Where it was read from or written to (not stored in the file).
    """

    dataset: str
    dataset_checksum: str
    method: str
    params: dict[str, Any]
    seed: int
    per_class: int
    indices: np.ndarray
    labels: np.ndarray
    extractor: dict[str, Any] | None = None
    objectives: dict[str, Any] | None = None
    created: str = ""
    kilotune_version: str = ""
    path: Path | None = field(default=None, repr=False)

    @functools.cached_property
    def checksum(self) -> str:
        """``"sha256:<hex>"`` of the indices: what a study records to name its training set."""
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(self.indices, dtype="<i8").tobytes()).hexdigest()

    def counts(self) -> dict[int, int]:
        """Number of chosen images per label."""
        labels, counts = np.unique(self.labels, return_counts=True)
        return {int(lab): int(c) for lab, c in zip(labels, counts)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "dataset_checksum": self.dataset_checksum,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "per_class": self.per_class,
            "indices": self.indices.tolist(),
            "labels": self.labels.tolist(),
            "extractor": self.extractor,
            "objectives": self.objectives,
            "created": self.created,
            "kilotune_version": self.kilotune_version,
        }


def write_subset(
    path: str | Path,
    dataset: ImageDataset,
    indices: np.ndarray,
    *,
    method: str,
    params: dict[str, Any] | None = None,
    seed: int,
    per_class: int,
    extractor: dict[str, Any] | None = None,
    objectives: dict[str, Any] | None = None,
) -> SubsetFile:
    """Writes a subset of ``dataset``'s training set, atomically.

    Args:
        path: The JSON file to write; parent directories are created.
        dataset: The data the indices point into; its name and checksum are recorded.
        indices: Indices into ``dataset.x_train``; stored sorted.
        method: Selection method name.
        params: Its parameters.
        seed: Selection seed.
        per_class: Images per class.
        extractor: ``{"path", "train_accuracy", "arch"}`` of the feature extractor, or None.
        objectives: What :func:`subset.objectives.objectives` returned, or None.

    Returns:
        The written file, as :func:`load_subset` would read it.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if indices.ndim != 1 or len(np.unique(indices)) != len(indices):
        raise ValueError(f"indices must be a 1-D array without duplicates, got shape {indices.shape}")
    if len(indices) and not 0 <= indices[0] <= indices[-1] < len(dataset.y_train):
        raise ValueError(f"indices must be in [0, {len(dataset.y_train)}), got [{indices[0]}, {indices[-1]}]")
    subset = SubsetFile(
        dataset=dataset.name,
        dataset_checksum=dataset.checksum,
        method=method,
        params=dict(params or {}),
        seed=int(seed),
        per_class=int(per_class),
        indices=indices,
        labels=np.asarray(dataset.y_train[indices], dtype=np.int64),
        extractor=extractor,
        objectives=objectives,
        created=now_iso(),
        kilotune_version=installed_version(),
        path=Path(path),
    )
    write_json(subset.to_dict(), path, indent=1)  # a reader never sees half a file
    return subset


def whole_training_set(dataset: ImageDataset, directory: str | Path) -> SubsetFile:
    """A subset file choosing every training image, for data that already is the chosen images
    (your own 1000); written once into ``directory``, named by the data's checksum."""
    path = Path(directory) / f"{Path(dataset.name).stem}-all-{dataset.checksum[7:19]}.json"
    if path.is_file():
        with contextlib.suppress(ValueError):  # corrupt: write it again
            return load_subset(path, dataset)
    counts = np.bincount(dataset.y_train)
    return write_subset(path, dataset, np.arange(len(dataset.y_train)), method="all", seed=0, per_class=int(counts.max()))


def load_subset(path: str | Path, dataset: ImageDataset | None = None) -> SubsetFile:
    """Reads and validates a subset file.

    Args:
        path: The JSON file.
        dataset: If given, the subset must have been built for exactly this data.

    Raises:
        ValueError: The file is missing, not a subset file, malformed, or (with ``dataset``)
            built for other data.
    """
    path = Path(path)
    return subset_from_dict(read_json(path, "subset file"), path, dataset)


def subset_from_dict(data: Any, path: Path, dataset: ImageDataset | None = None) -> SubsetFile:
    """A subset file's parsed JSON (``SubsetFile.to_dict()``, as a study or an export stores it),
    validated as ``load_subset`` validates a file; ``path`` names it in errors and becomes its ``path``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a subset file: format is {got!r}, expected {FORMAT!r}")
    if missing := [k for k in _REQUIRED if k not in data]:
        raise ValueError(f"subset file {path} is missing {listing(missing, 'and')}")
    indices, labels = _int_array(data["indices"], path, "indices"), _int_array(data["labels"], path, "labels")
    if len(indices) != len(labels) or len(np.unique(indices)) != len(indices) or (len(indices) and indices.min() < 0):
        raise ValueError(f"subset file {path}: indices must be distinct, non-negative and match labels ({len(indices)} indices, {len(labels)} labels)")
    if not isinstance(data["params"], dict) or not all(isinstance(data[k], str) for k in ("dataset", "dataset_checksum", "method")):
        raise ValueError(f"subset file {path}: dataset, dataset_checksum and method must be strings and params an object")
    subset = SubsetFile(
        dataset=data["dataset"],
        dataset_checksum=data["dataset_checksum"],
        method=data["method"],
        params=data["params"],
        seed=_int(data["seed"], path, "seed"),
        per_class=_int(data["per_class"], path, "per_class"),
        indices=indices,
        labels=labels,
        extractor=data.get("extractor"),
        objectives=data.get("objectives"),
        created=str(data.get("created", "")),
        kilotune_version=str(data.get("kilotune_version", "")),
        path=path,
    )
    if dataset is not None:
        check_dataset(subset, dataset)
    return subset


def cached_subset_path(dataset: ImageDataset, checksum: str) -> Path:
    """Where this host keeps the subset ``checksum`` of ``dataset`` that a study or an export
    carries: ``<cache>/subsets/<dataset>-<its checksum>-<the subset's>.json`` (the subset's
    checksum is of its indices alone, which another dataset's subset may share)."""
    return cache_dir() / "subsets" / f"{Path(dataset.name).stem}-{dataset.checksum[7:19]}-{checksum.removeprefix('sha256:')[:16]}.json"


def find_subset(
    dataset: ImageDataset, checksum: str, *, given: str | Path | None = None, recorded: str | Path | None = None,
    stored: dict[str, Any] | None = None,
) -> SubsetFile:
    """The subset ``checksum`` of ``dataset`` as this host finds it, for a study (or an export)
    made on another host.

    In this order: ``given`` (an explicit ``--subset``, returned as read: the caller compares its
    checksum and names the mismatch); the ``recorded`` path, if the file there has this checksum;
    this host's cache (``cached_subset_path``); else ``stored``, the copy the study carries,
    written into the cache (atomically: workers on one host may race) and returned.

    Args:
        dataset: The data loaded on this host; every subset returned was built for it.
        checksum: The ``SubsetFile.checksum`` the study recorded.
        given: A subset file the user named.
        recorded: The path the study's creator recorded (absolute on its host).
        stored: The subset file's content that the study or export carries (None: from before it did).

    Raises:
        ValueError: one line naming each place tried and why it did not serve.
    """
    if given:
        return load_subset(given, dataset)
    cached, tried = cached_subset_path(dataset, checksum), []
    for path in (recorded, cached):
        if not path:
            continue
        try:
            subset = load_subset(path, dataset)
        except ValueError as e:  # missing, unreadable or for other data: the next place may serve
            tried.append(str(e))
            continue
        if subset.checksum == checksum:
            return subset
        tried.append(f"{path} is another subset ({subset.checksum[:19]}...)")
    if stored is None:
        raise ValueError(f"subset {checksum[:19]}... is not on this host ({'; '.join(tried)}), and its study stores "
                         "no copy of it (made before studies did): pass --subset with that file")  # fmt: skip
    subset = subset_from_dict(stored, cached, dataset)
    if subset.checksum != checksum:
        raise ValueError(f"the stored copy of subset {checksum[:19]}... is another subset ({subset.checksum[:19]}...)")
    write_json(subset.to_dict(), cached, indent=1)
    return subset


def check_dataset(subset: SubsetFile, dataset: ImageDataset) -> None:
    """Raises ValueError unless ``subset`` was built for exactly ``dataset``."""
    if subset.dataset_checksum != dataset.checksum:
        raise ValueError(
            f"subset {subset.path} was built for other data: {subset.dataset} ({subset.dataset_checksum[:19]}...), "
            f"but the loaded data is {dataset.name} ({dataset.checksum[:19]}...)"
        )
    if len(subset.indices) and (subset.indices.max() >= len(dataset.y_train) or np.any(dataset.y_train[subset.indices] != subset.labels)):
        raise ValueError(f"subset {subset.path}: indices or labels do not match {dataset.name}'s training set")


def _int_array(value: Any, path: Path, key: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"subset file {path}: {key} must be a list of integers")
    return np.asarray(value, dtype=np.int64)


def _int(value: Any, path: Path, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"subset file {path}: {key} must be an integer, got {value!r}")
    return value
