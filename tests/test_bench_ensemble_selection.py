"""bench/ensemble_selection.py: strategies cross-fitted on recorded studies' fold predictions."""

from __future__ import annotations


import pytest

from tests.conftest import REPO, load_script
from tests.search.test_ensemble import make_cv_study

BENCH = REPO / "bench" / "ensemble_selection.py"


def load_bench():
    return load_script(BENCH)


def test_each_strategy_is_chosen_on_some_folds_and_scored_on_another(tmp_path, capsys):
    import optuna

    from kilotune.search.ensemble import candidates, ensemble_accuracy
    from kilotune.search.storage import open_storage
    from kilotune.search.winner import StudyTrials

    bench = load_bench()
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"kilotune-b180-s{seed}" / "study.db"
        path.parent.mkdir()
        make_cv_study(f"sqlite:///{path}", seed)
        paths.append(path)
    scores = bench.study_scores(f"sqlite:///{paths[0]}")
    # top-3 takes every candidate whatever the choosing folds say: its score is plain arithmetic.
    storage = open_storage(f"sqlite:///{paths[0]}")
    study = optuna.load_study(study_name="e", storage=storage)
    pool = candidates(StudyTrials.read(study, storage), 3)
    expected = sum(ensemble_accuracy(pool, [(c.number, 1) for c in pool], [f]) for f in (0, 1, 2)) / 3
    assert scores["top-3"] == pytest.approx(expected)
    assert set(scores) == set(bench.STRATEGIES)
    assert bench.main(["--runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("2 studies with 2+ cross-validated candidates (of 2 files)")
    assert all(f"| {s} | " in table for s in bench.STRATEGIES) and "| winner | " in table and "+0.00 ± 0.00 | 0 / 0 |" in table
    assert bench.main(["--runs", str(tmp_path / "nothing-here")]) == 1
