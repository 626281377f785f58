"""Search-service storage at scale: ask / report / tell latency and trials/s with 1-64 worker processes.

    python bench/storage_scale.py --out runs/storage_scale.json

For each storage (PostgreSQL, the embedded SQLite WAL default, Optuna's JournalFileStorage) and
each process count (1, 4, 16, 64), one fresh kilotune study (``search.study.create_study``, TPE
and the pruner as ``kilotune study create --pruner`` records them; Hyperband by default) is worked
by that many spawned processes. Each opens its own storage through ``search.storage.open_storage``
(so the bounded, pre-pinged pool is what is measured), loads the study and, from a common start
time, runs up to ``--trials`` trials the way ``Worker.run`` does, with the worker's own code
(``workers.protocol``): ``TrialSource.take`` (stale trials, budget lock, ask, the default space's
~15 suggests, first heartbeat) one trial ahead in a thread; user attributes and 30 reports through
a ``TrialRecorder``; flush + ``should_prune`` at the pruner's rungs; flush + tell. Every call is
timed. **Blocking** storage time per trial = what the trial's own thread waited for (the wait for
its taken trial, enqueues, flushes, should_prune, tell); **background** = the take and the
recorder's writes, overlapped with training. ``--bare`` measures Optuna alone instead: ask, three
suggests, 30 x (report + should_prune), tell, all inline.

Two loads:
- stress (``--step-sleep 0``): no training at all, every process calls the storage back to back;
  gives saturated trials/s. On few cores the latencies include waiting for a CPU.
- paced (``--paced-*``): each step sleeps 1/30 of a 10-second trial, the load 64 real workers
  put on the storage; the target is judged here: < 100 ms blocking storage per trial (1% of a
  10 s trial) at 64 processes on PostgreSQL.

Runs are capped (--run-timeout): after it no trial starts and running ones are abandoned (told
FAIL, counted under "abandoned"); the whole benchmark has a --budget and skips what does not fit.
Per-trial figures come for every trial, for each process's trials after its first (whose take
nothing hid), and for the steady state: trials asked for once one paced trial's time has passed,
after the start-up burst of every process's first take at once. Each run also records the
machine's busy CPU per trial (clients, PostgreSQL and this script, from /proc/stat) and a
per-trial log (``trial_log``) for a look at where the tail falls in time.
A side thread polls pg_stat_activity every 0.2 s for peak connections. Worker processes import
only optuna, search/ and workers.protocol (checked: no keras/tensorflow). Prints a markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, also in spawned children

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
BACKENDS = ("postgresql", "sqlite", "journal")
# The worker's shape: "take" = TrialSource.take (stale trials, budget lock, ask, the space's
# suggests, first heartbeat), run ahead in a thread; "lock_held" = the part of it under the
# study's budget lock, which every worker's take queues for; "take_wait" = how long the trial waited for
# it; report and user_attr time the recorder's enqueue; flush waits for the recorder's writes.
# The bare shape: ask, suggest, heartbeat, report, should_prune, tell, all inline.
OPS = ("take", "lock_held", "take_wait", "ask", "suggest", "user_attr", "heartbeat", "report", "flush", "should_prune", "tell")
OTHER = ("take_wait", "user_attr", "heartbeat")  # the worker's calls beyond ask/report/tell
HEAVY = ("keras", "tensorflow", "jax", "torch")


# ----------------------------------------------------------------------------- worker process
def objective_value(x: float, lr: float, c: str, step: int) -> float:
    """A learning curve whose plateau depends on the params, so the pruner has something to prune."""
    import math
    import random

    plateau = 0.9 - 0.02 * (x - 1.0) ** 2 - 0.05 * (math.log10(lr) + 2.0) ** 2 + {"a": 0.0, "b": 0.02, "c": -0.02}[c]
    return plateau * (1.0 - math.exp(-step / 8.0)) + random.gauss(0.0, 0.01)


def worker_main(index: int, inbox: Any, outbox: Any) -> None:
    """Serves runs until told to stop; imports only optuna and search/."""
    started = time.perf_counter()
    import optuna

    from kilotune.search.storage import open_storage, with_retry
    from kilotune.search.study import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # JournalFileStorage's deprecation, once per process
    retries = _RetryCounter()
    logging.getLogger("kilotune.study").addHandler(retries)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    outbox.put(("alive", index, {"import_seconds": time.perf_counter() - started, "heavy_modules": heavy[:5]}))

    while (task := inbox.get()) is not None:
        retries.count = 0
        errors: list[str] = []
        storage = study = None
        try:
            storage = with_retry(lambda: open_storage(task["url"]), what="open_storage", deadline_s=task["retry_deadline"])
            study, settings = with_retry(lambda: load_study(task["study"], storage), what="load_study", deadline_s=task["retry_deadline"])
        except Exception as e:  # e.g. the server's connection limit: report it, serve the next run
            errors.append(f"setup: {_one_line(e)}")
        outbox.put(("ready", index, None))
        start_at = inbox.get()
        time.sleep(max(0.0, start_at - time.time()))
        stop_at = start_at + task["run_timeout"]
        try:
            if study is None:
                pass
            elif task["worker_calls"]:
                for record in trials_like_a_worker(study, settings, storage, task, start_at, stop_at):
                    outbox.put(("trial", index, record))
            else:
                for _ in range(task["trials"]):
                    if time.time() > stop_at:  # capped: start no new trial
                        break
                    outbox.put(("trial", index, bare_trial(study, storage, task, stop_at)))
        except Exception as e:  # e.g. a call that gave up: report it with the others' numbers
            errors.append(_one_line(e))
        if hasattr(storage, "engine"):
            storage.engine.dispose()  # close this run's connections before the next run
        del study, storage
        outbox.put(("done", index, {"retries": retries.count, "errors": errors}))


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= 300 else f"{text[:140]} ... {text[-150:]}"  # the driver's reason is at the end


class _RetryCounter(logging.Handler):
    """Counts with_retry's "storage unavailable" warnings: each is one failed call, retried."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def new_record(task: dict[str, Any]) -> tuple[dict[str, list[float]], Any]:
    """Per-op wall times of one trial, and ``timed(op, call)``: a call in with_retry, timed."""
    from kilotune.search.storage import with_retry

    wall: dict[str, list[float]] = {op: [] for op in OPS}

    def timed(op: str, call: Any) -> Any:
        t = time.perf_counter()
        result = with_retry(call, what=op, deadline_s=task["retry_deadline"])
        wall[op].append(time.perf_counter() - t)
        return result

    return wall, timed


