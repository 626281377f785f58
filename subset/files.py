"""File helpers every layer above shares: kilotune's cache directory, JSON reads and atomic writes, an
exclusive file lock, the installed version of a package and the time stamp files and studies
record. They live here, in the lowest layer that needs them (fetched datasets, subset files,
cached subsets), and the layers above import them (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """``$KILOTUNE_CACHE_DIR``, else ``~/.cache/kilotune``: fetched datasets, extractors, default subsets."""
    return Path(os.environ.get("KILOTUNE_CACHE_DIR") or Path.home() / ".cache" / "kilotune").expanduser()


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document in ``path``; one line naming ``what`` (``"subset file"``) and the path if
    it is missing or not JSON.

    Raises:
        ValueError: the file is missing, unreadable or not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not readable JSON ({' '.join(str(e).split())})") from None


def write_json(data: Any, path: str | Path, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Writes ``data`` as JSON (a final newline when indented) atomically, creating parent
    directories: a reader sees the old file or the new one, never half of one.

    Args:
        data: Anything ``json.dumps`` takes.
        path: The file.
        indent: ``json.dumps``'s indent; None: one line, no final newline.
        sort_keys: Sort the objects' keys.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, sort_keys=sort_keys) + ("\n" if indent is not None else "")
    # One a write: workers on hosts that share a volume (the cache on Kubernetes) may have one pid.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def file_lock(lock_path: str | Path) -> Iterator[None]:
    """Holds an exclusive ``fcntl`` lock on ``lock_path`` (created, with its directory), which
    every process on this host that takes the same file queues for; released when the file is
    closed, even on a crash."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def installed_version(name: str = "kilotune", default: str | None = "0+unknown") -> str | None:
    """The installed version of package ``name`` from its metadata (no import), else ``default``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return default


def now_iso() -> str:
    """Now in UTC, ISO 8601 to the second: the time stamp subset files, studies and exports record."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def count_of(n: int, noun: str) -> str:
    """``1 trial``, ``2 trials``: a count with its noun in the right number (nouns taking -s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
