"""The ``kilotune`` command: one parser, its subcommands registered by the modules of cli/.

Registration only declares arguments, the study's and the run's made from their declarations
(search/settings.py, cli/options.py); each handler imports its heavy modules (Keras, Optuna)
itself, so ``kilotune --help`` stays fast. The arguments' checks (search/checks.py) run while
the parser reads them: a typo is one line before anything heavy loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kilotune.models.names import described
from kilotune.models.quiet import log_to_console, quiet_tensorflow


class UsageError(Exception):
    """A command line the parser refuses; its message is the one line to print."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose errors are one line, ``kilotune CMD: error: ...``,
    without the usage: ``kilotune CMD --help`` shows that."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {' '.join(message.split())}")


def build_parser() -> argparse.ArgumentParser:
    from kilotune.cli import search as search_commands
    from kilotune.cli import study as study_commands
    from kilotune.cli import subset as subset_commands
    from kilotune.cli import workers as worker_commands

    parser = ArgumentParser(
        prog="kilotune",
        description="Hyperparameter search for small-data image classification.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (*worker_commands.REGISTER, *subset_commands.REGISTER, *study_commands.REGISTER, *search_commands.REGISTER):
        register(sub)
    return parser


def version() -> str:
    """kilotune's installed version (``0+unknown`` when it runs uninstalled)."""
    from kilotune.subset.files import installed_version

    return installed_version("kilotune")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; user errors become one line on stderr and exit status 2."""
    quiet_tensorflow()
    log_to_console()
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    if not os.environ.get("KILOTUNE_DEBUG"):
        _quiet_optuna()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as e:  # OSError: a path that cannot be read or written, named in the line
        if os.environ.get("KILOTUNE_DEBUG"):
            raise
        print(f"kilotune {args.command}: error: {described(e)}", file=sys.stderr)
        return 2


def _quiet_optuna() -> None:
    """Optuna's INFO lines ("A new study created in RDB with name: ...") off: each command says
    what it did in its own words."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
