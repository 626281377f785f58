"""Shared fixtures: databases on the host's PostgreSQL, a private PostgreSQL server for fault
tests, a tiny real-data subset, and waits bounded by progress rather than by the clock."""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_PG = os.environ.get("KILOTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgresql_bin() -> Path | None:
    """The newest installed PostgreSQL's binaries (initdb, pg_ctl), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "pg_ctl").exists() else None


def _reachable(url: str) -> str | None:
    """None if PostgreSQL answers at ``url``, else why not, in one line."""
    import psycopg2

    try:
        psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1), connect_timeout=3).close()
    except psycopg2.Error as e:
        return " ".join(str(e).split())[:200]
    return None


def _shown(url: str) -> str:
    """The URL with its password masked, for a line or a skip reason (CI's has one)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def pytest_sessionstart(session) -> None:
    """One line at the start of every run (``-q`` too) on the services the tests find, so tests
    that skip for a missing PostgreSQL do not go unnoticed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    outcome = "FAIL (CI is set)" if os.environ.get("CI") else "SKIP"
    where = _shown(TEST_PG)
    why = _reachable(TEST_PG)
    pg = f"PostgreSQL at {where}" if why is None else (
        f"PostgreSQL at {where} NOT reachable ({why}): its tests {outcome}; set KILOTUNE_TEST_PG")
    binaries = _postgresql_bin()
    private = f"private PostgreSQL for fault tests from {binaries}" if binaries else (
        f"initdb/pg_ctl NOT found: the fault tests {outcome} (apt-get install postgresql)")
    reporter.write_line(f"kilotune tests: {pg}; {private}")


def _unavailable(reason: str) -> None:
    """Skips a test whose service is missing; under CI, where everything is installed, fails it."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class Databases:
    """Makes databases on one PostgreSQL server and drops them at ``close``.

    ``make()`` returns a new empty database's URL; ``make(template=url)`` a copy of that
    database, whose open connections it ends (PostgreSQL copies only an unused database).
    """

    def __init__(self, admin_url: str) -> None:
        import sqlalchemy

        self.admin_url = admin_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.admin = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        self.made: list[str] = []

    def make(self, template: str | None = None) -> str:
        name = f"kilotune_test_{uuid.uuid4().hex[:10]}"
        source = template.rsplit("/", 1)[1] if template else None
        with self.admin.connect() as conn:
            if source:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}'")
            conn.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {source}" if source else ""))
        self.made.append(name)
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    __call__ = make

    def end_idle_connections(self) -> None:
        """Ends the idle connections to this run's databases: what a finished test left open (its
        storages' pools, a worker it did not wait for). Pre-pinged pools reconnect; without this,
        a long run fills the server's max_connections ("too many clients already")."""
        if self.made:
            names = ", ".join(f"'{name}'" for name in self.made)
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ({names}) "
                                     "AND state = 'idle' AND pid <> pg_backend_pid()")

    def close(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_server():
    """Makes databases for this test run on the host's PostgreSQL server (``Databases``); drops
    them after it. Tests never stop, restart or reconfigure that server: others use it."""
    why = _reachable(TEST_PG)
    if why is not None:
        _unavailable(f"PostgreSQL is not reachable at {_shown(TEST_PG)} ({why}); set KILOTUNE_TEST_PG")
    databases = Databases(TEST_PG)
    _open_databases.append(databases)
    yield databases
    _open_databases.remove(databases)
    databases.close()


_open_databases: list[Databases] = []


@pytest.fixture(autouse=True)
def _leave_nothing_running():
    """After each test: stop the kilotune processes it started and did not wait for, and end the
    connections it left open, so no test inherits another's load or connections."""
    yield
    for pid in _kilotune_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for databases in _open_databases:
        databases.end_idle_connections()


def _kilotune_children() -> list[int]:
    """This process's child processes that run kilotune (``kilotune run``, ``python -m kilotune.workers``)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
            if ppid == os.getpid() and any(part.endswith(b"kilotune") or part.startswith(b"kilotune.") for part in cmdline):
                children.append(int(stat.parent.name))
    return children


@pytest.fixture(scope="session")
def pg_url(pg_server):
    """A database created for this test run and dropped after it."""
    return pg_server()


class PrivateServer:
    """A PostgreSQL server of the test run's own, in a temporary directory, on a free local port.

    Fault tests restart it (``restart``) without touching the host's server. As root it runs
    as the ``postgres`` OS user (initdb refuses root), in a directory that user owns.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="kilotune-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()[-2000:]}\n{log}")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", *args)

    def start(self) -> None:
        """initdb (trust auth, superuser postgres), then start on 127.0.0.1 only, its socket in its directory."""
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        self._pg_ctl("-o", options, "start")

    def restart(self) -> None:
        """Stops (ending every connection at once, as a crash or failover would) and starts again."""
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_pg():
    """A private PostgreSQL server (``PrivateServer``) for the tests that restart one, with
    ``databases`` on it; skips (fails under CI) where PostgreSQL's binaries are not installed."""
    bin_dir = _postgresql_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)")
    server = PrivateServer(bin_dir)
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired, LookupError) as e:  # LookupError: no postgres OS user
        server.stop()
        _unavailable(f"cannot start a private PostgreSQL with {bin_dir}: {e}")
    server.databases = Databases(server.url)
    yield server
    server.databases.close()
    server.stop()


