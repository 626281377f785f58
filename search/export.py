"""Export one trial's configuration with the provenance needed to reproduce it.

    {"config": {...TrainConfig...},
     "provenance": {"study", "trial", "value", "cv_mean", "cv_stderr", "cv_folds", "dataset",
                    "dataset_checksum", "subset_path", "subset_checksum", "subset_content", "val_fraction",
                    "split_seed", "kilotune_version", "library_versions", "seed", "exported_at"}}

``subset_content`` is the subset file itself, as the study carries it (null for a study made
before studies did), so ``kilotune retrain`` on another host needs no ``--subset``.

Rank 1 is the study's cross-validated winner (search/winner.py). The file is what
``kilotune retrain`` reads, and ``TrainConfig.from_json`` reads its ``config``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from kilotune.models.names import listing
from kilotune.search.attrs import CONFIG
from kilotune.search import ensemble
from kilotune.search.ensemble import DEFAULT_SELECTION, SELECTIONS
from kilotune.search.settings import ExportOptions, StudySettings
from kilotune.search.storage import open_storage
from kilotune.search.study import load_study, stored_subset
from kilotune.search.winner import CrossValidated, StudyTrials, ranking
from kilotune.subset.files import count_of, installed_version, now_iso, read_json, write_json
from kilotune.training.config import TrainConfig

__all__ = ["check_export", "export_trial", "provenance", "read_export", "write_json"]

LIBRARIES = ("keras", "tensorflow", "jax", "optuna", "numpy")


def export_trial(study: optuna.Study, storage: BaseStorage, rank: int = ExportOptions.rank) -> dict[str, Any]:
    """The ``rank``-th best complete trial's config and provenance (rank 1 is the winner: the
    best mean over folds among the cross-validated trials; ``winner.ranking``).

    Args:
        study: The study.
        storage: The storage it was loaded from (its fold trials are in a companion study there).
        rank: 1 for the winner, 2 for the runner-up, ...

    Raises:
        ValueError: if the study has no complete trials, fewer than ``rank``, or the trial
            carries no ``config`` user attribute.
    """
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank=}")
    settings = StudySettings.from_study(study)
    ranked = ranking(StudyTrials.read(study, storage), settings.cv_top_k)
    if not ranked:
        raise ValueError(f"study {study.study_name!r} has no complete trials to export")
    if rank > len(ranked):
        raise ValueError(f"study {study.study_name!r} has {len(ranked)} complete trial(s); cannot export {rank=}")
    evaluated = ranked[rank - 1]
    trial = evaluated.trial
    if CONFIG not in trial.user_attrs:
        raise ValueError(f"trial {trial.number} of study {study.study_name!r} has no 'config' user attribute")
    # Validate now: an export that retrain cannot read should fail here, not later.
    config = TrainConfig.from_dict(trial.user_attrs[CONFIG])
    stored = stored_subset(study.study_name, storage)
    return {"config": config.to_dict(), "provenance": provenance(study, settings, evaluated, subset_content=stored)}


def export_ensemble(study: optuna.Study, storage: BaseStorage, k: int, selection: str = DEFAULT_SELECTION) -> dict[str, Any]:
    """The winner's export (:func:`export_trial`) with an ``ensemble`` of ``k`` members that
    ``kilotune retrain`` trains, each on all the images, and averages (search/ensemble.py).

    ``top`` and ``greedy`` choose among the cross-validated trials by their out-of-fold
    predictions; with fewer cross-validated trials than ``k``, ``top`` takes them all and the
    winner again with other seeds for the rest. A study with none (a small or time budget, or
    from before trials recorded their predictions) gets a seed ensemble of its winner, and
    ``ensemble.note`` says why.

    Raises:
        ValueError: for ``k`` below 2 or an unknown ``selection``, naming them.
    """
    if k < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {k=} (export without --ensemble for one model)")
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not allowed; choose one of {listing(SELECTIONS)}")
    exported = export_trial(study, storage)
    trials, settings = StudyTrials.read(study, storage), StudySettings.from_study(study)
    pool, note = ensemble.candidates(trials, settings.cv_top_k), None
    if selection != "seeds" and not pool:
        note = "no cross-validated trials with validation predictions: a seed ensemble of the winner"
        selection = "seeds"
    if selection == "seeds":
        members = ensemble.seed_members(exported["config"], k)
        validation = None
    else:
        chosen = ensemble.choose_members(pool, k, selection)
        members = ensemble.member_configs(trials, chosen)
        if selection == "top" and len(chosen) < k:
            note = f"{count_of(len(pool), 'cross-validated trial')} for {k} members: the rest are the winner with other seeds"
            members += ensemble.seed_members(exported["config"], k - len(chosen) + 1)[1:]
        folds = sorted(pool[0].folds)
        # On the folds that chose it: optimistic for greedy; bench/ensemble_selection.py cross-fits.
        validation = {"folds": folds, "winner": ensemble.ensemble_accuracy(pool, [(pool[0].number, 1)], folds),
                      "ensemble": ensemble.ensemble_accuracy(pool, chosen, folds)}
    for member in members:
        TrainConfig.from_dict(member["config"])  # an export retrain cannot read fails here
    exported["ensemble"] = {"selection": selection, "members": members, "validation": validation, "note": note}
    return exported


def export_study(study: str, storage: str, rank: int = ExportOptions.rank, ensemble: int = ExportOptions.ensemble,
                 selection: str = DEFAULT_SELECTION) -> dict[str, Any]:
    """What ``kilotune export`` writes for study ``study``: :func:`export_trial` of its ``rank``-th
    best trial, or with ``ensemble`` members, :func:`export_ensemble`.

    Args:
        study: The study name.
        storage: Its storage URL, resolved (``search.storage.storage_url``).
        rank: 1 for the best complete trial, 2 for the runner-up, ...
        ensemble: 0 for one configuration; 2 or more for an ensemble of that many members.
        selection: How an ensemble's members are chosen: top, greedy or seeds.
    """
    opened = open_storage(storage, must_exist=True)
    loaded, _ = load_study(study, opened)
    if ensemble:
        if rank != 1:
            raise ValueError(f"an ensemble is built around the winner: give rank=1 with ensemble={ensemble}, not {rank=}")
        return export_ensemble(loaded, opened, ensemble, selection)
    return export_trial(loaded, opened, rank)


def validation_text(provenance: dict[str, Any]) -> str:
    """An export's validation accuracy as users read it: the cross-validated mean with its
    standard error, e.g. ``0.8120 ± 0.0110 over 5 folds``, or ``0.8120 on fold 0 only`` (as ``search.winner.CrossValidated.describe``)."""
    if provenance.get("cv_stderr") is None:  # (exports from before cross-validation have no cv_ keys)
        why = f" ({provenance['cv_note']})" if provenance.get("cv_note") else ""
        return f"{provenance.get('cv_mean', provenance['value']):.4f} on fold 0 only{why}"
    return f"{provenance['cv_mean']:.4f} ± {provenance['cv_stderr']:.4f} over {len(provenance['cv_folds'])} folds"


def provenance(study: optuna.Study, settings: StudySettings, evaluated: CrossValidated, *,
               subset_content: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Where the trial's value came from: the study, its data and subset (``subset_content``: the
    file itself, ``search.study.stored_subset``), its folds, and the versions."""
    trial = evaluated.trial
    return {
        "study": study.study_name,
        "trial": trial.number,
        "value": trial.value,  # on the search's fold 0
        # Mean and standard error over the folds it was validated on (stderr null for one fold).
        "cv_mean": evaluated.mean,
        "cv_stderr": evaluated.stderr,
        "cv_folds": sorted(evaluated.values),
        "cv_note": None if evaluated.stderr is not None else single_fold_reason(settings, evaluated),
        "dataset": settings.dataset,
        "dataset_checksum": settings.dataset_checksum,
        "subset_path": settings.subset_path,
        "subset_checksum": settings.subset_checksum,
        "subset_content": subset_content,
        "val_fraction": settings.val_fraction,
        "split_seed": settings.split_seed,
        # The version that created the study, i.e. that trained its trials.
        "kilotune_version": settings.kilotune_version,
        # Workers do not record their libraries, so these are the exporting environment's.
        "library_versions": library_versions(),
        "seed": trial.user_attrs[CONFIG].get("seed", 0),
        "exported_at": now_iso(),
    }


