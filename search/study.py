"""The study: created (or joined) with its settings, loaded with its sampler and pruner, its budget extended.

The storage is search/storage.py's, the settings search/settings.py's, the budget's claim
search/budget.py's and the retries of dead workers' trials search/retries.py's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

import optuna
from optuna.storages import BaseStorage

from kilotune.models.names import listing
from kilotune.search.attrs import BUDGET_HISTORY, CREATED_AT, CV_FOLDS, CV_TOP_K, N_TRIALS, SUBSET_CONTENT, TIMEOUT_S
from kilotune.search.settings import StudySettings
from kilotune.subset.files import now_iso


def create_study(
    name: str, settings: StudySettings, storage: BaseStorage, *, keep_settings: bool = False, subset_content: dict[str, Any] | None = None
) -> tuple[optuna.Study, bool]:
    """Creates the study, or returns the existing one; safe when many processes race.

    Args:
        name: The study name.
        settings: What to record if the study is new.
        storage: The storage.
        keep_settings: Join an existing study whose recorded settings differ from ``settings``
            and keep the recorded ones (the data must still be the same).
        subset_content: The subset file's content (``SubsetFile.to_dict()``), stored in the study
            (``SUBSET_CONTENT``) so workers on hosts without the file find it (``stored_subset``);
            also stored into an existing study on the same data that lacks it (made before).

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
        if subset_content is not None:  # before the settings: a worker that reads them finds it
            _store_subset(storage, name, subset_content)
        # Written one key at a time, ``created_at`` last: its presence marks a complete record.
        for key, value in asdict(settings).items():
            study.set_user_attr(key, value)
        return study, created
    recorded = StudySettings.from_study(study)
    check_same_data(recorded, settings.dataset_checksum, settings.subset_checksum, name)
    if subset_content is not None and stored_subset(name, storage) is None:
        _store_subset(storage, name, subset_content)  # the same subset (checked): its workers may now run elsewhere
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


def stored_subset(name: str, storage: BaseStorage) -> dict[str, Any] | None:
    """The subset file's content that study ``name`` carries (``create_study``); None for a study
    made before studies carried it, whose workers read the recorded ``subset_path``."""
    return storage.get_study_system_attrs(storage.get_study_id_from_name(name)).get(SUBSET_CONTENT)


def _store_subset(storage: BaseStorage, name: str, content: dict[str, Any]) -> None:
    storage.set_study_system_attr(storage.get_study_id_from_name(name), SUBSET_CONTENT, content)


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


