"""What ran a bench: machine, backend, library versions and commit, recorded in its rows.

One recorder for every bench script (each imports it from its own folder, ``bench/``, which
Python puts on ``sys.path`` when it runs a script). No TensorFlow import: the same rows come
from a JAX-only GPU machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (else the platform's machine type)."""
    return next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if line.startswith("model name")),
                platform.machine() or "?")


def environment() -> dict[str, Any]:
    """Machine, backend, versions and commit (and whether the tree differed from it outside bench/results)."""
    import keras

    from kilotune.cli.main import version
    from kilotune.search.export import library_versions

    gpu = ""
    if shutil.which("nvidia-smi"):
        gpu = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).replace("\n", "; ")
    commit = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", ".", ":(exclude)bench/results"], capture_output=True).returncode != 0 if commit else None
    return {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu or None}, "backend": keras.backend.backend(),
            "tensorflow_loaded": "tensorflow" in sys.modules,
            "kilotune_version": version(), "commit": commit or None, "commit_dirty": dirty, "libraries": library_versions()}


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return ""


def _run(command: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip()
    return ""