def single_fold_reason(settings: StudySettings, evaluated: CrossValidated) -> str:
    """Why a winner was validated on one fold only, for a user who expected a cross-validated mean."""
    if settings.n_trials is None:
        return "the study has no trial budget, and only a trial budget (--n-trials) sets some aside for cross-validation"
    if settings.fold_trials == 0:
        return f"the study does not cross-validate, cv_top_k={settings.cv_top_k} for a budget of {settings.n_trials} trials"
    return (f"the top {settings.cv_top_k} {'is' if settings.cv_top_k == 1 else 'are'} cross-validated by the time the "
            f"{settings.search_trials} search trials are done, and this one's fold trials have not run")


def library_versions() -> dict[str, str]:
    """Installed versions from package metadata; importing TensorFlow just to ask would take seconds."""
    found = {}
    for name in LIBRARIES:
        if (installed := installed_version(name, default=None)) is not None:
            found[name] = installed
    found["python"] = platform.python_version()
    return found


def read_export(path: str | Path) -> dict[str, Any]:
    """Reads an export file, checking it has a valid config and the provenance retrain needs."""
    return check_export(read_json(path, "export file"), f"export file {path}")


def check_export(data: Any, source: str = "the export") -> dict[str, Any]:
    """``data`` if it is an export retrain can use (a valid config and the provenance retrain
    needs); else a one-line ValueError naming ``source`` and what is missing."""
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("provenance"), dict):
        raise ValueError(f"{source} is not a kilotune export: expected an object with 'config' and 'provenance' (what kilotune.best returns)")
    TrainConfig.from_dict(data["config"])
    missing = [k for k in ("study", "trial", "dataset", "dataset_checksum", "subset_path", "subset_checksum") if k not in data["provenance"]]
    if missing:
        raise ValueError(f"{source}: provenance is missing {listing(missing, 'and')}")
    if "ensemble" in data:
        members = data["ensemble"].get("members") if isinstance(data["ensemble"], dict) else None
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) and isinstance(m.get("config"), dict) for m in members):
            raise ValueError(f"{source}: 'ensemble' must hold 'members', at least 2, each with a 'config' (what kilotune.best(ensemble=k) writes)")
        for member in members:
            TrainConfig.from_dict(member["config"])
            if not isinstance(member.get("weight", 1), int) or member.get("weight", 1) < 1:
                raise ValueError(f"{source}: an ensemble member's weight must be a whole number of at least 1, got {member.get('weight')!r}")
    return data
