"""The one gate to Optuna's internals: private paths inside the tested range, Optuna's public API
outside it (said once), and no other kilotune module using a private Optuna name."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage

from kilotune.search import optuna_internals
from kilotune.search.pruners import PRUNERS
from kilotune.search.optuna_internals import IndexedHyperbandPruner, SnapshotTPESampler
from kilotune.search.budget import claim_trial
from kilotune.search.settings import StudySettings
from kilotune.search.storage import open_storage
from kilotune.search.study import create_study
from kilotune.search.trial_writes import PendingWrites, store

REPO = Path(__file__).resolve().parents[2]
PACKAGES = tuple(sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"))  # every folder of the package
SETTINGS = StudySettings(dataset="d", dataset_checksum="-", subset_path="-", subset_checksum="-", epochs=9, n_trials=4)


@pytest.fixture
def outside_range(monkeypatch):
    """Optuna as a release outside the tested range; the once-warning not yet said."""
    monkeypatch.setattr(optuna, "__version__", "5.2.0")
    monkeypatch.setattr(optuna_internals.gate, "_warned", False)


def test_tested_range_matches_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    (low_major, low_minor), (high_major, high_minor) = optuna_internals.TESTED_RANGE
    assert f'"optuna>={low_major}.{low_minor},<{high_major}.{high_minor}"' in text


@pytest.mark.parametrize("version, inside", [("5.1.0", True), ("5.1.3.dev0", True), ("5.0.9", False),
                                             ("5.2.0", False), ("6.0.0", False), ("garbage", False)])
def test_in_tested_range(version, inside):
    assert optuna_internals.in_tested_range(version) is inside


def test_inside_range_the_private_paths(tmp_path):
    assert optuna_internals.in_tested_range(optuna.__version__), "the installed Optuna is the tested one"
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert isinstance(SETTINGS.sampler_for(), SnapshotTPESampler)
    assert isinstance(SETTINGS.pruner_for(storage), IndexedHyperbandPruner)
    assert optuna_internals.rdb_of(storage) is storage
    study, _ = create_study("s", SETTINGS, storage)
    trial = claim_trial(study, SETTINGS, storage, started=0.0)
    assert optuna_internals.trial_id(trial) == trial._trial_id


def test_outside_range_optunas_public_api(tmp_path, outside_range):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.warns(RuntimeWarning, match="outside kilotune's tested range"):
        sampler = SETTINGS.sampler_for()
    assert type(sampler) is optuna.samplers.TPESampler
    assert type(SETTINGS.pruner_for(storage)) is optuna.pruners.HyperbandPruner
    assert type(PRUNERS["median"].make(SETTINGS, storage)) is optuna.pruners.MedianPruner
    assert optuna_internals.rdb_of(storage) is None
    study, _ = create_study("s", SETTINGS, storage)
    trials = [claim_trial(study, SETTINGS, storage, started=0.0) for _ in range(5)]
    assert trials[-1] is None, "the budget of 4 is counted through the public API"
    trial = trials[0]
    trial_id = optuna_internals.trial_id(trial)
    assert trial_id == trial._trial_id
    assert optuna_internals.study_id(study, storage) == study._study_id
    store(storage, trial_id, PendingWrites(reports={1: 0.5}, user_attrs={"status": "running"}))
    stored = optuna_internals.frozen_trial(trial)
    assert stored.intermediate_values == {1: 0.5} and stored.user_attrs["status"] == "running"
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert optuna_internals.frozen_trial_id(running[0], study, storage) == running[0]._trial_id
    assert optuna_internals.beaten_trial_ids(storage, [trial_id]) is None


def test_outside_range_warns_once(outside_range, caplog):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert [optuna_internals.fast_paths() for _ in range(3)] == [False] * 3
    assert len([w for w in said if "tested range" in str(w.message)]) == 1
    assert len([r for r in caplog.records if "tested range" in r.getMessage()]) == 1


def _optuna_privates() -> set[str]:
    """Every single-underscore name Optuna's source defines: methods, functions and attributes."""
    names: set[str] = set()
    for path in Path(optuna.__file__).parent.rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"\bdef (_[a-z]\w*)", text))
        names.update(re.findall(r"\bself\.(_[a-z]\w*)\s*[:=]", text))
    return names


def private_optuna_uses(path: Path, privates: set[str]) -> list[str]:
    """Lines of ``path`` that use a private Optuna name: an import from an ``optuna.*._*`` module,
    ``x._name`` (or ``getattr(x, "_name")``) of one of Optuna's private names on anything but ``self``/``cls``, and in a
    subclass of an Optuna class such a ``self._name`` or a method named so."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna") and "._" in node.module:
            found.append(f"{path.name}:{node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("optuna") and "._" in a.name]
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "setattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in privates):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = ast.unparse(node.value)
            if node.attr in privates and (owner not in ("self", "cls") or _in_optuna_subclass(tree, node)):
                found.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and any("optuna" in ast.unparse(b) for b in cls.bases):
            found += [f"{path.name}:{f.lineno}: def {f.name}" for f in cls.body
                      if isinstance(f, ast.FunctionDef) and f.name in privates]
    return found


def _in_optuna_subclass(tree: ast.AST, target: ast.AST) -> bool:
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and any(n is target for n in ast.walk(cls)):
            return any("optuna" in ast.unparse(b) for b in cls.bases)
    return False


def kilotune_modules() -> list[Path]:
    paths = [REPO / "__init__.py", REPO / "__main__.py"]
    for package in PACKAGES:
        paths += sorted((REPO / package).glob("**/*.py")) if (REPO / package).is_dir() else []
    return paths


def test_no_other_module_uses_a_private_optuna_name():
    privates = _optuna_privates()
    assert {"_study_id", "_get_trials", "_trial_id", "_storage", "_create_bracket_study"} <= privates
    found = [use for path in kilotune_modules() if "optuna_internals" not in path.relative_to(REPO).parts
             for use in private_optuna_uses(path, privates)]
    assert found == [], "private Optuna names outside search/optuna_internals/"


def test_the_check_finds_private_names(tmp_path):
    """The check above is not vacuous: it finds each kind of use it looks for."""
    source = tmp_path / "m.py"
    source.write_text("import optuna\nfrom optuna.storages._rdb import models\n"
                      "def f(study):\n    return study._study_id, getattr(study._storage, '_backend', None)\n"
                      "class P(optuna.pruners.HyperbandPruner):\n"
                      "    def _create_bracket_study(self, s, i):\n        return self._pruners\n")
    found = private_optuna_uses(source, _optuna_privates())
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "from optuna.storages._rdb", "study._study_id", "getattr(..., '_backend')", "study._storage", "self._pruners", "def _create_bracket_study"])


def test_inside_range_store_is_one_transaction(tmp_path):
    """Inside the range ``store`` takes the schema path (``store_rdb``), not Optuna's calls."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study, _ = create_study("s", SETTINGS, storage)
    trial = study.ask()
    calls = []
    original = RDBStorage.set_trial_intermediate_value
    RDBStorage.set_trial_intermediate_value = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[method-assign]
    try:
        store(storage, optuna_internals.trial_id(trial), PendingWrites(reports={1: 0.25}))
    finally:
        RDBStorage.set_trial_intermediate_value = original  # type: ignore[method-assign]
    assert calls == [] and storage.get_trial(trial._trial_id).intermediate_values == {1: 0.25}
