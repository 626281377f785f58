"""Per-epoch checkpoints in a directory, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras

from kilotune.subset.files import write_json

log = logging.getLogger("kilotune.checkpoint")


class Checkpoint:
    """The latest state of one run: the model with its optimizer, and the epochs done.

    Each save writes the model under a temporary name, flushes it to disk and renames it, then
    atomically replaces ``state.json``, which names it: a process killed mid-save, or a full
    disk, leaves the previous checkpoint intact. A checkpoint that cannot be read all the same
    (a truncated or corrupted file, as a crash of the machine can leave) is discarded with one
    warning naming the file and why, and the run starts from its first epoch.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def save(self, model: keras.Model, history: list[Any]) -> None:
        # ``history``: train.py's EpochReport dataclasses (train.py imports this module, not back).
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = len(history)
        model_file = f"epoch-{epoch:04d}.keras"
        partial = self.directory / f".partial-{model_file}"  # Keras saves only to a name ending in .keras
        model.save(partial)  # includes optimizer state and step count
        with open(partial, "rb") as f:
            os.fsync(f.fileno())  # on disk before state.json names it
        os.replace(partial, self.directory / model_file)
        state = {"epoch": epoch, "model": model_file, "history": [asdict(r) for r in history]}
        write_json(state, self.state_path, indent=None)
        for old in self.directory.glob("*epoch-*.keras"):  # earlier epochs, and a save cut short
            if old.name != model_file:
                old.unlink(missing_ok=True)

    def history(self) -> list[dict]:
        """The saved epochs' reports (``EpochReport`` fields), without loading the model; [] if
        there is no checkpoint or it is unreadable (then discarded)."""
        state = self._state()
        return [] if state is None else list(state["history"])

    def load(self) -> tuple[keras.Model, list[dict]] | None:
        """The saved model (compiled, optimizer restored) and the epoch reports so far; None if
        there is no checkpoint or it is unreadable (then discarded)."""
        state = self._state()
        if state is None:
            return None
        path = self.directory / state["model"]
        try:
            model = keras.saving.load_model(path)
        except Exception as e:  # Keras raises what its file format's reader raised
            self._discard(path, e)
            return None
        return model, state["history"]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _state(self) -> dict[str, Any] | None:
        """``state.json``, once it and the model file it names are whole; else None (an
        unreadable checkpoint is discarded)."""
        if not self.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text())
            history, model = state["history"], self.directory / state["model"]
            if not isinstance(history, list) or len(history) != state["epoch"]:
                raise ValueError(f"it records {state['epoch']} epochs and {len(history)} reports")
        except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: JSONDecodeError too
            self._discard(self.state_path, e)
            return None
        try:  # a .keras file is a zip archive: a truncated one has no directory, a corrupted one fails a CRC
            with zipfile.ZipFile(model) as archive:
                corrupt = archive.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            self._discard(model, e)
            return None
        if corrupt is not None:
            self._discard(model, f"its member {corrupt} fails its CRC check")
            return None
        return state

    def _discard(self, path: Path, why: Exception | str) -> None:
        if isinstance(why, Exception):
            why = " ".join(f"{type(why).__name__}: {why}".split())[:300]
        log.warning("checkpoint %s is unreadable (%s): discarded; training starts from epoch 1", path, why)
        self.clear()


def check_writable(root: Path) -> None:
    """Raises a one-line ValueError unless checkpoints can be written under ``root``.

    A worker checks before it takes a trial: otherwise every trial it takes would fail at its
    first checkpoint and still count against the study's budget.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(
            f"checkpoint directory {str(root)!r} is not writable ({e.strerror or type(e).__name__}); "
            "set KILOTUNE_CHECKPOINT_DIR to a writable directory"
        ) from None
