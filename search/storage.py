"""The study's storage: opened once a process, with heartbeats and the retry of dead workers' trials,
waiting out a restarting database (``open_storage``, ``with_retry``); its URL resolved once
(``storage_url``) and shown without its password (``redact``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, JournalFileStorage, JournalStorage, RDBStorage

from kilotune.search import retries
from kilotune.search.retries import RetryKilledTrials

log = logging.getLogger("kilotune.study")
# Heartbeats, group and constant liar are deliberate: the worker drives ask/tell itself.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

DEFAULT_STORAGE = "sqlite:///kilotune.db"
# What PostgreSQL answers while it restarts (a fast shutdown, then its start-up): open_storage
# waits up to RESTART_WAIT_SECONDS for it. "Connection refused" is not among them: no server is there.
RESTARTING = ("server closed the connection unexpectedly", "the database system is shutting down",
              "the database system is starting up", "the database system is not yet accepting connections",
              "terminating connection due to administrator command")
RESTART_WAIT_SECONDS = 60.0
T = TypeVar("T")


def storage_url(url: str | None = None) -> str:
    """``--storage``, else ``$KILOTUNE_STORAGE``, else the embedded SQLite default."""
    return url or os.environ.get("KILOTUNE_STORAGE") or DEFAULT_STORAGE


def open_storage(url: str, *, must_exist: bool = False, patient: bool = False) -> BaseStorage:
    """Opens the storage, checking that it is reachable; one clear ValueError if not.

    Args:
        url: The storage URL, resolved (``storage_url``) where the command's or call's options are made.
        must_exist: Refuse a SQLite or journal file that does not exist, rather than create it:
            for commands that only read or join a study, where a typo must not leave a new file.
        patient: Wait up to ``RESTART_WAIT_SECONDS`` for a server that refuses connections too
            (a worker started while PostgreSQL restarts), not only for one that says it restarts.

    RDB storages get heartbeats and Optuna's retry of stale trials (inheriting the reported
    epochs), and a small pre-pinged pool: one idle connection, at most four open. A worker's
    threads (training, its recorder, heartbeats, asking ahead under the budget lock) share
    them and wait briefly for one when all four are busy, so 64 workers never hold more than
    256, below the 300 that docker-compose.yml gives PostgreSQL.
    """
    url = _with_driver(url)
    path = local_path(url)
    if must_exist and path is not None and not path.is_file():
        raise ValueError(f"no storage at {redact(url)}: {path} does not exist (a study's database is made by "
                         "`kilotune run` or `kilotune study create`); give --storage of an existing one")
    retry = RetryKilledTrials(max_retry=3)
    if url.endswith((".log", ".journal")) and "://" not in url:
        return JournalStorage(JournalFileStorage(url))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for the writer instead of "database is locked"
    else:
        # One idle connection; the worker's other threads may open three more at peak.
        engine_kwargs.update(pool_size=1, max_overflow=3, pool_recycle=300, connect_args={"connect_timeout": 10})
    schema_races, restart_deadline = 0, time.monotonic() + RESTART_WAIT_SECONDS
    while True:
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=retries.HEARTBEAT_SECONDS,
                grace_period=retries.GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry,
            )
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Processes opening a new database at once race to create Optuna's schema; the
            # losers find it created when they try again.
            schema_races += 1
            if schema_races == 5 or "already exists" not in str(e):
                raise ValueError(f"cannot open storage {redact(url)}: {_reason(e)}") from None
            time.sleep(0.5 * schema_races)
        except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError, ImportError) as e:
            # A server that answers while it restarts is waited for (a worker that compose starts
            # during a restart must not exit); one that is not there, or refuses us, is an error now.
            restarting = patient or any(sign in _reason(e) for sign in RESTARTING)
            if not restarting or isinstance(e, ImportError) or time.monotonic() > restart_deadline:
                raise ValueError(f"cannot open storage {redact(url)}: {_reason(e)}") from None
            log.warning("storage %s is restarting (%s); retrying in 1s", redact(url), _reason(e)[:100])
            time.sleep(1.0)
    if url.startswith("sqlite"):
        with storage.engine.connect() as conn:  # WAL lets the dashboard read while workers write
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _with_driver(url: str) -> str:
    """Names psycopg2 in a bare PostgreSQL URL: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3,
    which kilotune does not install, and would fail with "Failed to import DB access module"."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


def _reason(error: Exception) -> str:
    return " ".join(str(getattr(error, "orig", None) or error).split())[:300]


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    with contextlib.suppress(Exception):
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    return url


def with_retry(call: Callable[[], T], *, what: str, deadline_s: float = 600.0) -> T:
    """Runs ``call``, retrying with exponential backoff while the database is unreachable.

    A restarting PostgreSQL or a briefly locked SQLite file costs a wait, not the worker.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return call()
        except (StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            if waited >= deadline_s:
                raise
            log.warning("storage unavailable during %s (%s); retrying in %.1fs", what, type(e).__name__, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 30.0)


def local_path(url: str) -> Path | None:
    """The file of a SQLite URL or a journal file's path; None for a server's URL (or in-memory SQLite)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    if "://" not in url:
        return Path(url)
    return None