def finish_record(wall: dict[str, list[float]], state: Any, step: int, background: float, cpu0: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    return {
        "state": "abandoned" if state == TrialState.FAIL else state.name.lower(),
        "steps": step,
        "wall": wall,
        "total": sum(sum(v) for op, v in wall.items() if op not in ("take", "lock_held")),  # what the trial waited for
        "other": sum(sum(wall[op]) for op in OTHER),
        "background": background,  # taking the trial ahead, and the recorder's writes
        "client_cpu": time.process_time() - cpu0,  # every thread of the process
        "end": time.time(),
    }


def trials_like_a_worker(study: Any, settings: Any, storage: Any, task: dict[str, Any], start_at: float, stop_at: float) -> Any:
    """Worker.run with a sleep for training: the worker's TrialSource takes the next trial in a
    thread while the current one trains; its reports and attributes go through a TrialRecorder,
    flushed before each prune check and before tell. Yields one record per trial."""
    from concurrent.futures import ThreadPoolExecutor

    from kilotune.workers.protocol import TrialSource

    source = TrialSource(task["url"], storage, study, settings)

    def take() -> tuple[Any, float, float]:
        t = time.perf_counter()
        return source.take(start_at), time.perf_counter() - t, source.lock_held_seconds

    with ThreadPoolExecutor(max_workers=1) as ahead:
        upcoming, taken_so_far = ahead.submit(take), 0
        while upcoming is not None:
            cpu0, t, asked_at = time.process_time(), time.perf_counter(), time.time()
            taken, take_seconds, lock_held = upcoming.result()
            waited = time.perf_counter() - t
            if taken is None:  # the study's budget is spent
                return
            if time.time() > stop_at:  # capped: start no new trial
                source.hand_back(taken)
                return
            taken_so_far += 1
            upcoming = ahead.submit(take) if taken_so_far < task["trials"] else None
            record = worker_trial(study, settings, taken, task, stop_at, waited, take_seconds, cpu0)
            record["wall"]["lock_held"].append(lock_held)
            record["first"] = taken_so_far == 1  # nothing ran before it to hide its take
            record["start"] = asked_at  # when the trial before it ended and it asked for its taken trial
            yield record


def worker_trial(study: Any, settings: Any, taken: Any, task: dict[str, Any], stop_at: float, waited: float, take_seconds: float, cpu0: float) -> dict[str, Any]:
    """Worker._train_trial's storage calls around a sleep for training."""
    import socket

    from optuna.trial import TrialState

    from kilotune.workers.protocol import TrialRecorder

    wall, timed = new_record(task)
    wall["take_wait"].append(waited)
    wall["take"].append(take_seconds)
    trial, config = taken.trial, taken.sampled_config()
    state, value, step = TrialState.COMPLETE, None, 0
    with TrialRecorder(trial) as recorder:
        attrs = {"config": config.to_dict(), "worker": f"{socket.gethostname()}:{os.getpid()}", "device": "cpu", "status": "running"}
        for key, v in attrs.items():
            timed("user_attr", lambda: recorder.set_user_attr(key, v))
        for step in range(1, task["steps"] + 1):
            if time.time() > stop_at:  # the run's cap: give the trial up, as a killed worker would
                state = TrialState.FAIL
                break
            if task["step_sleep"]:
                time.sleep(task["step_sleep"])  # "training"; not storage time
            value = objective_value(config.dropout * 10, config.learning_rate, "abc"[len(config.arch) % 3], step)
            timed("report", lambda: recorder.report(value, step))
            if settings.may_prune_at(step):
                flush(recorder, wall)
                if timed("should_prune", trial.should_prune):
                    state = TrialState.PRUNED
                    break
        finish = {"status": state.name.lower(), "epoch_seconds": [0.333] * step, "images_per_second": 2400.0}
        if state == TrialState.COMPLETE:
            finish["params_count"] = 1_000_000
        for key, v in finish.items():
            timed("user_attr", lambda: recorder.set_user_attr(key, v))
        flush(recorder, wall)
        timed("tell", lambda: study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True))
    taken.heartbeat.stop()
    return finish_record(wall, state, step, take_seconds + recorder.write_seconds, cpu0)


