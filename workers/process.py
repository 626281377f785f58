"""A worker process's life: its GPU placed before a backend loads, its signals (the first stops it
after the current batch, a second kills it), its trials, and a closing line. ``kilotune worker``
runs it, and so does every worker a launcher starts (``python -m kilotune.workers``, workers/launch.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Sequence

from kilotune.models.names import described
from kilotune.models.quiet import log_to_console, quiet_tensorflow
from kilotune.subset.files import count_of


def serve(study: str, url: str, *, worker_id: str | None = None, data_dir: str | None = None, subset: str | None = None,
          max_trials: int | None = None) -> int:  # fmt: skip
    """Trains trials of ``study`` in the storage at ``url`` (resolved) until its budget is spent, ``max_trials``
    are done or a signal comes; prints ``worker <name>: <n> trials``. Returns 0."""
    from kilotune.training.gpu import configure_gpu

    device = configure_gpu()  # before Keras loads a backend
    from kilotune.workers.worker import Worker

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        # The first signal stops after the current batch; a second one kills at once.
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    worker = Worker(study, url, worker_id=worker_id, device=device, data_dir=data_dir, subset_path=subset, stop=stop)
    done = worker.run(max_trials=max_trials)
    print(f"worker {worker.name}: {count_of(done, 'trial')}{' (stopped by signal)' if stop.is_set() else ''}")
    return 0


def main(argv: Sequence[str]) -> int:
    """``python -m kilotune.workers '{"study": ..., "worker_id": ...}'``: ``serve``'s arguments as JSON,
    the storage URL in ``$KILOTUNE_STORAGE`` (on a command line `ps` would show its password). An
    error is one line, ``kilotune worker: error: ...``, and exit status 2, as from ``kilotune worker``."""
    quiet_tensorflow()
    log_to_console()
    if not os.environ.get("KILOTUNE_DEBUG"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the commands: each line says what it did
    try:
        return serve(**json.loads(argv[1]), url=os.environ["KILOTUNE_STORAGE"])
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as e:
        if os.environ.get("KILOTUNE_DEBUG"):
            raise
        print(f"kilotune worker: error: {described(e)}", file=sys.stderr)
        return 2
