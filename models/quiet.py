"""TensorFlow's start-up chatter off the terminal, for the command and the Python API alike.

"failed call to cuInit" on a host without a GPU is an ERROR to TensorFlow, so only level 3
hides it; errors still reach Python as exceptions. ``KILOTUNE_DEBUG=1`` shows everything.
It must run before TensorFlow loads, and it leaves a level the user set alone.
"""

from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless it is set or ``KILOTUNE_DEBUG`` is."""
    if not os.environ.get("KILOTUNE_DEBUG"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
