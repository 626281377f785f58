"""The backends' start-up lines off the terminal, for the command and the Python API alike.

TensorFlow's start-up lines come from native code, written straight to file descriptor 2 while
``import tensorflow`` runs, once for each of two libraries it loads: absl's "WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR", oneDNN's "custom
operations are on" and "Could not find cuda drivers on your machine". absl writes them before
anything reads ``TF_CPP_MIN_LOG_LEVEL``, so no environment variable hides them: the import runs
with descriptor 2 on a temporary file, and what was written there goes back to stderr after it,
less those lines (an error, a Python warning or traceback still shows). Level 3 hides what
TensorFlow logs later ("failed call to cuInit" on a host without a GPU is an ERROR to it);
errors still reach Python as exceptions. ``KILOTUNE_DEBUG=1`` shows everything.

It must run before TensorFlow loads, and it leaves a level the user set alone. JAX prints no
start-up line on a CPU host.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

# A start-up line: absl's notice, and the INFO and WARNING lines in its format (the I of
# "I0000 00:00:1796426866.616262   10966 port.cc:153] oneDNN custom operations are on..."), with
# the second line of cpu_feature_guard's INFO (shown at levels 0 and 1).
STARTUP_LINE = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
    rb"|To enable the following instructions: )"
)


def quiet_tensorflow() -> None:
    """Unless ``KILOTUNE_DEBUG`` is set: ``TF_CPP_MIN_LOG_LEVEL=3`` unless set, and TensorFlow's
    import (whenever it comes) without its start-up lines."""
    if os.environ.get("KILOTUNE_DEBUG"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def startup_lines_filtered() -> Iterator[None]:
    """Runs the block with file descriptor 2 on a temporary file; then writes what it caught
    to stderr, less the start-up lines (``STARTUP_LINE``)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = b"".join(line for line in caught.read().splitlines(keepends=True) if not STARTUP_LINE.match(line))
            while kept:
                kept = kept[os.write(2, kept) :]


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the import system would, for a loader that runs it inside
    ``startup_lines_filtered``; it stands down after that one import."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):  # another thread's import took it out already
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader, for whatever reads it later (importlib.resources...).
        module.__loader__ = module.__spec__.loader = self.loader
        with startup_lines_filtered():
            self.loader.exec_module(module)


def log_to_console() -> None:
    """kilotune's log lines on stderr, with the time and the logger, as every command and worker
    process writes them (``kilotune run`` leaves its workers' INFO lines out by this format)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
