"""The study: storage, recorded settings, sampler and pruner, the global budget, retries.

Every worker opens the same storage and rebuilds the sampler and pruner from the settings
recorded in the study, so the study, not each worker's command line, decides the search.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, JournalFileStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from kilotune.search.attrs import (
    BUDGET_HISTORY, CREATED_AT, CV_FOLDS, CV_OF, CV_TOP_K, DATASET, DEVICE, EPOCH_SECONDS, FAIL_REASON, IMAGES_PER_SECOND, KILOTUNE_VERSION, N_TRIALS,
    PARAMS_COUNT, RESUMED_FROM_EPOCH, RETRY_OF, STATUS, SUBSET_PATH, TIMEOUT_S, WORKER, WORKER_ID,
)
from kilotune.models.names import listing
from kilotune.search import optuna_internals, pruners
from kilotune.search.samplers import tpe_sampler
from kilotune.search.winner import (
    DEFAULT_OBJECTIVE_EPOCHS, StudyTrials, enqueue_fold_trials, is_fold_trial, load_cv_study, plan_cross_validation,
)
from kilotune.subset.files import count_of, file_lock, now_iso
from kilotune.subset.splits import fold_count

log = logging.getLogger("kilotune.study")
# Heartbeats, group and constant liar are deliberate: the worker drives ask/tell itself.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

DEFAULT_STORAGE = "sqlite:///kilotune.db"
# A trial whose worker has not beaten for GRACE seconds is failed and retried; tests shorten both.
HEARTBEAT_SECONDS = int(os.environ.get("KILOTUNE_HEARTBEAT_SECONDS", 10))
GRACE_SECONDS = int(os.environ.get("KILOTUNE_GRACE_SECONDS", 40))
# What PostgreSQL answers while it restarts (a fast shutdown, then its start-up): open_storage
# waits up to RESTART_WAIT_SECONDS for it. "Connection refused" is not among them: no server is there.
RESTARTING = ("server closed the connection unexpectedly", "the database system is shutting down",
              "the database system is starting up", "the database system is not yet accepting connections",
              "terminating connection due to administrator command")
RESTART_WAIT_SECONDS = 60.0
SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "successive-halving", "median", "none")
T = TypeVar("T")
# Small budgets (tens of trials), chosen in docs/search-efficiency.md ("Small budgets"):
TPE_STARTUP_TRIALS = 5  # against Optuna's default 10: better in 5 of 6 cells (search_budget.py kilotune-startup10)
REDUCTION_FACTOR = 3  # replayed against 2 and 4 by bench/rung_choice.py: best or within 1 point


def storage_url(url: str | None = None) -> str:
    """``--storage``, else ``$KILOTUNE_STORAGE``, else the embedded SQLite default."""
    return url or os.environ.get("KILOTUNE_STORAGE") or DEFAULT_STORAGE


def open_storage(url: str | None = None, *, must_exist: bool = False, patient: bool = False) -> BaseStorage:
    """Opens the storage, checking that it is reachable; one clear ValueError if not.

    Args:
        url: The storage URL (``storage_url`` resolves it).
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
    url = _with_driver(storage_url(url))
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
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
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


