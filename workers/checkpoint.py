"""Per-epoch checkpoints in a directory, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras

from kilotune.subset.files import write_json


class Checkpoint:
    """The latest state of one run: the model with its optimizer, and the epochs done.

    Each save writes a new file and then atomically replaces ``state.json``, which names
    it, so a process killed mid-save leaves the previous checkpoint intact.
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
        model.save(self.directory / model_file)  # includes optimizer state and step count
        state = {"epoch": epoch, "model": model_file, "history": [asdict(r) for r in history]}
        write_json(state, self.state_path, indent=None)
        for old in self.directory.glob("epoch-*.keras"):
            if old.name != model_file:
                old.unlink(missing_ok=True)

    def history(self) -> list[dict]:
        """The saved epochs' reports (``EpochReport`` fields), without loading the model."""
        return list(json.loads(self.state_path.read_text())["history"])

    def load(self) -> tuple[keras.Model, list[dict]]:
        """Returns the saved model (compiled, optimizer restored) and the epoch reports so far."""
        state = json.loads(self.state_path.read_text())
        model = keras.saving.load_model(self.directory / state["model"])
        return model, state["history"]

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


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
