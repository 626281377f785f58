"""Every dataset test runs in a home, cache and system of its own: real data stays out."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep real data (~/.keras, ~/.cache/kilotune, KILOTUNE_DATA_DIR, /usr/share/datasets) out of every test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    (tmp_path / "home" / ".keras").mkdir(parents=True)  # writable: Keras (and the loader) would not use /tmp/.keras
    monkeypatch.delenv("KILOTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KILOTUNE_SYSTEM_DATASETS_DIR", str(tmp_path / "system"))