def flush(recorder: Any, wall: dict[str, list[float]]) -> None:
    """Timed, but not in with_retry: the recorder retries its writes, and a retried flush would hide a lost one."""
    t = time.perf_counter()
    recorder.flush()
    wall["flush"].append(time.perf_counter() - t)


def bare_trial(study: Any, storage: Any, task: dict[str, Any], stop_at: float) -> dict[str, Any]:
    """Optuna alone, inline: ask, three suggests, a heartbeat, report + should_prune every step, tell."""
    from optuna.trial import TrialState

    cpu0 = time.process_time()
    wall, timed = new_record(task)
    trial = timed("ask", study.ask)
    x = timed("suggest", lambda: trial.suggest_float("x", -5.0, 5.0))
    lr = timed("suggest", lambda: trial.suggest_float("lr", 1e-4, 1.0, log=True))
    c = timed("suggest", lambda: trial.suggest_categorical("c", ["a", "b", "c"]))
    if hasattr(storage, "record_heartbeat"):
        timed("heartbeat", lambda: storage.record_heartbeat(trial._trial_id))
    state, value, step = TrialState.COMPLETE, None, 0
    for step in range(1, task["steps"] + 1):
        if time.time() > stop_at:
            state = TrialState.FAIL
            break
        if task["step_sleep"]:
            time.sleep(task["step_sleep"])
        value = objective_value(x, lr, c, step)
        timed("report", lambda: trial.report(value, step))
        if timed("should_prune", trial.should_prune):
            state = TrialState.PRUNED
            break
    timed("tell", lambda: study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True))
    return finish_record(wall, state, step, 0.0, cpu0)


