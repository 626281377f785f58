"""Starting a study's workers behind a small interface: ``Launcher`` (start, poll, stop, wait), and
``LocalProcesses``, worker processes on this machine. A launcher of containers or of a cluster's
jobs would be a sibling. A worker starts as a worker (``python -m kilotune.workers``,
workers/process.py), not as a command line of the CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

# What a worker prints that a user of ``kilotune run`` need not see (KILOTUNE_DEBUG=1 shows it):
# the backends' native start-up logs (on a CPU-only host "Could not find cuda drivers", "failed
# call to cuInit"), INFO logs, and each worker's closing count (the display shows every trial).
QUIET = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"  # absl/glog INFO and WARNING lines
    r"|E\d{4} .*(?:cuInit|CUDA|cuda)"  # no GPU driver: an "error" only to TensorFlow
    r"|WARNING: All log messages before absl::InitializeLog"
    r"|\[I \d{4}-\d\d-\d\d"  # Optuna INFO
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ INFO "  # kilotune INFO
    r"|worker \S+: \d+ trials?)"  # "1 trial" too
)


class Launcher(ABC):
    """Starts the workers of one study and follows them until they exit."""

    @abstractmethod
    def start(self, n: int, study: str, env: Mapping[str, str], *, data_dir: str | None = None) -> None:
        """Starts ``n`` workers of ``study``, named ``local-0``, ``local-1``... (their worker ids, which
        seed their sampling streams), with ``env`` (the storage URL in ``$KILOTUNE_STORAGE``)."""

    @abstractmethod
    def poll(self) -> bool:
        """Whether a worker still runs."""

    @abstractmethod
    def stop(self) -> None:
        """Asks every running worker to stop after its current batch (SIGTERM): its trial is failed
        for retry, to resume from its checkpoint, and nothing is lost."""

    @abstractmethod
    def wait(self) -> list[int]:
        """Waits for every worker to exit; their exit statuses."""


class LocalProcesses(Launcher):
    """Worker processes on this machine, their output relayed line by line, quiet lines left out.

    Args:
        on_line: Called with each line a worker prints (``[local-0] ...``), from a thread of its own.
    """

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.processes: list[subprocess.Popen] = []

    def start(self, n: int, study: str, env: Mapping[str, str], *, data_dir: str | None = None) -> None:
        for i in range(n):
            name = f"local-{i}"
            arguments = json.dumps({"study": study, "worker_id": name, "data_dir": data_dir})
            process = subprocess.Popen([sys.executable, "-m", "kilotune.workers", arguments], env=dict(env), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace")  # fmt: skip
            threading.Thread(target=self._relay, args=(process, name), daemon=True, name=f"output-{name}").start()
            self.processes.append(process)

    def _relay(self, process: subprocess.Popen, name: str) -> None:
        assert process.stdout is not None
        debug = bool(os.environ.get("KILOTUNE_DEBUG"))
        for line in process.stdout:
            if debug or not QUIET.match(line):
                self.on_line(f"[{name}] {line.rstrip()}")

    def poll(self) -> bool:
        return any(p.poll() is None for p in self.processes)

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def wait(self) -> list[int]:
        return [p.wait() for p in self.processes]
