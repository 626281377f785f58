"""The Python API (``import kilotune``): what ``kilotune run``, ``export`` and ``retrain`` do, from a notebook.

The commands call these same functions. A search runs in worker processes that load the
study's data by name, so a user's own arrays are saved once as an ``.npz`` file (named by
their checksum) and the study records that file as its dataset.

Every argument is checked where it comes in, by the command line's own checks (search/checks.py;
``run``'s options as search/settings.py declares them): a wrong type or value is a ``ValueError``
naming it and what is allowed, before anything is loaded or stored.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import optuna

from kilotune.models.quiet import quiet_tensorflow
from kilotune.search.export import export_study as _export_study
from kilotune.search.ensemble import DEFAULT_SELECTION, SELECTIONS
from kilotune.search.export import check_export, read_export
from kilotune.search.settings import ExportOptions, ReportOptions
from kilotune.search.storage import open_storage, storage_url
from kilotune.training.config import RetrainOptions
from kilotune.search.study import load_study
from kilotune.subset.datasets import ARRAYS_SUFFIX, DATASETS, ImageDataset, check_dataset_name, dataset_from_arrays, load_dataset, save_dataset
from kilotune.subset.files import cache_dir
from kilotune.search.checks import checked, flag, one_of, path_string, readable_file, text, whole_number, writable_directory, writable_file

quiet_tensorflow()  # as the command does, before anything loads TensorFlow
__all__ = ["WorkersFailed", "best", "dataset_from_arrays", "load_dataset", "load_predictor", "report", "retrain", "run", "save_dataset"]

DatasetLike = str | os.PathLike | ImageDataset


class WorkersFailed(RuntimeError):
    """Some worker processes of :func:`run` exited with an error (their output says why)."""


def run(dataset: DatasetLike | None = None, **options: Any) -> optuna.Study:
    """Runs a local search (``kilotune run``): creates or joins the study, trains in worker processes.

    Args:
        dataset: ``"cifar10"`` (the default), ``"fashion-mnist"``, an ``.npz`` file, or your own
            arrays from :func:`dataset_from_arrays` (saved as ``<data_dir or cache>/datasets/<name>-<checksum>.npz``).
        **options: ``kilotune run``'s options by their Python names, declared with their defaults and
            help in ``search.settings.RunOptions`` (``study``, ``storage``, ``data_dir``, ``subset``: a
            file or ``"all"``, every training image, your own 1000; ``space``, ``warm_start``,
            ``keep_settings``, ``workers``, ``presets``: a list of names) and ``StudySettings``
            (``epochs``, ``n_trials``: 30 where neither it nor ``timeout`` is given and the study
            records no budget; ``timeout``, ``val_fraction``, ``sampler``, ``pruner``, ``seed``,
            ``objective_epochs``, ``cv_top_k``).

    Returns:
        The study, loaded with its sampler and pruner.

    Raises:
        ValueError: for an unknown option (naming it and the allowed ones) or a value it does not take.
        WorkersFailed: if a worker process exited with an error.
    """
    from kilotune.search.create import run_options
    from kilotune.workers.local import run_local

    if dataset is not None:
        options["dataset"] = dataset_name(dataset, options.get("data_dir"))
    made = run_options(options)  # each checked as the command checks it
    # run_local forwards Ctrl-C to its workers; a notebook keeps its own handlers afterwards.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = run_local(made)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if code:
        raise WorkersFailed(f"a worker of study {made.study!r} exited with an error; its output above says why")
    return load_study(made.study, open_storage(made.storage))[0]


def best(study: str, *, storage: str | None = None, rank: int = ExportOptions.rank, ensemble: int = ExportOptions.ensemble,
         selection: str = DEFAULT_SELECTION) -> dict[str, Any]:
    """The best configuration of ``study`` with its provenance (what ``kilotune export`` writes).

    Args:
        study: The study name.
        storage: Its storage URL (default: ``$KILOTUNE_STORAGE``, else ``sqlite:///kilotune.db``).
        rank: 1 for the cross-validated winner, 2 for the runner-up, ...
        ensemble: 0 for one configuration; k >= 2 adds an ensemble of k members around the winner
            (``export --ensemble k``), which :func:`retrain` trains and saves as one predictor.
        selection: How the members are chosen: top (the best cross-validated trials), greedy
            (ensemble selection on their out-of-fold predictions) or seeds (the winner k times).

    Returns:
        ``{"config": {...TrainConfig...}, "provenance": {...}}`` (and ``"ensemble"``); ``retrain`` takes it as it is.
    """
    url = storage_url(checked("storage", storage, text, optional=True))
    return _export_study(checked("study", study, text), url, checked("rank", rank, whole_number(1)),
                         checked("ensemble", ensemble, whole_number(0)), checked("selection", selection, one_of(SELECTIONS)))  # fmt: skip


def retrain(
    export: dict[str, Any] | str | os.PathLike,
    *,
    seeds: int = RetrainOptions.seeds,
    epochs: int | None = None,
    total_epochs: int | None = None,
    tta: bool = False,
    snapshots: int = RetrainOptions.snapshots,
    out_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    subset: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains an exported configuration on all chosen images and tests it (``kilotune retrain``).

    Args:
        export: What :func:`best` returned, or the path of an export file.
        seeds: Runs with seeds ``config.seed``, ``config.seed + 1``, ...
        epochs: Overrides the config's epochs (an ensemble's: each member's).
        total_epochs: Instead of ``epochs``, the final step's compute in epochs: one config trains
            that long; an ensemble trains as many members as get ``RetrainOptions.min_member_epochs``
            each (at least one, the winner first), sharing the total (the shape measured to pay,
            docs/benchmarks.md section 10).
        tta: Also report accuracy with horizontal-flip test-time augmentation.
        snapshots: If positive, also report a snapshot ensemble of this many epochs.
        out_dir: Models and ``results.json`` (default: ``retrain-<study>-<trial>/``).
        data_dir: Where the dataset files are.
        subset: The study's subset file where it is not at the exported path.
        progress: A line per epoch and per seed.

    An ensemble export (``best(ensemble=k)``) trains every member instead, for ``epochs`` each,
    saves them as one predictor (``<out_dir>/ensemble.keras``: :func:`load_predictor`) and tests
    each member and the ensemble once.

    Returns:
        What ``results.json`` holds: test accuracy per seed, mean and std (an ensemble: per
        member, and ``ensemble_test_accuracy``).
    """
    export = check_export(export, "the dict given as export") if isinstance(export, dict) else read_export(checked("export", export, readable_file))
    seeds, snapshots = checked("seeds", seeds, whole_number(1)), checked("snapshots", snapshots, whole_number(0))
    epochs = checked("epochs", epochs, whole_number(1), optional=True)
    total_epochs = checked("total_epochs", total_epochs, whole_number(1), optional=True)
    if epochs is not None and total_epochs is not None:
        raise ValueError(f"give epochs (each model's) or total_epochs (all models'), not both: {epochs=}, {total_epochs=}")
    tta, progress = checked("tta", tta, flag), checked("progress", progress, flag)
    out_dir = checked("out_dir", out_dir, writable_directory, optional=True)
    data_dir = checked("data_dir", data_dir, path_string, optional=True)
    subset = checked("subset", subset, readable_file, optional=True)
    if "ensemble" in export and (seeds != 1 or snapshots):
        raise ValueError(f"an ensemble export trains its members once each: give seeds=1 and snapshots=0, not {seeds=}, {snapshots=}")
    from kilotune.training.retrain import load_training_set, retrain_ensemble  # Keras: after the checks
    from kilotune.training.retrain import retrain as retrain_export

    p = export["provenance"]
    dataset, chosen = load_training_set(export, data_dir, subset)
    out_dir = out_dir or f"retrain-{p['study']}-{p['trial']}" + ("-ensemble" if "ensemble" in export else "")
    if "ensemble" in export:
        return retrain_ensemble(export, dataset, chosen.indices, out_dir=out_dir, epochs=epochs, total_epochs=total_epochs, tta=tta, progress=progress)
    return retrain_export(export, dataset, chosen.indices, seeds=seeds, tta=tta, snapshots=snapshots, out_dir=out_dir,
                          epochs=epochs if total_epochs is None else total_epochs, progress=progress)


def load_predictor(path: str | os.PathLike) -> Any:
    """The ensemble :func:`retrain` saved (``<out_dir>/ensemble.keras``) as one Keras model: its
    ``predict`` takes images of 0-255 values and returns the members' mean softmax."""
    from kilotune.training.predictor import load_predictor as load

    return load(checked("path", path, readable_file))


def report(study: str, out: str | os.PathLike, *, storage: str | None = None, top: int = ReportOptions.top) -> Path:
    """Writes the HTML report of ``study`` (``kilotune report``) and returns its path."""
    from kilotune.search.report import write_report

    study, out, top = checked("study", study, text), checked("out", out, writable_file), checked("top", top, whole_number(1))
    opened = open_storage(storage_url(checked("storage", storage, text, optional=True)), must_exist=True)
    loaded, _ = load_study(study, opened)
    return write_report(loaded, opened, out, top=top)


def dataset_name(dataset: DatasetLike, data_dir: str | None = None) -> str:
    """What a study records as its dataset: a built-in name, or the ``.npz`` file workers load.

    In-memory arrays are saved once, named by their checksum, so running again reuses the file.
    """
    if not isinstance(dataset, ImageDataset):
        return check_dataset_name(dataset, data_dir)
    if dataset.name in DATASETS or (dataset.name.endswith(ARRAYS_SUFFIX) and Path(dataset.name).is_file()):
        return dataset.name  # loaded by load_dataset: workers load it the same way
    directory = Path(data_dir) if data_dir else cache_dir() / "datasets"
    path = directory / f"{Path(dataset.name).stem}-{dataset.checksum[7:19]}{ARRAYS_SUFFIX}"
    if not path.is_file():
        save_dataset(dataset, path)
    return str(path.absolute())
