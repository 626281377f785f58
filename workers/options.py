"""The options of a study and of a local run, as argparse arguments: ``kilotune study create``
and ``kilotune run`` (cli/) declare them, and the Python API (``kilotune.run``, workers/api.py)
takes its defaults, its option names and its checks from the same declarations.

The argument types (``whole_number``, ``real``, ``readable_file``, ``writable_file``...) check a
value before anything heavy loads: the command's parser names the option and the value in one
line, and the Python API calls them too (``checked``) for a ``ValueError`` naming both.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kilotune.models.names import listing, shown


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value an option does not take; argparse shows it as ``argument --x: <message>``."""


def whole_number(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    """An argument type: an int (from the command line, its text) in ``[low, high]``; None: unbounded."""
    allowed = "a whole number" + _bounds(low, high)

    def parse(value: Any) -> int:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = int(value)
        if number is None or (low is not None and number < low) or (high is not None and number > high):
            raise BadValue(f"must be {allowed}, got {shown(value)}")
        return number

    return parse


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Callable[[Any], float]:
    """An argument type: a finite float in ``[low, high]`` (``low_open``/``high_open``: without
    that end); None: unbounded."""
    allowed = "a number" + _bounds(low, high, low_open, high_open)

    def parse(value: Any) -> float:
        number = None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number) or (
            low is not None and (number <= low if low_open else number < low)) or (
            high is not None and (number >= high if high_open else number > high)):  # fmt: skip
            raise BadValue(f"must be {allowed}, got {shown(value)}")
        return number

    return parse


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    """An argument type: one of ``choices``."""

    def parse(value: Any) -> str:
        if value not in choices:
            raise BadValue(f"must be {listing(choices, 'or')}, got {shown(value)}")
        return value

    return parse


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """`` in [0, 1)``, `` >= 1``, `` > 0``: the range as a user reads it."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    return f" {'<' if high_open else '<='} {high}" if high is not None else ""


def readable_file(value: Any) -> str:
    """An argument type: the path of a file this process can read (opened and closed to be sure)."""
    path = os.fspath(_path(value, "a file"))
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise BadValue(f"no such file: {path!r}") from None
    except IsADirectoryError:
        raise BadValue(f"{path!r} is a directory, not a file") from None
    except OSError as e:
        raise BadValue(f"cannot read {path!r} ({e.strerror or type(e).__name__})") from None
    return path


def writable_file(value: Any) -> str:
    """An argument type: a file this process can write (the writer makes its missing directories)."""
    path = _path(value, "a file to write")
    if path.is_dir():
        raise BadValue(f"{str(path)!r} is a directory; give a file name in it")
    _check_writable(path)
    return os.fspath(value)


def writable_directory(value: Any) -> str:
    """An argument type: a directory this process can write in, or make."""
    path = _path(value, "a directory")
    if path.exists() and not path.is_dir():
        raise BadValue(f"{str(path)!r} is a file, not a directory")
    _check_writable(path)
    return os.fspath(value)


def _path(value: Any, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise BadValue(f"must be the path of {what}, got {shown(value)}")
    return Path(value)


def _check_writable(path: Path) -> None:
    """``path``, or the nearest of its parents that exists, is a directory (or file) this process may write."""
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())  # "/" at the latest
    if existing is not path and not existing.is_dir():
        raise BadValue(f"cannot write {str(path)!r}: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK):
        raise BadValue(f"cannot write {str(path)!r}: no permission to write {str(existing)!r}")


def subset_file(value: Any) -> str:
    """An argument type: ``all`` (every training image) or a readable subset file."""
    return "all" if value == "all" else readable_file(value)


def text(value: Any) -> str:
    """An argument type for the Python API (the command line's are all text): a string."""
    if not isinstance(value, str):
        raise BadValue(f"must be a string, got {shown(value)}")
    return value


def path_string(value: Any) -> str:
    """An argument type for the Python API: a path, as a string or ``os.PathLike``."""
    return os.fspath(_path(value, "a file or directory"))


def name_list(value: Any) -> list[str]:
    """An argument type for the Python API: a list (or tuple) of strings, as a repeated option gives."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadValue(f"must be a list of names, got {shown(value)}")
    return list(value)


def flag(value: Any) -> bool:
    """An argument type for the Python API: True or False."""
    if not isinstance(value, bool):
        raise BadValue(f"must be True or False, got {shown(value)}")
    return value


def checked(name: str, value: Any, kind: Callable[[Any], Any], *, optional: bool = False) -> Any:
    """``kind(value)`` (an argument type above) for the Python API, as a ValueError naming
    ``name``; with ``optional``, None passes as None."""
    if optional and value is None:
        return None
    try:
        return kind(value)
    except BadValue as e:
        raise ValueError(f"{name}: {e}") from None


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="storage URL (default: $KILOTUNE_STORAGE, else sqlite:///kilotune.db)")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``study create`` and ``run`` share: the data, the protocol, the search and its budget."""
    parser.add_argument("--dataset", default="cifar10", help="cifar10, fashion-mnist or FILE.npz of your own arrays (default: %(default)s)")
    parser.add_argument("--data-dir", help="where the dataset files are (default: per dataset, see README)")
    parser.add_argument("--subset", type=subset_file, help="subset file to train on, or all: every training image (default: build/reuse the cached default subset, random)")
    parser.add_argument("--val-fraction", type=real(), default=0.2, help="stratified hold-out inside the subset (default: %(default)s)")
    parser.add_argument("--epochs", type=whole_number(), default=40, help="epochs per trial, the pruner's max resource (default: %(default)s)")
    parser.add_argument("--space", help="YAML/JSON file that narrows the space or fixes values, or a built-in: small")
    parser.add_argument("--sampler", default="tpe", help="tpe or random (default: %(default)s)")
    parser.add_argument("--pruner", default="hyperband", help="hyperband, successive-halving, median or none (default: %(default)s)")
    parser.add_argument("--n-trials", type=whole_number(), help="global trial budget for the whole study, the cross-validation's fold trials included")
    parser.add_argument("--timeout", type=real(), help="global time budget in seconds, from the study's creation")
    parser.add_argument("--seed", type=whole_number(0), help="sampler seed (default: random)")
    parser.add_argument("--objective-epochs", type=whole_number(),
                        help="a trial's value is the mean validation accuracy of its last this many epochs (default: 3, or --epochs if fewer)")
    parser.add_argument("--cv-top-k", type=whole_number(),
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
    parser.add_argument("--workers", type=whole_number(1), default=2, help="local worker processes (default: %(default)s)")
    parser.add_argument("--preset", action="append", default=[], help="enqueue this preset first (repeatable)")


def run_arguments(options: dict) -> argparse.Namespace:
    """``options`` as the parsed arguments of ``kilotune run``: its defaults, then these, each
    checked as the command's parser checks it (the Python API's ``run``).

    Raises:
        ValueError: for an option ``run`` does not have, listing those it has, or a value it
            does not take, naming both.
    """
    parser = argparse.ArgumentParser(prog="kilotune run")
    add_run_arguments(parser)
    args = parser.parse_args([])
    actions = {a.dest: a for a in parser._actions}
    if unknown := sorted(set(options) - set(vars(args))):
        raise ValueError(f"unknown option(s) {listing(unknown, 'and')} for run; allowed: {listing(sorted(vars(args)))}")
    for key, value in options.items():
        setattr(args, key, _run_option(key, value, actions[key]))
    return args


def _run_option(key: str, value: Any, action: argparse.Action) -> Any:
    """One option of ``run`` given from Python, checked as its argument's type or kind would."""
    if action.nargs == 0:  # a flag
        return checked(key, value, flag)
    if isinstance(action.default, list):  # a repeatable option
        return checked(key, value, name_list)
    if value is None:
        return None
    if callable(action.type):
        return checked(key, value, action.type)
    return os.fspath(value) if isinstance(value, os.PathLike) else checked(key, value, text)  # names, URLs, directories

