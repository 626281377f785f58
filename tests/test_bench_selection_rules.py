"""bench/selection_rules.py: each selection rule's winner on a study's recorded trials."""

from __future__ import annotations

import numpy as np
import optuna

from kilotune.cli.main import main
from kilotune.search.ensemble import encode_predictions
from kilotune.search.storage import open_storage
from tests.conftest import REPO, load_script


def test_each_rule_picks_its_own_winner_from_the_same_trials(tmp_path, fashion_subset):
    bench = load_script(REPO / "bench" / "selection_rules.py")
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["study", "create", "--study", "s", "--storage", url, "--dataset", "fashion-mnist", "--subset", str(fashion_subset),
                 "--epochs", "6", "--n-trials", "3", "--cv-top-k", "0", "--no-warm-start"]) == 0  # fmt: skip
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    labels = np.arange(200) % 10

    def finish(curve: list[float], preset: str | None = None) -> int:
        trial = study.ask()
        for epoch, accuracy in enumerate(curve, 1):
            trial.report(accuracy, epoch)
        trial.set_user_attr("status", "complete")
        trial.set_user_attr("config", {"arch": "resnet9" if preset else "vgg8"})
        trial.set_user_attr("val_predictions", encode_predictions(np.eye(10)[labels], labels))
        if preset:
            trial.set_user_attr("preset", preset)
        study.tell(trial, curve[-1])  # the study's objective: its last tenth, the last epoch
        return trial.number

    one_cycle = finish([0.2, 0.1, 0.2, 0.1, 0.5, 0.70], preset="resnet9-davidnet")  # climbs at the end
    steady = finish([0.6, 0.7, 0.72, 0.72, 0.72, 0.72])  # a constant rate: level early
    finish([0.3, 0.3, 0.3, 0.3, 0.3, 0.30])
    fluke = finish([0.5, 0.6, 0.6, 0.6, 0.6, 0.80])  # a 4th trial: the top-up's

    found = bench.winners(url, "s", trials_before_top_up=3)
    assert found["no-rule"][0] == fluke and found["product"][0] == fluke, "0.80 is more than one error (0.028) ahead"
    assert found["window-3"][0] == steady, "the mean of the last 3 epochs ranks the level curve first"
    assert found["no-top-up"] == (one_cycle, "resnet9-davidnet", 0.70), "0.72 is within one error (0.032) of the preset's 0.70"