# ----------------------------------------------------------------------------- parent
@dataclass(frozen=True)
class Run:
    backend: str
    procs: int
    trials: int  # per process
    step_sleep: float
    run_timeout: float

    @property
    def load(self) -> str:
        return "stress" if not self.step_sleep else f"paced {self.step_sleep * 30:.0f} s/trial"


class Pool:
    """Spawned worker processes kept across runs, so each run does not pay 64 imports of optuna."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(n)]
        started = time.perf_counter()
        self.procs = [ctx.Process(target=worker_main, args=(i, q, self.outbox), daemon=True) for i, q in enumerate(self.inboxes)]
        for p in self.procs:
            p.start()
        self.info = [self.outbox.get(timeout=300)[2] for _ in self.procs]
        self.spawn_seconds = time.perf_counter() - started

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def close(self, kill: bool = False) -> None:
        for q, p in zip(self.inboxes, self.procs):
            if kill:
                p.kill()
            else:
                q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


class ConnectionPoller(threading.Thread):
    """Peak client connections to our database (and to the whole server) every 0.2 s."""

    def __init__(self, dbname: str) -> None:
        super().__init__(daemon=True)
        self.dbname, self.stopped = dbname, threading.Event()
        self.peak_db = self.peak_all = 0

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(**PG_ADMIN)  # the admin database, so the poller is not counted in ours
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stopped.is_set():
                cur.execute(
                    "select count(*) filter (where datname = %s), count(*) from pg_stat_activity where backend_type = 'client backend'",
                    (self.dbname,),
                )
                db, total = cur.fetchone()
                self.peak_db, self.peak_all = max(self.peak_db, db), max(self.peak_all, total - 1)
                self.stopped.wait(0.2)
        conn.close()


def pg_admin(sql: str, dbname: str = "postgres") -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(**{**PG_ADMIN, "dbname": dbname})
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def pg_calibrate(dbname: str) -> dict[str, float]:
    """Round trip and durable-commit latency in our database: the floor under every storage call."""
    import psycopg2

    conn = psycopg2.connect(**{**PG_ADMIN, "dbname": dbname})
    with conn.cursor() as cur:
        cur.execute("create table bench_probe (x int)")
        conn.commit()
        t = time.perf_counter()
        for _ in range(100):
            cur.execute("select 1")
            cur.fetchall()
        rtt = (time.perf_counter() - t) / 100
        t = time.perf_counter()
        for _ in range(30):
            cur.execute("insert into bench_probe values (1)")
            conn.commit()  # synchronous_commit: waits for the WAL flush
        commit = (time.perf_counter() - t) / 30
        cur.execute("drop table bench_probe")
        conn.commit()
    conn.close()
    return {"select_1_ms": 1e3 * rtt, "insert_commit_ms": 1e3 * commit}


def pg_drain(dbname: str, wait_s: float = 15.0) -> int:
    """Waits for the last run's connections to our database to close, then ends any left (a session
    a failed call left checked out survives engine.dispose()); returns how many were ended."""
    count = "select count(*) from pg_stat_activity where datname = '%s' and pid <> pg_backend_pid()" % dbname
    deadline = time.time() + wait_s
    while pg_admin(count)[0][0] and time.time() < deadline:
        time.sleep(0.5)
    return len(pg_admin(f"select pg_terminate_backend(pid) from pg_stat_activity where datname = '{dbname}'"))


def machine_busy_seconds() -> float | None:
    """Core-seconds every CPU of this machine has spent busy since boot (Linux /proc/stat), or None:
    clients, PostgreSQL and the bench together, which 64 processes on a few cores compete for."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_one(pool: Pool, run: Run, url: str, steps: int, worker_calls: bool, retry_deadline: float, dbname: str | None,
            run_pruner: str = "median", run_sampler: str = "tpe") -> dict[str, Any]:
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage
    from kilotune.search.study import create_study

    name = f"scale-{run.backend}-{run.procs}-{'stress' if not run.step_sleep else 'paced'}"
    settings = StudySettings(
        dataset="bench", dataset_checksum="-", subset_path="-", subset_checksum="-",
        epochs=steps, sampler=run_sampler, pruner=run_pruner, n_trials=run.procs * run.trials,
    )
    storage = open_storage(url)
    create_study(name, settings, storage)
    if hasattr(storage, "engine"):
        storage.engine.dispose()
    del storage

    leftover = pg_drain(dbname) if run.backend == "postgresql" and dbname else 0
    load_before = os.getloadavg()
    poller = ConnectionPoller(dbname) if run.backend == "postgresql" and dbname else None
    if poller:
        poller.start()
    task = {"url": url, "study": name, "trials": run.trials, "steps": steps, "step_sleep": run.step_sleep,
            "run_timeout": run.run_timeout, "worker_calls": worker_calls, "retry_deadline": retry_deadline}
    for i in range(run.procs):
        pool.inboxes[i].put(task)
    for _ in range(run.procs):
        kind, _, _ = pool.outbox.get(timeout=300)
        assert kind == "ready", kind
    start_at = time.time() + 0.5  # everyone starts together, after the last one has loaded the study
    for i in range(run.procs):
        pool.inboxes[i].put(start_at)
    time.sleep(max(0.0, start_at - time.time()))
    busy_before = machine_busy_seconds()

    trials: list[dict[str, Any]] = []
    done: dict[int, dict[str, Any]] = {}
    hard_stop = start_at + run.run_timeout + 75  # a call stuck past the cap (an SQLite lock waits up to 60 s)
    killed = False
    while len(done) < run.procs:
        try:
            kind, index, payload = pool.outbox.get(timeout=max(0.1, hard_stop - time.time()))
        except queue.Empty:
            killed = True
            break
        if kind == "trial":
            trials.append(payload)
        elif kind == "done":
            done[index] = payload
    busy_after, busy_end = machine_busy_seconds(), time.time()
    if poller:
        poller.stopped.set()
        poller.join()
    if killed:
        pool.close(kill=True)

    finished = [t for t in trials if t["state"] != "abandoned"]
    last = max((t["end"] for t in finished), default=start_at)
    row: dict[str, Any] = {
        **asdict(run), "load": run.load, "trials_target": run.procs * run.trials, "trials_finished": len(finished),
        "pruned": sum(t["state"] == "pruned" for t in finished), "abandoned": len(trials) - len(finished),
        "seconds": last - start_at, "trials_per_second": len(finished) / max(1e-9, last - start_at),
        "capped": killed or len(finished) < run.procs * run.trials, "killed": killed,
        "retries": sum(d["retries"] for d in done.values()), "errors": [e for d in done.values() for e in d["errors"]],
        "load_before": load_before, "load_after": os.getloadavg(),
        "peak_connections_db": poller.peak_db if poller else None,
        "leftover_connections_terminated": leftover,
        "peak_connections_server": poller.peak_all if poller else None,
    }
    if busy_before is not None and busy_after is not None:
        busy = busy_after - busy_before
        row["machine_cpu_per_trial_ms"] = 1e3 * busy / max(1, len(finished))
        row["machine_utilization"] = busy / max(1e-9, (busy_end - start_at) * (os.cpu_count() or 1))
    for op in OPS:  # every call made counts, abandoned trials' included
        values = [v for t in trials for v in t["wall"][op]]
        row[op] = {"calls": len(values), "median_ms": 1e3 * percentile(values, 50), "p99_ms": 1e3 * percentile(values, 99)}
    row["trial_seconds"] = trial_seconds = run.step_sleep * steps  # a paced trial's training; 0 under stress
    later = [t for t in finished if not t.get("first", True)]  # each process's trials after its first
    # Steady state: trials asked for once one paced trial's time has passed since the start, when
    # the fleet's first takes (every process at once, none hidden behind training) are behind it.
    steady = [t for t in later if trial_seconds and t["start"] >= start_at + trial_seconds]
    groups = (("per_trial", finished), ("per_complete_trial", [t for t in finished if t["state"] == "complete"]),
              ("per_later_trial", later), ("per_steady_trial", steady))
    for key, subset in groups:
        totals = [t["total"] for t in subset]
        row[key] = {"n": len(totals), "median_ms": 1e3 * percentile(totals, 50), "p90_ms": 1e3 * percentile(totals, 90),
                    "p99_ms": 1e3 * percentile(totals, 99),
                    # the target's bound: 1% of the paced trial's training time
                    "within_1pct": (sum(t <= 0.01 * trial_seconds for t in totals) / len(totals)
                                    if totals and trial_seconds else None),
                    "client_cpu_median_ms": 1e3 * percentile([t["client_cpu"] for t in subset], 50),
                    "other_median_ms": 1e3 * percentile([t["other"] for t in subset], 50),
                    "background_median_ms": 1e3 * percentile([t["background"] for t in subset], 50)}
    # Each trial, for a look at the tail: seconds from the start to when it asked for its taken
    # trial and to its end, state, steps, ms it waited for storage (all, of which the take).
    row["trial_log"] = [[round(t["start"] - start_at, 3) if "start" in t else None,  # --bare trials take none ahead
                         round(t["end"] - start_at, 3), t["state"], t["steps"],
                         round(1e3 * t["total"], 1), round(1e3 * sum(t["wall"]["take_wait"]), 1), t.get("first", True)]
                        for t in sorted(trials, key=lambda t: t["end"])]
    # A full trial from the per-call medians: still defined when a capped run completed none.
    # Calls per trial as made (complete trials; all trials if none completed).
    sample = [t for t in finished if t["state"] == "complete"] or finished or trials
    per_trial_calls = {op: percentile([len(t["wall"][op]) for t in sample], 50) if sample else 0 for op in OPS}
    row["per_trial_calls"] = per_trial_calls
    row["complete_trial_from_medians_ms"] = sum(n * row[op]["median_ms"] for op, n in per_trial_calls.items() if n)
    return row


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    """One row per run. "blocking" is storage time on the trial's own thread (the target's figure);
    "background" is the recorder thread's writes, overlapped with training."""
    lines = [
        "| storage | procs | load | trials done (pruned) | trials/s | take (ahead) ms med / p99 | budget lock held ms med | take wait ms med / p99 | "
        "flush ms med / p99 | should_prune ms med | tell ms med / p99 | blocking storage ms per trial med / p99 | "
        "blocking ms per later trial med / p99 | steady trials: blocking ms med / p99 (within 1%) | background ms per trial med | client CPU ms per trial med | machine CPU ms per trial (busy) | peak conns (server) | note |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['backend']} | {r['procs']} | {r['load']} |" + " - |" * 15 + f" skipped: {r['skipped']} |")
            continue
        note = []
        if r["capped"]:
            note.append(f"capped at {r['run_timeout']:.0f} s" + (" (killed)" if r["killed"] else "") + f", {r['abandoned']} abandoned")
        if r["retries"]:
            note.append(f"{r['retries']} retried calls")
        if r["errors"]:
            note.append(f"{len(r['errors'])} errors, e.g. {r['errors'][0][:80]}")
        conns = "-" if r["peak_connections_db"] is None else f"{r['peak_connections_db']} ({r['peak_connections_server']})"
        pt = r["per_trial"]
        st = r["per_steady_trial"]
        steady = f"{fmt(st['median_ms'])} / {fmt(st['p99_ms'])} ({st['within_1pct']:.0%})" if st["n"] else "-"
        machine = "-" if r.get("machine_cpu_per_trial_ms") is None else f"{fmt(r['machine_cpu_per_trial_ms'])} ({r['machine_utilization']:.0%})"
        med = lambda op: fmt(r[op]["median_ms"])  # noqa: E731
        lines.append(
            f"| {r['backend']} | {r['procs']} | {r['load']} | {r['trials_finished']} ({r['pruned']}) | {r['trials_per_second']:.1f} | "
            f"{med('take')} / {fmt(r['take']['p99_ms'])} | {med('lock_held')} | {med('take_wait')} / {fmt(r['take_wait']['p99_ms'])} | "
            f"{med('flush')} / {fmt(r['flush']['p99_ms'])} | "
            f"{med('should_prune')} | {med('tell')} / {fmt(r['tell']['p99_ms'])} | {fmt(pt['median_ms'])} / {fmt(pt['p99_ms'])} | "
            f"{fmt(r['per_later_trial']['median_ms'])} / {fmt(r['per_later_trial']['p99_ms'])} | {steady} | {fmt(pt['background_median_ms'])} | {fmt(pt['client_cpu_median_ms'])} | {machine} | {conns} | {'; '.join(note)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--procs", nargs="*", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--trials", type=int, default=20, help="trials per process, stress runs (TPE cost grows with the total)")
    parser.add_argument("--steps", type=int, default=30, help="report + should_prune calls per trial")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds of 'training' per step in the main runs (0: stress)")
    parser.add_argument("--run-timeout", type=float, default=15.0, help="cap of each main run, seconds")
    parser.add_argument("--paced-backends", nargs="*", default=["postgresql", "sqlite"], choices=BACKENDS)
    parser.add_argument("--paced-procs", type=int, nargs="*", default=[64])
    parser.add_argument("--paced-trial-seconds", type=float, default=10.0, help="'training' per paced trial, spread over the steps")
    parser.add_argument("--paced-trials", type=int, default=3, help="trials per process, paced runs")
    parser.add_argument("--paced-timeout", type=float, default=35.0)
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole benchmark; runs that do not fit are skipped")
    parser.add_argument("--bare", action="store_true", help="only ask/suggest/heartbeat/report/should_prune/tell, not the worker's "
                        "stale-trial check, budget lock and user attributes")
    parser.add_argument("--retry-deadline", type=float, default=20.0,
                        help="with_retry gives up after this many seconds (workers: 600); a give-up is an error here")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--workdir", help="where SQLite and journal files go (default: a temporary directory)")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                        help="the study's sampler (default: %(default)s; client CPU a trial at 64 processes: random 39 ms, TPE 82-85 ms (v9), docs/bench-storage.md)")
    parser.add_argument("--pruner", default="hyperband", choices=["hyperband", "successive-halving", "median"], help="the study's pruner (default: kilotune's, %(default)s)")
    parser.add_argument("--out", default="runs/storage_scale.json")
    args = parser.parse_args()

    PG_ADMIN.update(host=args.pg_host, port=args.pg_port)
    began = time.perf_counter()
    load_before = os.getloadavg()
    import optuna
    import sqlalchemy

    import kilotune.search.retries
    import kilotune.search.study  # noqa: F401  (what a worker process imports: no Keras)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    heavy_here = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)  # search/ must not pull keras in
    # Smallest counts first, every storage at each, PostgreSQL last among the largest: if the
    # budget runs out, what is lost is the heaviest cell, not a whole storage.
    order = sorted(args.backends, key=lambda b: (b == "postgresql", BACKENDS.index(b)))
    runs = [Run(b, n, args.trials, args.step_sleep, args.run_timeout) for n in sorted(args.procs) for b in order]
    runs += [Run(b, n, args.paced_trials, args.paced_trial_seconds / args.steps, args.paced_timeout) for n in sorted(args.paced_procs) for b in args.paced_backends]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kilotune_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    dbname = f"kilotune_bench_{secrets.token_hex(4)}"
    pg: dict[str, Any] = {}
    if any(r.backend == "postgresql" for r in runs):
        pg_admin(f"create database {dbname}")
        pg = {"version": pg_admin("show server_version")[0][0], "max_connections": int(pg_admin("show max_connections")[0][0]),
              "synchronous_commit": pg_admin("show synchronous_commit")[0][0],
              "client_connections_before": pg_admin("select count(*) from pg_stat_activity where backend_type = 'client backend'")[0][0] - 1,
              **pg_calibrate(dbname)}
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":", 1)[-1].strip()
    print(f"{cpu}, {os.cpu_count()} CPUs; optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}; "
          f"PostgreSQL {pg or '-'}; heavy modules in this process: {heavy_here or 'none'}; load before {load_before}", flush=True)

    rows: list[dict[str, Any]] = []
    pool: Pool | None = None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(done: bool) -> None:
        payload = {"args": vars(args) | {"out": out.name}, "cpu": cpu, "nproc": os.cpu_count(), "optuna": optuna.__version__,
                   "sqlalchemy": sqlalchemy.__version__, "postgresql": pg, "heartbeat_seconds": kilotune.search.retries.HEARTBEAT_SECONDS,
                   "load_before": load_before, "parent_heavy_modules": heavy_here,
                   "pool": {"spawn_seconds": pool.spawn_seconds, "workers": pool.info} if pool else None, "results": rows, "done": done}
        if done:
            payload["load_after"] = os.getloadavg()
            payload["seconds"] = time.perf_counter() - began
        out.write_text(json.dumps(payload, indent=2) + "\n")

    try:
        for run in runs:
            left = args.budget - (time.perf_counter() - began)
            # A run needs its cap plus time to load the study and drain; skip it rather than overrun.
            if left < run.run_timeout + 15:
                rows.append({**asdict(run), "load": run.load, "skipped": f"budget of {args.budget:.0f} s spent"})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                continue
            if pool is None or not pool.alive():
                pool = Pool(max(r.procs for r in runs))
                heavy = {m for w in pool.info for m in w["heavy_modules"]}
                print(f"spawned {len(pool.procs)} processes in {pool.spawn_seconds:.1f} s; heavy modules there: {sorted(heavy) or 'none'}", flush=True)
            stem = f"{workdir}/{run.backend}-{run.procs}-{len(rows)}"
            url = {
                "postgresql": f"postgresql+psycopg2://{PG_ADMIN['user']}@{args.pg_host}:{args.pg_port}/{dbname}",
                "sqlite": f"sqlite:///{stem}.db",
                "journal": f"{stem}.journal",
            }[run.backend]
            rows.append(run_one(pool, run, url, args.steps, not args.bare, args.retry_deadline, dbname if pg else None, args.pruner, args.sampler))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            save(False)
    finally:
        if pool is not None:
            pool.close()
        if pg:
            pg_admin(f"select pg_terminate_backend(pid) from pg_stat_activity where datname = '{dbname}'")
            pg_admin(f"drop database if exists {dbname}")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    save(True)
    print()
    print(table(rows))
    for r in rows:
        if r["backend"] == "postgresql" and r["procs"] == max(args.paced_procs) and r["step_sleep"] and not r.get("skipped"):
            bound_ms = 10 * r["trial_seconds"]  # 1% of the trial, in ms
            for key, what in (("per_trial", "every trial"), ("per_later_trial", "trials after each process's first"),
                              ("per_steady_trial", f"trials asked for after the first {r['trial_seconds']:.0f} s")):
                t = r[key]
                if not t["n"]:
                    print(f"target at {r['procs']} processes, {what}: no trials")
                    continue
                print(f"target: <= {bound_ms:.0f} ms blocking storage per trial at {r['procs']} processes on PostgreSQL ({r['load']}), {what}: "
                      f"{'met' if t['median_ms'] <= bound_ms else 'NOT met'} at the median ({fmt(t['median_ms'])} ms; p90 {fmt(t['p90_ms'])} ms, "
                      f"p99 {fmt(t['p99_ms'])} ms; {t['within_1pct']:.0%} of {t['n']} trials within it)")
    if pg:
        peak = max((r["peak_connections_db"] or 0 for r in rows if r["backend"] == "postgresql" and not r.get("skipped")), default=0)
        print(f"PostgreSQL {pg['version']}: max_connections {pg['max_connections']}, peak {peak} connections in the benchmark "
              f"database; select 1 {pg['select_1_ms']:.2f} ms, insert+commit {pg['insert_commit_ms']:.2f} ms")
    print(f"load average before {load_before}, after {os.getloadavg()}; {time.perf_counter() - began:.0f} s in all; JSON: {out}")


if __name__ == "__main__":
    main()
