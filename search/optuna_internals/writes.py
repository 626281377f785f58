"""A trial's writes (search/trial_writes.py) in one transaction on Optuna's schema."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy
from optuna.distributions import check_distribution_compatibility, distribution_to_json, json_to_distribution
from optuna.storages import RDBStorage
from sqlalchemy.dialects import postgresql, sqlite


# (database, study id, param name, distribution JSON) found to fit the study's distribution of
# that param: which never changes once stored, so each worker checks each param once, as
# Optuna's cached storage does, not once per trial.
_FITS_THE_STUDY: set[tuple[str, int, str, str]] = set()


def store_rdb(rdb: RDBStorage, trial_id: int, writes: Any) -> None:
    """Stores ``writes`` (``search.trial_writes.PendingWrites``) in one transaction on Optuna's schema."""
    from optuna.storages._rdb import models  # Optuna's versioned schema

    insert = postgresql.insert if rdb.engine.name == "postgresql" else sqlite.insert
    with rdb.engine.begin() as conn:
        # The row lock orders these writes with a concurrent tell, which takes the same lock.
        row = conn.execute(
            sqlalchemy.select(models.TrialModel.state, models.TrialModel.study_id)
            .where(models.TrialModel.trial_id == trial_id)
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        state, study_id = row
        rdb.check_trial_is_updatable(trial_id, state)

        if writes.params:
            database = rdb.engine.url.render_as_string(hide_password=True)
            checked = {name: (database, study_id, name, distribution_to_json(d)) for name, (_, d) in writes.params.items()}
            for name, (_, distribution) in writes.params.items():
                if checked[name] in _FITS_THE_STUDY:
                    continue
                previous = conn.execute(
                    sqlalchemy.select(models.TrialParamModel.distribution_json)
                    .join(models.TrialModel, models.TrialModel.trial_id == models.TrialParamModel.trial_id)
                    .where(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name)
                    .limit(1)
                ).scalar_one_or_none()
                if previous is not None:
                    check_distribution_compatibility(json_to_distribution(previous), distribution)
            rows = [
                {"trial_id": trial_id, "param_name": name, "param_value": value, "distribution_json": checked[name][3]}
                for name, (value, _) in writes.params.items()
            ]
            conn.execute(insert(models.TrialParamModel).on_conflict_do_nothing(index_elements=["trial_id", "param_name"]), rows)
            _FITS_THE_STUDY.update(checked.values())  # (if the transaction fails, a fit is still a fit)

        if writes.reports:
            to_stored = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
            rows = []
            for step, value in writes.reports.items():
                stored, value_type = to_stored(value)
                rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": value_type})
            statement = insert(models.TrialIntermediateValueModel)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["trial_id", "step"],
                    set_={
                        "intermediate_value": statement.excluded.intermediate_value,
                        "intermediate_value_type": statement.excluded.intermediate_value_type,
                    },
                ),
                rows,
            )

        if writes.user_attrs:
            rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in writes.user_attrs.items()]
            statement = insert(models.TrialUserAttributeModel)
            conn.execute(
                statement.on_conflict_do_update(index_elements=["trial_id", "key"], set_={"value_json": statement.excluded.value_json}),
                rows,
            )