def _share_the_data_directory() -> None:
    """Pins this run's data directory (``KILOTUNE_DATA_DIR``, inherited by the commands tests
    start) to the one kilotune would use now, so the tests that give kilotune a cache of their own
    (``KILOTUNE_CACHE_DIR``) still find the data fetched there once, on a fresh machine by the
    first test that needs it."""
    from kilotune.subset.files import cache_dir

    os.environ.setdefault("KILOTUNE_DATA_DIR", str(cache_dir()))


_share_the_data_directory()


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real Fashion-MNIST through kilotune's own loader: found, or fetched (the first time on
    a machine) into the shared data directory. Skips where it cannot be fetched; fails under CI."""
    from kilotune.subset.datasets import DatasetError, load_dataset

    try:
        return load_dataset("fashion-mnist")
    except DatasetError as e:
        _unavailable(f"Fashion-MNIST is not available: {e}")


@pytest.fixture(scope="session")
def fashion_subset(fashion_mnist, tmp_path_factory):
    """A random 10-per-class subset of the real Fashion-MNIST training set."""
    from kilotune.subset.features import build_subset

    path = tmp_path_factory.mktemp("subset") / "random-10.json"
    return build_subset(fashion_mnist, "random", path, per_class=10, seed=0)


def kilotune(*args: str, env: dict | None = None, cwd: str | Path = REPO, **kwargs) -> subprocess.Popen:
    """Starts the real ``kilotune`` command as a process (in ``cwd``)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "kilotune", *args], cwd=cwd, env=full_env, **kwargs)


def wait_for(predicate, timeout: float, what: str, poll_s: float = 0.5, progress: Callable[[], object] | None = None):
    """Polls ``predicate`` until it returns something true, which it returns.

    Without ``progress`` it fails after ``timeout`` s. With it, ``timeout`` bounds only a stall:
    the wait goes on while ``progress()`` keeps changing (a study that gains trials and epochs),
    so a loaded machine makes it slower, not failed, and a stuck one still fails.
    """
    last, deadline = progress() if progress else None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
        if progress is not None and (now := progress()) != last:
            last, deadline = now, time.monotonic() + timeout
    stalled = f" with no progress for {timeout}s (last: {repr(last)[:300]})" if progress else f" after {timeout}s"
    raise AssertionError(f"timed out{stalled} waiting for {what}")


