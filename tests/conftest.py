"""Shared fixtures: a fresh PostgreSQL database per test run, a tiny real-data subset."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(scope="session")
def pg_server():
    """Makes databases for this test run on the real PostgreSQL server; drops them after it.

    ``make()`` returns a new empty database's URL; ``make(template=url)`` a copy of that
    database, whose open connections it ends (PostgreSQL copies only an unused database).
    """
    import sqlalchemy

    admin_url = os.environ.get("KILOTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin_url = admin_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("select 1")
    except sqlalchemy.exc.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {admin_url}: {e}")
        pytest.skip("PostgreSQL is not reachable; set KILOTUNE_TEST_PG")
    made: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"kilotune_test_{uuid.uuid4().hex[:10]}"
        source = template.rsplit("/", 1)[1] if template else None
        with admin.connect() as conn:
            if source:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}'")
            conn.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {source}" if source else ""))
        made.append(name)
        return admin_url.rsplit("/", 1)[0] + "/" + name

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_server):
    """A database created for this test run and dropped after it."""
    return pg_server()


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory):
    """A random 10-per-class subset of the real Fashion-MNIST training set."""
    if not FASHION.exists():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from kilotune.subset.datasets import load_dataset
    from kilotune.subset.features import build_subset

    path = tmp_path_factory.mktemp("subset") / "random-10.json"
    return build_subset(load_dataset("fashion-mnist"), "random", path, per_class=10, seed=0)


def kilotune(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Starts the real ``kilotune`` command as a process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "kilotune", *args], cwd=REPO, env=full_env, **kwargs)


def wait_for(predicate, timeout: float, what: str, poll_s: float = 0.5):
    """Polls ``predicate`` until it returns something true, which it returns; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
