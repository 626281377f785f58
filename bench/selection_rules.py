"""Which trial each selection rule would have declared the winner, on the search-budget bench's kilotune studies.

    python bench/selection_rules.py --runs-dir runs/search_budget            # every kilotune-b*-s* study there

Counterfactuals on the trials each study ran (a study searched with other rules would also have
sampled other trials after TPE's start-up, so these say what the selection did, not the search):

    product     the product's ranking (``search.winner.ranking``): the objective the study records
                (its last tenth), a preset within one standard error of the best kept
    no-rule     the same without the one-standard-error rule
    window-3    each trial valued by the mean of its last 3 epochs (the objective before), no rule
    no-top-up   the product's ranking over the first ``budget // epochs`` trials only (the bench's
                top-up adds trials once pruning leaves epochs unspent)

No training, no test set: the study files and their validation accuracies only.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

RULES = ("product", "no-rule", "window-3", "no-top-up")


def winners(url: str, name: str, trials_before_top_up: int) -> dict[str, tuple[int, str, float]]:
    """Each rule's winner as (trial number, preset name or arch, its value under that rule)."""
    import optuna

    from kilotune.search.settings import StudySettings
    from kilotune.search.storage import open_storage
    from kilotune.search.winner import StudyTrials, objective_value, ranking

    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trials, k = StudyTrials.read(study, storage), StudySettings.from_study(study).cv_top_k
    window3 = [copy.deepcopy(t) for t in trials.search]
    for t in window3:
        if t.value is not None:
            t.value = objective_value(list(t.intermediate_values.values()), 3)
    picks = {
        "product": ranking(trials, k),
        "no-rule": ranking(trials, k, prefer_presets=False),
        "window-3": ranking(StudyTrials(window3, trials.folds, trials.direction), k, prefer_presets=False),
        "no-top-up": ranking(StudyTrials([t for t in trials.search if t.number < trials_before_top_up], trials.folds, trials.direction), k),
    }
    return {rule: (r[0].trial.number, r[0].trial.user_attrs.get("preset") or r[0].trial.user_attrs.get("config", {}).get("arch", "?"), r[0].mean)
            for rule, r in picks.items() if r}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/search_budget")
    parser.add_argument("--epochs-per-trial", type=int, default=6)
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("| study | " + " | ".join(RULES) + " |\n| --- |" + " --- |" * len(RULES))
    for db in sorted(Path(args.runs_dir).glob("kilotune-b*-s*/study.db")):
        name = db.parent.name
        budget = int(name.rsplit("-", 2)[1][1:])
        found = winners(f"sqlite:///{db}", name, budget // args.epochs_per_trial)
        print(f"| {name} | " + " | ".join(f"trial {n} ({what}, {v:.3f})" for n, what, v in (found[r] for r in RULES if r in found)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
