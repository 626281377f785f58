"""Command-line arguments made from the options' declarations (search/settings.py): a field's flag,
default, help line and check become its ``add_argument``, so each is declared once, there.

A check (search/checks.py) raises ``BadValue``, a ValueError; ``argument`` hands it to argparse
as the one line ``argument --x: <message>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kilotune.search.checks import BadValue
from kilotune.search.settings import RunOptions, StudySettings, options_of

def argument(check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """``check`` as an argparse type: its ``BadValue`` is argparse's error line."""

    def parse(value: str) -> Any:
        try:
            return check(value)
        except BadValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_option(parser: argparse.ArgumentParser, owner: type, name: str, **changes: Any) -> None:
    """``--name`` as ``owner`` (``RunOptions``, ``StudySettings``) declares the option ``name``.

    Args:
        parser: The command's parser.
        owner: The dataclass that declares it.
        name: Its option name.
        **changes: ``help``, ``check`` or ``required`` where this command's differ (``train``'s
            ``--val-fraction`` also takes 0); the default is always the declared one.
    """
    declared = options_of(owner)[name]
    meta = {**declared.metadata, **changes}
    kwargs: dict[str, Any] = {"dest": name, "help": meta["help"]}
    if isinstance(declared.default, bool):
        kwargs["action"] = "store_false" if declared.default else "store_true"
    elif isinstance(declared.default, tuple):  # repeatable, one name each: ``--preset NAME --preset NAME``
        kwargs.update(action="append", default=list(declared.default), metavar=meta["flag"].lstrip("-").upper())
    else:
        kwargs["default"] = declared.default
        if meta["check"] is not None:
            kwargs["type"] = argument(meta["check"])
    if "required" in changes:
        kwargs["required"] = changes["required"]
    parser.add_argument(meta["flag"] or "--" + name.replace("_", "-"), **kwargs)


def add_study(parser: argparse.ArgumentParser) -> None:
    """``--study NAME``, required, and ``--storage``: the study a command reads or changes."""
    add_option(parser, RunOptions, "study", required=True, help="study name")
    add_option(parser, RunOptions, "storage")


def add_study_options(parser: argparse.ArgumentParser, *, run: bool) -> None:
    """What ``study create`` takes (a study name required), or with ``run`` all that ``kilotune run`` does."""
    if not run:
        add_study(parser)
    for name in options_of(RunOptions):
        if run or name not in ("study", "storage", "workers", "presets"):
            add_option(parser, RunOptions, name)
    for name in options_of(StudySettings):
        add_option(parser, StudySettings, name)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The study's and the run's options a command line gave, by their names (``kilotune.run``'s keyword arguments)."""
    declared = {**options_of(RunOptions), **options_of(StudySettings)}
    return {name: value for name, value in vars(args).items() if name in declared}
