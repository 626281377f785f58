"""The options of a study and of a local run, as argparse arguments: ``kilotune study create``
and ``kilotune run`` (cli/) declare them, and the Python API (``kilotune.run``, workers/api.py)
takes its defaults and its option names from the same declarations.
"""

from __future__ import annotations

import argparse


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
    parser.add_argument("--n-trials", type=int, help="global trial budget for the whole study, the cross-validation's fold trials included")
    parser.add_argument("--timeout", type=float, help="global time budget in seconds, from the study's creation")
    parser.add_argument("--seed", type=int, help="sampler seed (default: random)")
    parser.add_argument("--objective-epochs", type=int, default=3,
                        help="a trial's value is the mean validation accuracy of its last this many epochs (default: %(default)s)")
    parser.add_argument("--cv-top-k", type=int,
                        help="re-train the top this many trials on other folds and pick the winner by the mean; 0: off "
                             "(default: up to 3, as a third of --n-trials allows)")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="do not queue the presets (projected into the space) as a new study's first trials")
    parser.add_argument("--keep-settings", action="store_true",
                        help="join an existing study of this name as recorded, though these settings differ (default: refuse)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``kilotune run``'s arguments: the study's, its storage's and the local run's."""
    parser.add_argument("--study", default="kilotune", help="study name (default: %(default)s)")
    add_storage_argument(parser)
    add_study_arguments(parser)
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default: %(default)s)")
    parser.add_argument("--preset", action="append", default=[], help="enqueue this preset first (repeatable)")


def run_arguments(options: dict) -> argparse.Namespace:
    """``options`` as the parsed arguments of ``kilotune run``: its defaults, then these.

    Raises:
        ValueError: for an option ``run`` does not have, listing those it has.
    """
    parser = argparse.ArgumentParser(prog="kilotune run")
    add_run_arguments(parser)
    args = parser.parse_args([])
    allowed = set(vars(args))
    if unknown := sorted(set(options) - allowed):
        raise ValueError(f"unknown option(s) {unknown} for run; allowed: {sorted(allowed)}")
    for key, value in options.items():
        setattr(args, key, value)
    return args
