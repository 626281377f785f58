"""A study made from its options: ``run_options`` checks what a command line or ``kilotune.run`` gives
and makes ``RunOptions`` (search/settings.py); ``create`` creates or joins the study they describe
(``kilotune study create``, ``kilotune run``) and queues its warm start.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import optuna

from kilotune.models.names import listing
from kilotune.search.attrs import PRESET, PRESET_CONFIG
from kilotune.search.presets import PRESETS, check_presets
from kilotune.search.settings import RunOptions, StudySettings, checked_option, options_of
from kilotune.search.space import SearchSpace, params_for
from kilotune.search.storage import local_path, open_storage, storage_url
from kilotune.search.study import create_study, recorded_budget
from kilotune.subset.datasets import check_dataset_name, load_dataset
from kilotune.subset import features
from kilotune.subset.files import cache_dir, count_of, installed_version, now_iso
from kilotune.subset.subsetfile import load_subset, whole_training_set
from kilotune.training.config import TrainConfig

RUN_TRIALS = 30  # a local run's trial budget where none is given and its study records none: it must end by itself


def run_options(given: Mapping[str, Any], *, run: bool = True) -> RunOptions:
    """The options ``given`` by their Python names (what a command line parsed, ``kilotune.run``'s
    keyword arguments), checked before any storage is opened or data loaded.

    The storage URL is resolved here, once, and the space file read. Without a budget a run
    (``run``) takes its study's recorded budget, else ``RUN_TRIALS``; ``study create`` takes none.

    Raises:
        ValueError: for a name ``run`` does not have (listing those it has), or a value an option
            does not take (naming both).
    """
    declared = {**options_of(RunOptions), **options_of(StudySettings)}
    if unknown := sorted(set(given) - set(declared)):
        raise ValueError(f"unknown option(s) {listing(unknown, 'and')} for run; allowed: {listing(sorted(declared))}")
    values = {declared[name].name: checked_option(name, value, declared[name]) for name, value in given.items()}
    run_values = {name: values.pop(name) for name in [f.name for f in options_of(RunOptions).values()] if name in values}
    chosen = {**{f.name: f.default for f in options_of(RunOptions).values()}, **run_values}
    check_presets(chosen["presets"])
    dataset = check_dataset_name(chosen["dataset"], chosen["data_dir"])
    space = SearchSpace.from_file(chosen["space"])[1] if chosen["space"] else {}
    url = storage_url(chosen["storage"])
    # Every setting is checked before the storage is made or data loaded (minutes on a first run).
    settings = StudySettings(dataset=dataset, space=space, kilotune_version=installed_version("kilotune"), **values)
    if run and settings.n_trials is None and settings.timeout_s is None:
        # An existing study continues with the budget it records; only a new one takes the default.
        recorded = recorded_budget(chosen["study"], open_storage(url)) if not _new_file(url) else None
        n_trials, timeout_s = recorded if recorded and any(v is not None for v in recorded) else (RUN_TRIALS, None)
        # Made anew, not replaced: the cross-validation's share follows the budget.
        settings = StudySettings(dataset=dataset, space=space, kilotune_version=settings.kilotune_version,
                                 **{**values, "n_trials": n_trials, "timeout_s": timeout_s})  # fmt: skip
    return RunOptions(settings, **{**run_values, "dataset": dataset, "storage": url})


def create(options: RunOptions) -> tuple[optuna.Study, bool]:
    """Creates (or joins) the study ``options`` describe, with its data's checksums; queues a new
    study's warm start. Returns the study and whether this call created it."""
    if not _new_file(options.storage):
        open_storage(options.storage)  # fail fast on a bad URL or an unreachable server, before loading data
    dataset = load_dataset(options.dataset, options.data_dir)
    if not options.subset and features.DEFAULT_METHOD != "random" and not features.default_subset_path(dataset.name).is_file():
        # The first run on a machine is silent for minutes otherwise (random needs no features).
        print(f"building the default subset of {dataset.name} once: trains a feature extractor on the whole "
              f"training set (minutes on a GPU, up to an hour on a busy CPU; a line per epoch follows); "
              f"cached as {features.default_subset_path(dataset.name)}", file=sys.stderr, flush=True)
    if options.subset == "all":
        subset = whole_training_set(dataset, cache_dir() / "subsets")
    else:
        subset = load_subset(options.subset or features.ensure_default_subset(dataset), dataset)
    settings = dataclasses.replace(options.settings, dataset=dataset.name, dataset_checksum=dataset.checksum,
                                   subset_path=str(subset.path.resolve()), subset_checksum=subset.checksum, created_at=now_iso())  # fmt: skip
    storage = open_storage(options.storage)  # a new SQLite file is made only now, when the data is there
    study, created = create_study(options.study, settings, storage, keep_settings=options.keep_settings, subset_content=subset.to_dict())
    if created:
        first = list(options.presets)  # ``run --preset``: those first
        for line in warm_start(study, settings, [*first, *(p for p in PRESETS if p not in first)] if options.warm_start else first):
            print(line, file=sys.stderr, flush=True)
    return study, created


def _new_file(url: str) -> bool:
    """Whether ``url`` names a SQLite or journal file that does not exist yet (opening it makes it)."""
    path = local_path(url)
    return path is not None and not path.exists()


def warm_start(study: optuna.Study, settings: StudySettings, names: list[str]) -> list[str]:
    """Queues the presets ``names``, projected into the study's space at its epochs, as its next
    trials (user attribute ``preset``), so a search is never worse than the recipes it could run.

    At most ``n_trials`` are queued: queued trials always run. Returns one line per preset.
    """
    space, lines = SearchSpace.from_spec(settings.space), []
    for name in check_presets(names):
        config, note = space.project(PRESETS[name], settings.epochs)
        if config is None:
            lines.append(f"warm start: skipped preset {name}: {note}")
        elif settings.n_trials is not None and len(study.get_trials(deepcopy=False)) >= settings.n_trials:
            lines.append(f"warm start: skipped preset {name}: the budget of {count_of(settings.n_trials, 'trial')} is queued")
        else:
            enqueue_config(study, name, config)
            lines.append(f"warm start: queued preset {name} ({note})")
    return lines


def enqueue_config(study: optuna.Study, label: str, config: TrainConfig) -> None:
    """Queues ``config`` as the study's next trial; ``SearchSpace.suggest`` trains it exactly."""
    study.enqueue_trial(params_for(config), user_attrs={PRESET_CONFIG: config.to_dict(), PRESET: label})