@dataclass(frozen=True)
class StudySettings:
    """What a study is about; recorded as study user attributes (docs/study-format.md)."""

    dataset: str
    dataset_checksum: str
    subset_path: str
    subset_checksum: str
    val_fraction: float = 0.2
    split_seed: int = 0
    epochs: int = 40
    space: dict | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    n_trials: int | None = None
    timeout_s: float | None = None
    seed: int | None = None
    # A trial's value: mean validation accuracy of its last this many epochs (search/winner.py);
    # None: DEFAULT_OBJECTIVE_EPOCHS, or every epoch where a trial trains fewer.
    objective_epochs: int | None = None
    # The top trials re-trained on other folds before the winner is picked (0: none), and the folds
    # each is validated on, fold 0 included. Their fold trials count in n_trials. None and None:
    # as the budget allows, resolved on construction (search.winner.plan_cross_validation).
    cv_top_k: int | None = None
    cv_folds: int | None = None
    kilotune_version: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is not allowed; choose one of {listing(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner={self.pruner!r} is not allowed; choose one of {listing(PRUNERS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be at least 1")
        if self.objective_epochs is None:
            object.__setattr__(self, "objective_epochs", min(DEFAULT_OBJECTIVE_EPOCHS, self.epochs))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"n_trials={self.n_trials} must be at least 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be positive")
        if not 1 <= self.objective_epochs <= self.epochs:  # a trial's value is the mean of that many of its epochs
            raise ValueError(f"objective_epochs={self.objective_epochs} must be from 1 to the {self.epochs} epochs a trial trains")
        if self.cv_top_k and self.folds < 2:  # else the study would silently not cross-validate
            raise ValueError(f"val_fraction={self.val_fraction} leaves {self.folds} fold, too few to cross-validate "
                             f"the top {self.cv_top_k}: give val_fraction <= 0.5, or cv_top_k=0 for no cross-validation")
        if self.cv_folds is None:
            top_k, folds = plan_cross_validation(self.n_trials, self.folds, self.cv_top_k)
            object.__setattr__(self, "cv_top_k", top_k)  # frozen: resolved once, as recorded
            object.__setattr__(self, "cv_folds", folds)
        elif self.cv_top_k is None or self.cv_top_k < 0 or not 1 <= self.cv_folds <= self.folds:
            raise ValueError(f"cv_top_k={self.cv_top_k} and cv_folds={self.cv_folds} must be 0 or more, and 1 to {self.folds} folds")
        if self.search_trials is not None and self.search_trials < 1:
            raise ValueError(f"n_trials={self.n_trials} leaves no search trial beside the {self.fold_trials} fold trials of "
                             f"cv_top_k={self.cv_top_k} on cv_folds={self.cv_folds}; give more trials")

    @property
    def fold_trials(self) -> int:
        """The trials of cross-validation: the top ``cv_top_k`` each on ``cv_folds - 1`` other folds."""
        return (self.cv_top_k or 0) * ((self.cv_folds or 1) - 1)

    @property
    def search_trials(self) -> int | None:
        """The search's share of ``n_trials`` (the rest is cross-validation); None without a trial budget."""
        return None if self.n_trials is None else self.n_trials - self.fold_trials

    def budget_text(self) -> str:
        """What the budget buys, for a header: ``12 trials of 10 epochs (at most 120 epochs): 8 search
        trials, then the top 2 re-trained on 2 more folds each (4 fold trials)``."""
        time = f"; stops after {self.timeout_s:g} s" if self.timeout_s else ""
        if self.n_trials is None:
            return f"trials of {count_of(self.epochs, 'epoch')} until {self.timeout_s:g} s have passed, not cross-validated"
        text = f"{count_of(self.n_trials, 'trial')} of {count_of(self.epochs, 'epoch')} (at most {count_of(self.n_trials * self.epochs, 'epoch')}): "
        if not self.fold_trials:
            return text + f"{count_of(self.n_trials, 'search trial')}, not cross-validated{time}"
        return (text + f"{count_of(self.search_trials, 'search trial')}, then the top {self.cv_top_k} re-trained on "
                f"{count_of(self.cv_folds - 1, 'more fold')} each ({count_of(self.fold_trials, 'fold trial')}){time}")

    def differences(self, given: StudySettings) -> list[str]:
        """The settings that ``given`` changes, as ``name=recorded (given new)``.

        Only what decides the search is compared: not where the subset file is on this host
        (its checksum is compared), the version or the creation time.
        """
        ignored = {SUBSET_PATH, KILOTUNE_VERSION, CREATED_AT, DATASET}
        if self.n_trials != given.n_trials:
            ignored |= {CV_TOP_K, CV_FOLDS}  # the cross-validation's share follows from the budget, the difference named
        mine, theirs = (_as_json({**asdict(s), "space": s.space or {}}) for s in (self, given))
        return [f"{k}={mine[k]!r} (given {theirs[k]!r})" for k in mine if k not in ignored and mine[k] != theirs[k]]

    @classmethod
    def from_study(cls, study: optuna.Study) -> StudySettings:
        attrs = study.user_attrs
        names = {f.name for f in fields(cls)}
        missing = {DATASET, SUBSET_PATH} - set(attrs)
        if missing:
            raise ValueError(f"study {study.study_name!r} was not created by kilotune (no {listing(sorted(missing), 'and')} recorded)")
        # Studies from before the noise-aware objective valued a trial by its last epoch alone.
        recorded = {"objective_epochs": 1, **{k: v for k, v in attrs.items() if k in names}}
        if CV_FOLDS not in attrs:
            # From before fold trials counted in the budget: the top cv_top_k (3 if unrecorded) were
            # validated on every fold beyond the n_trials search trials, which the total now includes.
            folds = fold_count(recorded.get("val_fraction", 0.2))
            top_k = recorded.get(CV_TOP_K, 3) if folds > 1 and recorded.get(N_TRIALS) is not None else 0
            recorded.update(cv_top_k=top_k, cv_folds=folds if top_k else 1)
            if top_k:
                recorded[N_TRIALS] += top_k * (folds - 1)
        # Made before a value over the epochs was refused: the mean of every epoch, as now.
        recorded["objective_epochs"] = min(recorded["objective_epochs"], recorded.get("epochs", cls.epochs))
        return cls(**recorded)

    @property
    def folds(self) -> int:
        """The subset's cross-validation folds: disjoint hold-outs of ``val_fraction`` (5 for 0.2)."""
        return fold_count(self.val_fraction)

    def sampler_for(self) -> optuna.samplers.BaseSampler:
        """The study's sampler, seeded with ``seed``; a worker takes ``worker_sampler`` instead."""
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        # group=True keeps multivariate TPE exact over the conditional (define-by-run) space;
        # constant_liar stops parallel workers from sampling the same point (read once a take:
        # search/samplers.py). TPE models from the 6th finished (complete or pruned) trial, the
        # warm-start presets among the first 5: with Optuna's 10, runs of 8-13 trials had 0-2
        # trials sampled by TPE (docs/search-efficiency.md). TPE sees every trial, Hyperband's
        # brackets included (optuna 5.1's TPE reads the study's unfiltered trials, which brackets do not filter).
        return tpe_sampler(
            multivariate=True, group=True, constant_liar=True, n_startup_trials=TPE_STARTUP_TRIALS, seed=self.seed
        )

    def worker_sampler(self, stream: str = "") -> optuna.samplers.BaseSampler:
        """The sampler of one worker: ``sampler_for`` with the seed of the worker's own ``stream``.

        Workers with one seed would sample the same start-up trials, and with the same liars the
        same TPE trials too. Each worker's seed is derived from the study's seed and its stream
        (its ``--worker-id``), so a seeded study stays reproducible per worker id and its workers
        differ; the empty stream keeps the study's seed.
        """
        if self.seed is None or not stream:
            return self.sampler_for()
        derived = int.from_bytes(hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()[:4], "big")
        return replace(self, seed=derived).sampler_for()

    @property
    def _min_resource(self) -> int:
        # The first rung at 1/9 of a trial (epoch 1 of 9). Replayed on recorded 9-epoch curves
        # at 18-63 epochs a search (bench/rung_choice.py), halving from there kept the best or
        # nearly the best final value: a weak rung (Spearman 0.50-0.65 with the final value) that
        # screens twice the configurations of one at epoch 3 (0.75-0.84). Every halving beat no
        # pruning by 2-4 points. A fraction, as the learning-rate schedules scale with the epochs.
        return max(1, round(self.epochs / 9))

    @property
    def _brackets(self) -> int:
        """Hyperband's bracket count: floor(log_eta(max / min)) + 1."""
        brackets, rung = 1, self._min_resource * REDUCTION_FACTOR
        while rung <= self.epochs:
            brackets, rung = brackets + 1, rung * REDUCTION_FACTOR
        return brackets

    @property
    def _warmup_steps(self) -> int:
        return max(1, self.epochs // 5)

    def pruner_for(self, storage: BaseStorage | None = None) -> optuna.pruners.BasePruner:
        """The study's pruner; on an RDB storage, one whose checks read one indexed query
        (search/pruners.py) instead of every running trial."""
        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        optuna_pruner, kwargs = {
            "hyperband": (optuna.pruners.HyperbandPruner,
                          dict(min_resource=self._min_resource, max_resource=self.epochs, reduction_factor=REDUCTION_FACTOR)),
            "successive-halving": (optuna.pruners.SuccessiveHalvingPruner,
                                   dict(min_resource=self._min_resource, reduction_factor=REDUCTION_FACTOR)),
            "median": (optuna.pruners.MedianPruner, dict(n_startup_trials=5, n_warmup_steps=self._warmup_steps)),
        }[self.pruner]
        return pruners.pruner(optuna_pruner, storage, **kwargs)

    def may_prune_at(self, epoch: int) -> bool:
        """Whether the pruner can stop a trial after this epoch; asking elsewhere only costs storage reads.

        Hyperband's brackets and successive halving decide only at their rungs,
        ``min_resource * REDUCTION_FACTOR**k``; the median pruner decides after its warm-up; "none" never does.
        """
        if self.pruner in ("hyperband", "successive-halving"):
            rung = self._min_resource
            while rung < epoch:
                rung *= REDUCTION_FACTOR
            return rung == epoch
        if self.pruner == "median":
            return epoch > self._warmup_steps
        return False


def create_study(
    name: str, settings: StudySettings, storage: BaseStorage, *, keep_settings: bool = False
) -> tuple[optuna.Study, bool]:
    """Creates the study, or returns the existing one; safe when many processes race.

    Args:
        name: The study name.
        settings: What to record if the study is new.
        storage: The storage.
        keep_settings: Join an existing study whose recorded settings differ from ``settings``
            and keep the recorded ones (the data must still be the same).

    Returns:
        The study and whether this call created it.

    Raises:
        ValueError: if a study of that name exists with another dataset or subset, or (unless
            ``keep_settings``) with other settings, which the message names.
    """
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=name, storage=storage), False
    if created or not _wait_for_settings(study):
        # Written one key at a time, ``created_at`` last: its presence marks a complete record.
        for key, value in asdict(settings).items():
            study.set_user_attr(key, value)
        return study, created
    recorded = StudySettings.from_study(study)
    check_same_data(recorded, settings.dataset_checksum, settings.subset_checksum, name)
    differ = recorded.differences(settings)
    if differ and not keep_settings:
        hint = " or `kilotune study extend` to change its budget" if {d.split("=")[0] for d in differ} <= {N_TRIALS, TIMEOUT_S} else ""
        raise ValueError(
            f"study {name!r} exists with other settings: {', '.join(differ)}; pass the recorded values, "
            f"--keep-settings to continue it as recorded{hint}, or another --study name"
        )
    return study, False


def extend_budget(study: optuna.Study, *, n_trials: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Sets the study's global budget to ``n_trials`` and/or ``timeout_s`` (totals, not increments).

    Running workers read the budget at every claim, so the change applies to them at once. The
    change is appended to the study's ``budget_history`` user attribute.

    Returns:
        The history entry: the time, the budget before and after.

    Raises:
        ValueError: if neither is given or one is out of range.
    """
    if n_trials is None and timeout_s is None:
        raise ValueError("nothing to change: give n_trials (--n-trials) and/or timeout_s (--timeout)")
    before = StudySettings.from_study(study)
    after = replace(
        before,
        n_trials=before.n_trials if n_trials is None else n_trials,
        timeout_s=before.timeout_s if timeout_s is None else timeout_s,
    )  # validates the new values; the cross-validation's share stays as recorded
    entry = {
        "at": now_iso(),
        "from": {N_TRIALS: before.n_trials, TIMEOUT_S: before.timeout_s},
        "to": {N_TRIALS: after.n_trials, TIMEOUT_S: after.timeout_s},
    }
    study.set_user_attr(BUDGET_HISTORY, [*study.user_attrs.get(BUDGET_HISTORY, []), entry])
    # A study from before fold trials counted in the budget records its total from now on (from_study).
    study.set_user_attr(CV_TOP_K, after.cv_top_k)
    study.set_user_attr(CV_FOLDS, after.cv_folds)
    study.set_user_attr(N_TRIALS, after.n_trials)
    study.set_user_attr(TIMEOUT_S, after.timeout_s)
    return entry


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """As the study stores them (JSON): tuples become lists, so equal settings compare equal."""
    return json.loads(json.dumps(values))


def _wait_for_settings(study: optuna.Study, timeout_s: float = 30.0) -> bool:
    """Waits while another process finishes recording the settings; False if it never does
    (its creator died), so the caller records them."""
    deadline = time.monotonic() + timeout_s
    while CREATED_AT not in study.user_attrs:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def recorded_budget(name: str, storage: BaseStorage) -> tuple[int | None, float | None] | None:
    """The budget study ``name`` records, ``(n_trials, timeout_s)``; None if there is no such study."""
    try:
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
    except KeyError:
        return None
    return attrs.get(N_TRIALS), attrs.get(TIMEOUT_S)


def load_study(name: str, storage: BaseStorage, *, sampler_stream: str = "") -> tuple[optuna.Study, StudySettings]:
    """Loads a kilotune study with its sampler and pruner; unknown names list the known ones.

    Args:
        name: The study name.
        storage: The storage holding it.
        sampler_stream: The worker's own stream of the study's seed (``StudySettings.worker_sampler``).
    """
    try:
        bare = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"unknown study {name!r}; studies in this storage: {listing(map(repr, known), 'and')}") from None
    settings = StudySettings.from_study(bare)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=settings.worker_sampler(sampler_stream), pruner=settings.pruner_for(storage)
    )
    return study, settings


def check_same_data(settings: StudySettings, dataset_checksum: str, subset_checksum: str, study: str) -> None:
    """Refuses to mix results from different data into one study."""
    if settings.dataset_checksum != dataset_checksum:
        raise ValueError(
            f"study {study!r} is on dataset {settings.dataset} ({settings.dataset_checksum[:19]}), "
            f"but this data has checksum {dataset_checksum[:19]}"
        )
    if settings.subset_checksum != subset_checksum:
        raise ValueError(
            f"study {study!r} trains on subset {settings.subset_path} ({settings.subset_checksum[:19]}), "
            f"but this subset has checksum {subset_checksum[:19]}"
        )


# User attributes of one attempt, which its retry must not show as its own (its worker writes them anew).
ATTEMPT_ATTRS = (WORKER, WORKER_ID, DEVICE, STATUS, FAIL_REASON, RESUMED_FROM_EPOCH, RETRY_OF,
                 EPOCH_SECONDS, IMAGES_PER_SECOND, PARAMS_COUNT)


class RetryKilledTrials(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial, where only attempts killed after training use up ``max_retry``.

    An attempt that never trained an epoch (killed while starting, taken ahead, handed back, or
    interrupted by a signal) is retried without limit: the configuration is not to blame. Each
    retry is a WAITING copy with the trial's params, reports and configuration, without the dead
    attempt's worker and status. Once a configuration was killed after training more than
    ``max_retry`` times it is given up, recorded as a FAIL trial with status "failed" and a
    ``fail_reason`` (a finished attempt takes no more attributes), which counts toward the budget.

    Args:
        max_retry: Kills after training that a configuration is retried for.
    """

    KILLS = "kills_after_training"  # system attribute: the count so far, carried from copy to copy
    INHERITED = "inherited_epochs"  # system attribute: reports the copy started with
    RETRY_OF = "retry_of"  # system attribute: the number of the attempt this copy retries

    def __init__(self, max_retry: int = 3) -> None:
        super().__init__(max_retry=None, inherit_intermediate_values=True)
        self.max_kills = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Queues the retry of ``trial`` (or its FAIL record), unless one is queued already.

        One copy per failed attempt, so a caller may call again when it cannot know whether its
        call stored the copy (a database error at the commit) and no budgeted trial is doubled.
        """
        if _retried(study, trial.number):
            return
        history = [*self.retry_history(trial), trial.number]
        system_attrs = {**trial.system_attrs, "failed_trial": history[0], "retry_history": history, self.RETRY_OF: trial.number}
        trained = len(trial.intermediate_values) > trial.system_attrs.get(self.INHERITED, 0)
        signalled = trial.user_attrs.get(STATUS) in ("interrupted", "returned")
        kills = trial.system_attrs.get(self.KILLS, 0) + (trained and not signalled)
        system_attrs.update({self.KILLS: kills, self.INHERITED: len(trial.intermediate_values)})
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
        state = TrialState.WAITING
        if kills > self.max_kills:
            state = TrialState.FAIL
            user_attrs.update(status="failed", fail_reason=f"given up: its worker was killed after training {kills} times "
                                                           f"(trials {history}; max_retry={self.max_kills})")
            log.error("trial %d: %s", trial.number, user_attrs[FAIL_REASON])
        study.add_trial(optuna.create_trial(
            state=state, params=trial.params, distributions=trial.distributions, user_attrs=user_attrs,
            system_attrs=system_attrs, intermediate_values=trial.intermediate_values,
        ))


def _retried(study: optuna.Study, number: int) -> bool:
    """Whether a retry (or the FAIL record) of attempt ``number`` is in the study: one indexed
    query on an RDB storage, else a scan of the study's trials."""
    key, value = RetryKilledTrials.RETRY_OF, number
    storage = optuna_internals.study_storage(study)
    rdb = optuna_internals.rdb_of(storage) if storage is not None else None
    if rdb is None:
        return any(t.system_attrs.get(key) == value for t in study.get_trials(deepcopy=False))
    return optuna_internals.has_system_attr(rdb, optuna_internals.study_id(study, storage), key, json.dumps(value))


def stale_trial_ids(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Running trials whose last heartbeat is older than the grace period, as Optuna's
    ``fail_stale_trials`` finds them (one indexed query); none without heartbeats.

    Outside Optuna's tested range this runs Optuna's public ``fail_stale_trials`` itself (which
    fails and retries them without the budget lock) and returns none.
    """
    if not _heartbeat_enabled(storage):
        return []
    ids = optuna_internals.stale_trial_ids(storage, optuna_internals.study_id(study, storage))
    if ids is None:
        optuna.storages.fail_stale_trials(study)
        return []
    return ids


def _heartbeat_enabled(storage: BaseStorage) -> bool:
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def unbeaten_trial_ids(study: optuna.Study, storage: BaseStorage, running: list[optuna.trial.FrozenTrial]) -> list[int]:
    """Running trials that never beat although they started a grace period ago.

    A worker killed between its ask and its trial's first heartbeat leaves a RUNNING trial that
    Optuna's ``fail_stale_trials`` never fails (it judges only trials that beat once); at the
    end of a study the last workers would wait for it for ever.
    """
    if not isinstance(storage, RDBStorage) or storage.get_heartbeat_interval() is None or not optuna_internals.fast_paths():
        return []  # (outside Optuna's tested range nothing public tells a trial that never beat)
    cutoff = datetime.now() - timedelta(seconds=GRACE_SECONDS)  # Optuna records datetime_start in local time
    old = {optuna_internals.frozen_trial_id(t, study, storage)
           for t in running if t.datetime_start is not None and t.datetime_start < cutoff}
    if not old:
        return []
    return sorted(old - (optuna_internals.beaten_trial_ids(storage, old) or set()))


def fail_and_retry(study: optuna.Study, storage: BaseStorage, trial_ids: list[int], failed: set[int]) -> None:
    """Fails running trials of dead workers and queues their retries; call it under ``budget_lock``.

    Under the lock that every claim takes, no claim comes between a trial's fail and its retry's
    queuing. One that did counted neither (a failed trial does not count, its retry was not there
    yet) and took a new trial in the retry's place, one over the budget once the retry ran
    (issue 17: 13 budgeted trials for 12). Optuna's ``fail_stale_trials`` does the same without
    the lock, and drops the retry of a trial it failed when the database fails before the retry
    is queued (the trial is no longer running, so a second call never finds it).

    Args:
        study: The study.
        storage: The storage it was loaded from.
        trial_ids: Its trials to fail (``stale_trial_ids``, ``unbeaten_trial_ids``); one
            another worker finished or failed first is left to it.
        failed: The trials this caller failed so far, kept across ``with_retry``'s attempts:
            each attempt queues their retries again, which ``RetryKilledTrials`` stores once.
    """
    newly = set()
    for trial_id in set(trial_ids) - failed:
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.add(trial_id)
                newly.add(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker finished or failed it first
            pass
    callback = storage.get_heartbeat_stale_trial_callback() if _heartbeat_enabled(storage) else None  # type: ignore[attr-defined]
    for trial_id in sorted(failed):
        trial = storage.get_trial(trial_id)
        if trial_id in newly:
            log.warning("trial %d: its worker died (its heartbeat is stale, or it never beat): failed, and retried", trial.number)
        if callback is not None:
            callback(study, trial)


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished, running and queued search trials count; a trial failed by a dead worker does not,
    because Optuna queues its retry, which does. Fold trials (cross-validation) never count."""
    if is_fold_trial(trial):
        return False
    if trial.state != TrialState.FAIL:
        return True
    return trial.user_attrs.get(STATUS) == "failed"


def study_timed_out(study: optuna.Study, settings: StudySettings, started: float) -> bool:
    """Whether the study's ``--timeout`` (for the study as a whole) has passed.

    The timeout is read from the study (the read that gives its age), so a ``study extend``
    applies to running workers, whose ``settings`` were loaded when they started.
    """
    attrs = with_retry(lambda: study.user_attrs, what="reading the study's timeout")  # a worker asks between trials
    timeout_s = attrs.get(TIMEOUT_S, settings.timeout_s)
    return timeout_s is not None and _study_age(attrs, started) >= timeout_s


def current_budget(study: optuna.Study, settings: StudySettings) -> StudySettings:
    """``settings`` with the budget the study records now (``kilotune study extend`` changes it):
    one read of the study's attributes, a single indexed query on an RDB storage."""
    attrs = with_retry(lambda: study.user_attrs, what="reading the study's budget")
    return replace(settings, n_trials=attrs.get(N_TRIALS, settings.n_trials), timeout_s=attrs.get(TIMEOUT_S, settings.timeout_s))


def budget_left(study: optuna.Study, settings: StudySettings, started: float) -> bool:
    settings = current_budget(study, settings)
    if study_timed_out(study, settings, started):
        return False
    if settings.search_trials is None:
        return True
    trials = study.get_trials(deepcopy=False)
    # A queued trial (a retry, an enqueued preset) is already inside the budget: ask() pops it.
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return sum(counts_toward_budget(t) for t in trials) < settings.search_trials


def claim_trial(study: optuna.Study, settings: StudySettings, storage: BaseStorage, started: float) -> optuna.Trial | None:
    """``study.ask()`` within the study's global budget; None when it is spent. Call it under
    ``budget_lock``, which every worker's claim queues for.

    On an RDB storage the budget is counted by two indexed queries (9-27 ms from 0 to 128 running trials).
    ``budget_left`` and ``study.ask`` each re-read every unfinished trial with its attributes
    and reports (Optuna's cached storage re-reads those on every call): 14 ms in an idle study,
    368 ms with 128 unfinished trials, which capped a 64-worker fleet below the rate it starts
    10-second trials (bench/budget_claim.py, docs/bench-storage.md).

    Args:
        study: The study.
        settings: Its settings (the budget: ``n_trials``, ``timeout_s``).
        storage: The storage the study was loaded from.
        started: When this worker started (the timeout's origin if the study has no record of it).
    """
    settings = current_budget(study, settings)  # running workers see a `study extend` at their next claim
    if not isinstance(storage, RDBStorage) or not optuna_internals.fast_paths():  # (outside Optuna's tested range: its public API)
        if budget_left(study, settings, started):
            return study.ask()
        return _cross_validation_trial(study, settings, storage, started)
    if study_timed_out(study, settings, started):
        return None
    counted, waiting = _budget_rows(storage, optuna_internals.study_id(study, storage))
    if waiting:
        # A queued trial (a retry, an enqueued preset, an old study's fold trial) is already inside
        # the budget; Study.ask takes it (and reads the study, which is rare enough here).
        return study.ask()
    if settings.search_trials is not None and counted >= settings.search_trials:
        return _cross_validation_trial(study, settings, storage, started)
    return optuna_internals.new_trial(study, storage)


def _cross_validation_trial(study: optuna.Study, settings: StudySettings, storage: BaseStorage, started: float) -> optuna.Trial | None:
    """Once the search's trials are spent: a fold trial of a top candidate from the companion
    study (``search.winner``), queued now if it is missing. None while a search trial still runs
    (it may enter the top, and folds queued for it then would overrun the budget), when every fold
    is taken, or when the study is not cross-validated."""
    if not settings.fold_trials or study_timed_out(study, settings, started):
        return None
    trials = StudyTrials.read(study, storage)
    if any(not t.state.is_finished() for t in trials.search):
        return None
    cv_study = load_cv_study(study, storage, create=True)
    enqueue_fold_trials(trials, cv_study, settings.cv_top_k, settings.cv_folds)
    if not cv_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    return cv_study.ask()


def _budget_rows(storage: RDBStorage, study_id: int) -> tuple[int, list[int]]:
    """Trials counting toward the budget (``counts_toward_budget``), and the WAITING trials' ids."""
    return optuna_internals.budget_rows(storage, study_id, status_key=STATUS, fold_key=CV_OF)


def _study_age(attrs: dict[str, Any], fallback: float) -> float:
    """Seconds since the study was created (the timeout is for the study as a whole)."""
    created = attrs.get(CREATED_AT)
    if not created:
        return time.time() - fallback
    return (datetime.now(timezone.utc) - datetime.fromisoformat(created)).total_seconds()


@contextlib.contextmanager
def budget_lock(url: str, study_name: str, storage: BaseStorage) -> Iterator[None]:
    """Serialises "is there budget left? then ask" across workers, so the budget is exact.

    PostgreSQL: a session advisory lock keyed by the study, on a connection from the
    storage's own pool (so a worker never holds more than that pool). SQLite and journal
    files: an fcntl lock beside the file (all their workers share one host). Other
    databases: no lock, and the budget may be overshot by up to one trial per worker.
    """
    url = storage_url(url)
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    if url.startswith("postgresql") and isinstance(storage, RDBStorage):
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)" % key)
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)" % key)
        return
    path = local_path(url)
    if path is None:
        yield
        return
    with file_lock(f"{path}.{key & 0xFFFFFFFF:08x}.lock"):
        yield


def local_path(url: str) -> Path | None:
    """The file of a SQLite URL or a journal file's path; None for a server's URL (or in-memory SQLite)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    if "://" not in url:
        return Path(url)
    return None