@functools.cache
def shared_storage(url: str) -> optuna.storages.RDBStorage:
    """One storage a URL for the tests' polls. A storage made from a URL at each poll keeps its
    connections until the garbage collector breaks its reference cycle: polls every 0.5 s used up
    the server's 100 connections. Its pool pings before use, so it survives a server restart."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def study_progress(url: str, study: str) -> Callable[[], object]:
    """What changes while a study's workers make progress: its trials' states, epochs and attributes."""
    import optuna

    def progress() -> object:
        try:
            trials = optuna.load_study(study_name=study, storage=shared_storage(url)).get_trials(deepcopy=False)
        except Exception as e:  # not created yet, or the database is restarting: no progress
            return type(e).__name__
        return [(t.state, len(t.intermediate_values), len(t.user_attrs)) for t in trials]

    return progress


def cpu_progress(procs: list[subprocess.Popen]) -> Callable[[], object]:
    """The CPU time the processes used so far (Linux /proc): it grows while they work, however slowly."""

    def progress() -> object:
        ticks = []
        for p in procs:
            try:
                ticks.append(sum(int(f) for f in Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]))
            except (OSError, ValueError):
                ticks.append(None)  # exited (or no /proc)
        return ticks

    return progress


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc): a ``kilotune run`` trains in its children."""
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(parents.get(found[-1], []))
    return found


def tree_cpu_progress(procs: list[subprocess.Popen]) -> Callable[[], object]:
    """The CPU time the processes and all their descendants used so far: unlike ``cpu_progress``,
    it grows while a parent waits on children that train."""

    class Tree:
        def __init__(self) -> None:
            self.seen: dict[int, int] = {}  # pid -> its last ticks, so an exited child's time still counts

        def __call__(self) -> object:
            for p in procs:
                for pid in _descendants(p.pid):
                    try:
                        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                        self.seen[pid] = sum(int(f) for f in stat[11:13])
                    except (OSError, ValueError):
                        pass
            return sum(self.seen.values())

    return Tree()


def run_bounded(argv: list[str], *, stall_s: float = 300.0, progress: Callable[[], object] | None = None,
                **popen_kwargs) -> subprocess.CompletedProcess:  # fmt: skip
    """``subprocess.run(argv, capture_output=True, text=True)`` bounded by progress, not by the clock.

    It fails (and kills the process group) only after ``stall_s`` seconds in which neither the CPU
    time of the process and its descendants nor ``progress()`` changed: a loaded machine makes a
    test slower, not failed.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen_kwargs)
    outs: list[str] = ["", ""]

    def read() -> None:
        outs[:] = proc.communicate()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tree = tree_cpu_progress([proc])
    watched = (lambda: (tree(), progress())) if progress else tree
    try:
        wait_for(lambda: not reader.is_alive(), stall_s, " ".join(map(str, argv[:5])), progress=watched)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        reader.join()
    return subprocess.CompletedProcess(argv, proc.returncode, outs[0] or "", outs[1] or "")


def wait_for_exit(procs: list[subprocess.Popen], stall_s: float, what: str, progress: Callable[[], object] | None = None) -> list[str]:
    """Waits for ``procs`` to exit while they make progress and returns their output; kills them if
    they stall. Progress (``wait_for``) is ``progress()`` or, by default, their CPU time. Their
    pipes are read meanwhile, so a chatty process never blocks."""
    progress = progress or cpu_progress(procs)
    outs = [""] * len(procs)

    def read(i: int) -> None:
        outs[i] = procs[i].communicate()[0] or ""

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: all(not r.is_alive() for r in readers), stall_s, what, progress=progress)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for reader in readers:
            reader.join()
    return outs


def printed_best_config(output: str) -> dict:
    """The configuration ``kilotune run`` prints after "best configuration (...):": the JSON object
    alone (a line saying which fields its arch ignores may follow it)."""
    block = output[output.index("best configuration") :].split(":\n", 1)[1]
    return json.JSONDecoder().raw_decode(block)[0]


def load_script(path: Path) -> types.ModuleType:
    """A bench script (not a package module) imported as the module named by its stem, its folder on
    ``sys.path`` as when Python runs it (the scripts share ``bench/environment.py``)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
