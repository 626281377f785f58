"""``kilotune study create|list|delete|enqueue|extend``."""

from __future__ import annotations

import argparse
import json

from kilotune.cli.options import add_option, add_study, add_study_options, argument, given
from kilotune.search.checks import readable_file
from kilotune.search.settings import RunOptions, StudySettings


def register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="create, list or delete studies; enqueue known good configs")
    study_sub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)

    create = study_sub.add_parser("create", help="create a study (idempotent; safe when many workers start at once)")
    add_study_options(create, run=False)
    create.set_defaults(func=run_create)

    listing = study_sub.add_parser("list", help="list studies with their trial counts and best value")
    add_option(listing, RunOptions, "storage")
    listing.set_defaults(func=run_list)

    delete = study_sub.add_parser("delete", help="delete a study and all its trials")
    add_study(delete)
    delete.set_defaults(func=run_delete)

    enqueue = study_sub.add_parser("enqueue", help="queue known good configurations as the next trials")
    add_study(enqueue)
    add_option(enqueue, RunOptions, "presets", help="preset name (repeatable): see README")
    enqueue.add_argument("--config", action="append", default=[], type=argument(readable_file), help="TrainConfig JSON file (repeatable)")
    enqueue.set_defaults(func=run_enqueue)

    extend = study_sub.add_parser("extend", help="change a study's budget (running workers follow); recorded in the study")
    add_study(extend)
    add_option(extend, StudySettings, "n_trials", help="the new total trial budget (more or fewer than now)")
    add_option(extend, StudySettings, "timeout", help="the new total time budget in seconds, from the study's creation")
    extend.set_defaults(func=run_extend)


def run_create(args: argparse.Namespace) -> int:
    from kilotune.search.create import create, run_options

    study, created = create(run_options(given(args), run=False))
    print(f"{'created' if created else 'exists'}: study {study.study_name!r}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    import optuna

    from kilotune.search.attrs import DATASET
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage, storage_url
    from kilotune.search.winner import StudyTrials, cross_validated_best, is_cv_study

    storage = open_storage(storage_url(args.storage), must_exist=True)
    # A study's fold trials (its companion ``<name>.cv``) are listed with it, as its winner.
    summaries = [s for s in optuna.get_all_study_summaries(storage, include_best_trial=False) if not is_cv_study(s.user_attrs)]
    if not summaries:
        print("no studies")
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        try:
            top_k = StudySettings.from_study(study).cv_top_k
        except ValueError:  # not a kilotune study: its best by value
            top_k = 0
        trials = StudyTrials.read(study, storage)
        winner = cross_validated_best(trials, top_k)  # the winner export writes
        best = f"{winner.mean:.4f}" if winner is not None else "-"
        stderr = f"{winner.stderr:.4f}" if winner is not None and winner.stderr is not None else "-"  # "-": one fold
        print(f"{s.study_name}\ttrials={len(trials.search) + len(trials.folds)}\tbest={best}\tse={stderr}\tdataset={s.user_attrs.get(DATASET, '?')}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    import optuna

    from kilotune.search.storage import open_storage, storage_url
    from kilotune.search.study import load_study
    from kilotune.search.winner import load_cv_study

    storage = open_storage(storage_url(args.storage), must_exist=True)
    study, _ = load_study(args.study, storage)  # unknown names get the listing error
    cv_study = load_cv_study(study, storage)
    optuna.delete_study(study_name=args.study, storage=storage)
    if cv_study is not None:
        optuna.delete_study(study_name=cv_study.study_name, storage=storage)
    print(f"deleted: study {args.study!r}" + (f" and its fold trials, study {cv_study.study_name!r}" if cv_study else ""))
    return 0


def run_enqueue(args: argparse.Namespace) -> int:
    from kilotune.models.names import listing
    from kilotune.search.create import enqueue_config
    from kilotune.search.presets import PRESETS, check_presets
    from kilotune.search.space import params_for
    from kilotune.search.storage import open_storage, storage_url
    from kilotune.search.study import load_study
    from kilotune.training.config import TrainConfig

    configs = [(name, PRESETS[name]) for name in check_presets(args.presets)]  # checked before the storage is opened
    configs += [(path, TrainConfig.from_json(path)) for path in args.config]
    if not configs:
        raise ValueError(f"nothing to enqueue: give --preset ({listing(sorted(PRESETS))}) or --config FILE")
    study, settings = load_study(args.study, open_storage(storage_url(args.storage), must_exist=True))
    for label, config in configs:
        config = config.replace(epochs=settings.epochs)
        enqueue_config(study, label, config)
        print(f"enqueued {label}: {json.dumps(params_for(config))}")
    return 0


def run_extend(args: argparse.Namespace) -> int:
    from kilotune.search.attrs import N_TRIALS, TIMEOUT_S
    from kilotune.search.storage import open_storage, storage_url
    from kilotune.search.study import extend_budget, load_study

    study, _ = load_study(args.study, open_storage(storage_url(args.storage), must_exist=True))
    change = extend_budget(study, n_trials=args.n_trials, timeout_s=args.timeout)
    before, after = change["from"], change["to"]
    print(f"study {args.study!r}: budget {before[N_TRIALS] or '-'} -> {after[N_TRIALS] or '-'} trials, "
          f"{before[TIMEOUT_S] or '-'} -> {after[TIMEOUT_S] or '-'} s; running workers follow at their next trial")
    return 0


REGISTER = [register_study]
