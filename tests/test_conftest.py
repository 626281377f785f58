"""The test fixtures' own guarantees: what the service tests rely on between tests."""

import sys
import time

import optuna
import pytest

from tests.conftest import run_bounded, shared_storage


def test_the_shared_storage_survives_the_end_of_idle_connections_between_tests(pg_server):
    # After each test, the run ends the idle connections to its databases (``end_idle_connections``);
    # the next test's poll through the cached storage must reconnect, not fail on a closed connection.
    url = pg_server()
    optuna.create_study(study_name="survivor", storage=shared_storage(url))
    assert optuna.get_all_study_names(shared_storage(url)) == ["survivor"]
    pg_server.end_idle_connections()
    assert optuna.get_all_study_names(shared_storage(url)) == ["survivor"]


# A parent that only waits while its child computes, as `kilotune run` waits on its workers.
PARENT_OF_A_BUSY_CHILD = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', "
    "'import time\\nend = time.process_time() + 3\\nwhile time.process_time() < end: pass']); print('done')"
)


def test_a_bounded_run_waits_while_the_children_work_and_not_when_nothing_moves():
    started = time.monotonic()
    out = run_bounded([sys.executable, "-c", PARENT_OF_A_BUSY_CHILD], stall_s=2.0)
    assert out.returncode == 0 and out.stdout.strip() == "done" and time.monotonic() - started > 2.0, out
    with pytest.raises(AssertionError, match="no progress for 1.0s"):
        run_bounded([sys.executable, "-c", "import time; time.sleep(30)"], stall_s=1.0)


def test_without_postgresql_the_run_says_so_first_and_never_prints_the_password():
    import os
    import subprocess

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"KILOTUNE_TEST_PG": "postgresql://kt:sekrit@127.0.0.1:1/postgres"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_conftest.py", "-k", "idle_connections"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:]
    assert out.stdout.splitlines()[0].startswith("kilotune tests: PostgreSQL at postgresql://kt:***@127.0.0.1:1/postgres NOT reachable")
    assert "its tests SKIP" in out.stdout.splitlines()[0] and "1 skipped" in out.stdout
    assert "sekrit" not in out.stdout + out.stderr
