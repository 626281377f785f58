"""Checks of a value given to an option (``whole_number``, ``real``, ``readable_file``,
``writable_file``...): each returns the value as the option takes it, or raises ``BadValue``
naming what is allowed, before anything heavy loads.

The options' declarations name them (search/settings.py), the command line's parser runs them as
its argument types (cli/options.py turns a ``BadValue`` into argparse's one line), and the Python
API runs them too (``checked``), for a ``ValueError`` naming the argument and the value.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kilotune.models.names import shown


class BadValue(ValueError):
    """A value an option does not take; the command line shows it as ``argument --x: <message>``."""


def whole_number(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    """A check: an int (from the command line, its text) in ``[low, high]``; None: unbounded."""
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
    """A check: a finite float in ``[low, high]`` (``low_open``/``high_open``: without
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
    """A check: the path of a file this process can read (opened and closed to be sure)."""
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
    """A check: a file this process can write (the writer makes its missing directories)."""
    path = _path(value, "a file to write")
    if path.is_dir():
        raise BadValue(f"{str(path)!r} is a directory; give a file name in it")
    _check_writable(path)
    return os.fspath(value)


def writable_directory(value: Any) -> str:
    """A check: a directory this process can write in, or make."""
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
    """A check: ``all`` (every training image) or a readable subset file."""
    return "all" if value == "all" else readable_file(value)


def text(value: Any) -> str:
    """A check for the Python API (the command line's values are all text): a string."""
    if not isinstance(value, str):
        raise BadValue(f"must be a string, got {shown(value)}")
    return value


def path_string(value: Any) -> str:
    """A check for the Python API: a path, as a string or ``os.PathLike``."""
    return os.fspath(_path(value, "a file or directory"))


def name_list(value: Any) -> list[str]:
    """A check for the Python API: a list (or tuple) of strings, as a repeated option gives."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadValue(f"must be a list of names, got {shown(value)}")
    return list(value)


def flag(value: Any) -> bool:
    """A check for the Python API: True or False."""
    if not isinstance(value, bool):
        raise BadValue(f"must be True or False, got {shown(value)}")
    return value


def checked(name: str, value: Any, kind: Callable[[Any], Any], *, optional: bool = False) -> Any:
    """``kind(value)`` (a check above) for the Python API, as a ValueError naming ``name``; with
    ``optional``, None passes as None."""
    if optional and value is None:
        return None
    try:
        return kind(value)
    except BadValue as e:
        raise ValueError(f"{name}: {e}") from None
