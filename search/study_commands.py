"""``kilotune study create|list|delete|enqueue``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="storage URL (default: $KILOTUNE_STORAGE, else sqlite:///kilotune.db)")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``study create`` and ``run`` share: the data, the protocol, the search and its budget."""
    parser.add_argument("--dataset", default="cifar10", help="cifar10 or fashion-mnist (default: %(default)s)")
    parser.add_argument("--data-dir", help="where the dataset files are (default: per dataset, see README)")
    parser.add_argument("--subset", help="subset file to train on (default: build/reuse the cached default subset, subset.features.DEFAULT_METHOD: random)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="stratified hold-out inside the subset (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per trial, the pruner's max resource (default: %(default)s)")
    parser.add_argument("--space", help="YAML/JSON file that narrows the space or fixes values, or a built-in: small")
    parser.add_argument("--sampler", default="tpe", help="tpe or random (default: %(default)s)")
    parser.add_argument("--pruner", default="hyperband", help="hyperband, successive-halving, median or none (default: %(default)s)")
    parser.add_argument("--n-trials", type=int, help="global trial budget for the whole study")
    parser.add_argument("--timeout", type=float, help="global time budget in seconds, from the study's creation")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random)")


def register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="create, list or delete studies; enqueue known good configs")
    study_sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)

    create = study_sub.add_parser("create", help="create a study (idempotent; safe when many workers start at once)")
    create.add_argument("--study", required=True, help="study name")
    add_storage_argument(create)
    add_study_arguments(create)
    create.set_defaults(func=run_create)

    listing = study_sub.add_parser("list", help="list studies with their trial counts and best value")
    add_storage_argument(listing)
    listing.set_defaults(func=run_list)

    delete = study_sub.add_parser("delete", help="delete a study and all its trials")
    delete.add_argument("--study", required=True)
    add_storage_argument(delete)
    delete.set_defaults(func=run_delete)

    enqueue = study_sub.add_parser("enqueue", help="queue known good configurations as the next trials")
    enqueue.add_argument("--study", required=True)
    add_storage_argument(enqueue)
    enqueue.add_argument("--preset", action="append", default=[], help="preset name (repeatable): see README")
    enqueue.add_argument("--config", action="append", default=[], help="TrainConfig JSON file (repeatable)")
    enqueue.set_defaults(func=run_enqueue)


def create_from_args(args: argparse.Namespace) -> tuple[Any, bool]:
    """Creates (or joins) the study described by ``args``; shared by ``study create`` and ``run``."""
    from kilotune.search.space import SearchSpace
    from kilotune.search.study import StudySettings, create_study, now_iso, open_storage
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import default_subset_path, ensure_default_subset
    from kilotune.subset.subsetfile import load_subset

    from kilotune.search.cli import version

    space_spec: dict = {}
    if args.space:
        _, space_spec = SearchSpace.from_file(args.space)
    # Every setting is checked before the storage is opened or data loaded (minutes on a first run).
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
        kilotune_version=version(),
    )
    storage = open_storage(args.storage)  # fail fast on a bad URL before loading data
    dataset = load_dataset(args.dataset, args.data_dir)
    if not args.subset and not default_subset_path(dataset.name).is_file():
        # The first run on a machine is silent for minutes otherwise.
        print(f"building the default subset of {dataset.name} once (trains a feature extractor: a few "
              f"minutes on a CPU); cached as {default_subset_path(dataset.name)}", file=sys.stderr, flush=True)
    subset_path = args.subset or str(ensure_default_subset(dataset))
    subset = load_subset(subset_path, dataset)
    settings = dataclasses.replace(
        settings,
        dataset=dataset.name,
        dataset_checksum=dataset.checksum,
        subset_path=str(subset.path.resolve()),
        subset_checksum=subset.checksum,
        created_at=now_iso(),
    )
    return create_study(args.study, settings, storage)


def run_create(args: argparse.Namespace) -> int:
    study, created = create_from_args(args)
    print(f"{'created' if created else 'exists'}: study {study.study_name!r}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    import optuna

    from kilotune.search.study import open_storage

    summaries = optuna.get_all_study_summaries(open_storage(args.storage), include_best_trial=True)
    if not summaries:
        print("no studies")
    for s in summaries:
        best = f"{s.best_trial.value:.4f}" if s.best_trial is not None else "-"
        print(f"{s.study_name}\ttrials={s.n_trials}\tbest={best}\tdataset={s.user_attrs.get('dataset', '?')}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    import optuna

    from kilotune.search.study import load_study, open_storage

    storage = open_storage(args.storage)
    load_study(args.study, storage)  # unknown names get the listing error
    optuna.delete_study(study_name=args.study, storage=storage)
    print(f"deleted: study {args.study!r}")
    return 0


def run_enqueue(args: argparse.Namespace) -> int:
    from kilotune.search.space import PRESETS, params_for
    from kilotune.search.study import load_study, open_storage
    from kilotune.workers.config import TrainConfig

    study, settings = load_study(args.study, open_storage(args.storage))
    configs: list[tuple[str, TrainConfig]] = []
    for name in args.preset:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        configs.append((name, PRESETS[name]))
    configs += [(path, TrainConfig.from_json(path)) for path in args.config]
    if not configs:
        raise ValueError(f"nothing to enqueue: give --preset ({', '.join(sorted(PRESETS))}) or --config FILE")
    for label, config in configs:
        config = config.replace(epochs=settings.epochs)
        study.enqueue_trial(params_for(config), user_attrs={"preset_config": config.to_dict(), "preset": label})
        print(f"enqueued {label}: {json.dumps(params_for(config))}")
    return 0


REGISTER = [register_study]
