"""How an ensemble's members are best chosen, on validation folds only (never the test set).

    python bench/ensemble_selection.py --runs runs/search_budget        # every kilotune study there
    python bench/ensemble_selection.py --studies a.db b.db --out bench/results/ensemble_selection.json

Reads recorded studies (SQLite files of ``kilotune`` runs, e.g. the cells of
bench/search_budget.py) whose top trials were cross-validated with their validation predictions
(``val_predictions``, search/ensemble.py). For each study it cross-fits: for every fold f of those
the candidates share, members are chosen on the other folds' out-of-fold predictions and the
choice is scored on fold f, which chose nothing. Strategies:

    winner    the best candidate by its mean over the choosing folds (one model)
    top-2     the best 2 by that mean, equal weights
    top-3     the best 3
    greedy-3  Caruana's ensemble selection with replacement, 3 picks (a candidate picked twice weighs 2)

A study's score is the mean over its folds (200 images each); the table gives each strategy's mean
over studies and its paired difference from the winner alone, with the studies it beat the
winner in. No training: seconds.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path
from typing import Any

STRATEGIES = ("winner", "top-2", "top-3", "greedy-3")


def study_scores(url: str) -> dict[str, float] | None:
    """Each strategy's cross-fitted accuracy on one study; None if it has under 2 usable candidates."""
    import optuna

    from kilotune.search.ensemble import choose_members, ensemble_accuracy, split_folds
    from kilotune.search.ensemble import candidates as find_candidates
    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage
    from kilotune.search.winner import StudyTrials, is_cv_study

    storage = open_storage(url, must_exist=True)
    scores: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    found = False
    for summary in optuna.get_all_study_summaries(storage):
        if is_cv_study(summary.user_attrs):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            settings = StudySettings.from_study(study)
        except ValueError:
            continue
        pool = find_candidates(StudyTrials.read(study, storage), settings.cv_top_k)
        if len(pool) < 2:
            continue
        found = True
        for choose, held_out in split_folds(sorted(pool[0].folds)):
            ranked = sorted(pool, key=lambda c: -sum(_fold_accuracy(c, f) for f in choose))  # by the choosing folds only
            picks = {
                "winner": [(ranked[0].number, 1)],
                "top-2": [(c.number, 1) for c in ranked[:2]],
                "top-3": [(c.number, 1) for c in ranked[:3]],
                "greedy-3": choose_members(ranked, 3, "greedy", folds=choose),
            }
            for strategy, members in picks.items():
                scores[strategy].append(ensemble_accuracy(pool, members, [held_out]))
    return {s: sum(v) / len(v) for s, v in scores.items()} if found else None


def _fold_accuracy(candidate: Any, fold: int) -> float:
    from kilotune.subset.datasets import accuracy

    return accuracy(*candidate.folds[fold])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/search_budget", help="a bench's runs directory: its kilotune*/study.db (default: %(default)s)")
    parser.add_argument("--studies", nargs="*", default=[], help="SQLite files of studies, instead of --runs")
    parser.add_argument("--out", help="also write the per-study scores here (JSON)")
    args = parser.parse_args(argv)
    files = args.studies or sorted(glob.glob(str(Path(args.runs) / "kilotune*" / "study.db")))
    per_study = {}
    for path in files:
        scores = study_scores(f"sqlite:///{Path(path).resolve()}")
        if scores is not None:
            per_study[Path(path).parent.name] = scores
    if not per_study:
        print(f"no study with 2 or more cross-validated candidates with predictions among {len(files)} files")
        return 1
    print(f"{len(per_study)} studies with 2+ cross-validated candidates (of {len(files)} files); cross-fitted, leave one fold out\n")
    print("| strategy | mean accuracy on the held-out folds | difference from the winner alone (points, mean ± std) | studies above / below the winner |")
    print("| --- | ---: | ---: | ---: |")
    for strategy in STRATEGIES:
        values = [s[strategy] for s in per_study.values()]
        diffs = [100 * (s[strategy] - s["winner"]) for s in per_study.values()]
        mean = sum(diffs) / len(diffs)
        std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else 0.0
        above, below = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        print(f"| {strategy} | {sum(values) / len(values):.4f} | {mean:+.2f} ± {std:.2f} | {above} / {below} |")
    if args.out:
        Path(args.out).write_text(json.dumps(per_study, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
