"""A study made from a command's options: ``kilotune study create`` and ``kilotune run`` (and
``kilotune.run``) create or join it here, and queue its warm start.

The imports are inside the functions: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from kilotune.search.attrs import PRESET, PRESET_CONFIG


def create_from_args(args: argparse.Namespace, default_trials: int | None = None) -> tuple[Any, bool]:
    """Creates (or joins) the study described by ``args``; shared by ``study create`` and ``run``.

    Args:
        args: The command's options.
        default_trials: Where ``args`` give no budget: a new study's trial budget, while an
            existing study continues with the budget it records (``run`` must end by itself).
    """
    from kilotune.search.presets import PRESETS
    from kilotune.search.space import SearchSpace
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage, storage_url
    from kilotune.search.study import create_study, recorded_budget
    from kilotune.subset.datasets import check_dataset_name, load_dataset
    from kilotune.subset.features import DEFAULT_METHOD, cache_dir, default_subset_path, ensure_default_subset
    from kilotune.subset.files import installed_version, now_iso
    from kilotune.subset.subsetfile import load_subset, whole_training_set

    space_spec: dict = {}
    if args.space:
        _, space_spec = SearchSpace.from_file(args.space)
    check_dataset_name(args.dataset, args.data_dir)
    url = storage_url(args.storage)
    if default_trials is not None and args.n_trials is None and args.timeout is None:
        # An existing study continues with the budget it records; only a new one takes the default.
        recorded = recorded_budget(args.study, open_storage(url)) if not _new_file(url) else None
        args.n_trials, args.timeout = recorded if recorded and any(v is not None for v in recorded) else (default_trials, None)
    # Every setting is checked before the storage is made or data loaded (minutes on a first run).
    settings = StudySettings(
        dataset=args.dataset,
        dataset_checksum="",
        subset_path="",
        subset_checksum="",
        val_fraction=args.val_fraction,
        epochs=args.epochs,
        space=space_spec,
        sampler=args.sampler,
        pruner=args.pruner,
        n_trials=args.n_trials,
        timeout_s=args.timeout,
        seed=args.seed,
        objective_epochs=args.objective_epochs,
        cv_top_k=args.cv_top_k,
        kilotune_version=installed_version("kilotune"),
    )
    if not _new_file(url):
        open_storage(url)  # fail fast on a bad URL or an unreachable server, before loading data
    dataset = load_dataset(args.dataset, args.data_dir)
    if not args.subset and DEFAULT_METHOD != "random" and not default_subset_path(dataset.name).is_file():
        # The first run on a machine is silent for minutes otherwise (random needs no features).
        print(f"building the default subset of {dataset.name} once: trains a feature extractor on the whole "
              f"training set (minutes on a GPU, up to an hour on a busy CPU; a line per epoch follows); "
              f"cached as {default_subset_path(dataset.name)}", file=sys.stderr, flush=True)
    if args.subset == "all":
        subset = whole_training_set(dataset, cache_dir() / "subsets")
    else:
        subset = load_subset(args.subset or ensure_default_subset(dataset), dataset)
    settings = dataclasses.replace(
        settings,
        dataset=dataset.name,
        dataset_checksum=dataset.checksum,
        subset_path=str(subset.path.resolve()),
        subset_checksum=subset.checksum,
        created_at=now_iso(),
    )
    storage = open_storage(url)  # a new SQLite file is made only now, when the data is there
    study, created = create_study(args.study, settings, storage, keep_settings=args.keep_settings)
    if created:
        first = getattr(args, "preset", [])  # ``run --preset``: those first
        for line in warm_start(study, settings, [*first, *(p for p in PRESETS if p not in first)] if args.warm_start else first):
            print(line, file=sys.stderr, flush=True)
    return study, created


def _new_file(url: str) -> bool:
    """Whether ``url`` names a SQLite or journal file that does not exist yet (opening it makes it)."""
    from kilotune.search.storage import local_path

    path = local_path(url)
    return path is not None and not path.exists()


def warm_start(study: Any, settings: Any, names: list[str]) -> list[str]:
    """Queues the presets ``names``, projected into the study's space at its epochs, as its next
    trials (user attribute ``preset``), so a search is never worse than the recipes it could run.

    At most ``n_trials`` are queued: queued trials always run. Returns one line per preset.
    """
    from kilotune.search.presets import PRESETS, check_presets
    from kilotune.search.space import SearchSpace
    from kilotune.subset.files import count_of

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


def enqueue_config(study: Any, label: str, config: Any) -> None:
    """Queues ``config`` as the study's next trial; ``SearchSpace.suggest`` trains it exactly."""
    from kilotune.search.space import params_for

    study.enqueue_trial(params_for(config), user_attrs={PRESET_CONFIG: config.to_dict(), PRESET: label})
