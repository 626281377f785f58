"""``kilotune study create|list|delete|enqueue|extend``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from kilotune.search.attrs import PRESET, PRESET_CONFIG


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="storage URL (default: $KILOTUNE_STORAGE, else sqlite:///kilotune.db)")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``study create`` and ``run`` share: the data, the protocol, the search and its budget."""
    parser.add_argument("--dataset", default="cifar10", help="cifar10, fashion-mnist or FILE.npz of your own arrays (default: %(default)s)")
    parser.add_argument("--data-dir", help="where the dataset files are (default: per dataset, see README)")
    parser.add_argument("--subset", help="subset file to train on, or all: every training image (default: build/reuse the cached default subset, random)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="stratified hold-out inside the subset (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per trial, the pruner's max resource (default: %(default)s)")
    parser.add_argument("--space", help="YAML/JSON file that narrows the space or fixes values, or a built-in: small")
    parser.add_argument("--sampler", default="tpe", help="tpe or random (default: %(default)s)")
    parser.add_argument("--pruner", default="hyperband", help="hyperband, successive-halving, median or none (default: %(default)s)")
    parser.add_argument("--n-trials", type=int, help="global trial budget for the whole study")
    parser.add_argument("--timeout", type=float, help="global time budget in seconds, from the study's creation")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random)")
    parser.add_argument("--objective-epochs", type=int, default=3,
                        help="a trial's value is the mean validation accuracy of its last this many epochs (default: %(default)s)")
    parser.add_argument("--cv-top-k", type=int, default=3,
                        help="re-train the top this many trials on the other folds and pick the winner by the mean; 0: off (default: %(default)s)")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="do not queue the presets (projected into the space) as a new study's first trials")
    parser.add_argument("--keep-settings", action="store_true",
                        help="join an existing study of this name as recorded, though these settings differ (default: refuse)")


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

    extend = study_sub.add_parser("extend", help="change a study's budget (running workers follow); recorded in the study")
    extend.add_argument("--study", required=True)
    add_storage_argument(extend)
    extend.add_argument("--n-trials", type=int, help="the new total trial budget (more or fewer than now)")
    extend.add_argument("--timeout", type=float, help="the new total time budget in seconds, from the study's creation")
    extend.set_defaults(func=run_extend)


def create_from_args(args: argparse.Namespace) -> tuple[Any, bool]:
    """Creates (or joins) the study described by ``args``; shared by ``study create`` and ``run``."""
    from kilotune.search.space import PRESETS, SearchSpace
    from kilotune.search.study import StudySettings, create_study, now_iso, open_storage
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import DEFAULT_METHOD, cache_dir, default_subset_path, ensure_default_subset
    from kilotune.subset.subsetfile import load_subset, whole_training_set

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
        objective_epochs=args.objective_epochs,
        cv_top_k=args.cv_top_k,
        kilotune_version=version(),
    )
    storage = open_storage(args.storage)  # fail fast on a bad URL before loading data
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
    study, created = create_study(args.study, settings, storage, keep_settings=args.keep_settings)
    if created:
        first = getattr(args, "preset", [])  # ``run --preset``: those first
        for line in warm_start(study, settings, [*first, *(p for p in PRESETS if p not in first)] if args.warm_start else first):
            print(line, file=sys.stderr, flush=True)
    else:  # with --keep-settings, what the study records is what runs (and `run` prints)
        args.n_trials, args.timeout = study.user_attrs.get("n_trials"), study.user_attrs.get("timeout_s")
    return study, created


def warm_start(study: Any, settings: Any, names: list[str]) -> list[str]:
    """Queues the presets ``names``, projected into the study's space at its epochs, as its next
    trials (user attribute ``preset``), so a search is never worse than the recipes it could run.

    At most ``n_trials`` are queued: queued trials always run. Returns one line per preset.
    """
    from kilotune.search.space import PRESETS, SearchSpace

    space, lines = SearchSpace.from_spec(settings.space), []
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        config, note = space.project(PRESETS[name], settings.epochs)
        if config is None:
            lines.append(f"warm start: skipped preset {name}: {note}")
        elif settings.n_trials is not None and len(study.get_trials(deepcopy=False)) >= settings.n_trials:
            lines.append(f"warm start: skipped preset {name}: the budget of {settings.n_trials} trials is queued")
        else:
            enqueue_config(study, name, config)
            lines.append(f"warm start: queued preset {name} ({note})")
    return lines


def enqueue_config(study: Any, label: str, config: Any) -> None:
    """Queues ``config`` as the study's next trial; ``SearchSpace.suggest`` trains it exactly."""
    from kilotune.search.space import params_for

    study.enqueue_trial(params_for(config), user_attrs={PRESET_CONFIG: config.to_dict(), PRESET: label})


def run_create(args: argparse.Namespace) -> int:
    study, created = create_from_args(args)
    print(f"{'created' if created else 'exists'}: study {study.study_name!r}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    import optuna

    from kilotune.search.study import open_storage
    from kilotune.search.winner import cross_validated_best

    storage = open_storage(args.storage)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if not summaries:
        print("no studies")
    for s in summaries:
        # The winner export writes (a fold trial's value on another fold is not a study's best).
        winner = cross_validated_best(optuna.load_study(study_name=s.study_name, storage=storage))
        best = f"{winner.mean:.4f}" if winner is not None else "-"
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
        enqueue_config(study, label, config)
        print(f"enqueued {label}: {json.dumps(params_for(config))}")
    return 0


def run_extend(args: argparse.Namespace) -> int:
    from kilotune.search.study import extend_budget, load_study, open_storage

    study, _ = load_study(args.study, open_storage(args.storage))
    change = extend_budget(study, n_trials=args.n_trials, timeout_s=args.timeout)
    before, after = change["from"], change["to"]
    print(f"study {args.study!r}: budget {before['n_trials'] or '-'} -> {after['n_trials'] or '-'} trials, "
          f"{before['timeout_s'] or '-'} -> {after['timeout_s'] or '-'} s; running workers follow at their next trial")
    return 0


REGISTER = [register_study]
