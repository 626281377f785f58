"""Export -> retrain round trip on real Fashion-MNIST, snapshot epochs, and data mismatches."""

import json
from dataclasses import asdict

import optuna
import pytest

from kilotune.cli.main import main
from kilotune.search.settings import StudySettings
from kilotune.subset.datasets import load_dataset
from kilotune.subset.splits import class_balanced_sample
from kilotune.subset.subsetfile import load_subset, write_subset
from kilotune.training.config import TrainConfig
from kilotune.training.retrain import snapshot_epochs

TINY = TrainConfig(arch="vgg8", width=0.125, epochs=1, batch_size=16, seed=5)


@pytest.fixture(scope="module")
def dataset(fashion_subset):  # skips where Fashion-MNIST is not installed
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="module")
def exported(dataset, fashion_subset, tmp_path_factory):
    """A hand-made one-trial study on a 10-per-class subset, exported with `kilotune export`."""
    tmp = tmp_path_factory.mktemp("retrain")
    subset = load_subset(fashion_subset)
    settings = StudySettings(dataset=dataset.name, dataset_checksum=dataset.checksum, subset_path=str(subset.path),
                             subset_checksum=subset.checksum, epochs=TINY.epochs, n_trials=1, kilotune_version="0.1.0")  # fmt: skip
    url = f"sqlite:///{tmp / 'x.db'}"
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    for key, value in asdict(settings).items():
        study.set_user_attr(key, value)
    trial = study.ask()
    trial.suggest_categorical("arch", ["vgg8"])
    for key, value in {"config": TINY.to_dict(), "worker": "host:1", "status": "complete"}.items():
        trial.set_user_attr(key, value)
    trial.report(0.42, 1)
    study.tell(trial, 0.42)
    best = tmp / "best.json"
    assert main(["export", "--study", "tiny", "--storage", url, "--out", str(best)]) == 0
    return best, study.trials[0]


def test_export_holds_the_trials_exact_config(exported, dataset):
    best, trial = exported
    data = json.loads(best.read_text())
    assert data["config"] == trial.user_attrs["config"]
    assert TrainConfig.from_json(best) == TINY
    assert data["provenance"]["dataset_checksum"] == dataset.checksum and data["provenance"]["value"] == 0.42


@pytest.mark.slow
def test_retrain_trains_on_all_chosen_images_and_tests_once_per_seed(exported, tmp_path, capsys):
    best, _ = exported
    out = tmp_path / "out"
    assert main(["retrain", str(best), "--seeds", "1", "--tta", "--snapshots", "2", "--epochs", "2", "--out-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_images"] == 100 and results["test_images"] == 10_000
    assert results["config"] == TINY.replace(epochs=2).to_dict()
    assert [r["seed"] for r in results["runs"]] == [TINY.seed]
    for key in ("test_accuracy", "tta_test_accuracy", "snapshot_test_accuracy"):
        summary = results[key]
        assert len(summary["values"]) == 1 and 0.0 <= summary["values"][0] <= 1.0
        assert summary["mean"] == summary["values"][0] and summary["std"] == 0.0
    for run in results["runs"]:
        assert (out / run["model"]).is_file() and run["epochs"] == 2 and run["snapshot_epochs"] == [1, 2]
        assert len(list((out / f"seed-{run['seed']}" / "snapshots").glob("*.weights.h5"))) == 2
        assert not (out / f"seed-{run['seed']}" / "checkpoint").exists()
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "snapshot ensemble" in printed


@pytest.mark.slow
def test_a_retrain_of_several_seeds_estimates_what_is_left_of_all_of_them(exported, tmp_path, capsys):
    """Issue 20: each seed's epoch lines estimate that seed; a line between seeds estimates the whole retrain."""
    best, _ = exported
    assert main(["retrain", str(best), "--seeds", "2", "--epochs", "1", "--out-dir", str(tmp_path / "out")]) == 0
    between = [line for line in capsys.readouterr().out.splitlines() if line.startswith("retrain: ")]
    assert len(between) == 1 and between[0].startswith("retrain: 1/2 seeds, ") and between[0].endswith(" left"), between


def test_retrain_refuses_a_subset_of_other_data(exported, dataset, fashion_subset, tmp_path, capsys):
    best, _ = exported
    other = json.loads(fashion_subset.read_text())
    other["dataset_checksum"] = "sha256:" + "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    different = write_subset(tmp_path / "different.json", dataset, class_balanced_sample(dataset.y_train, 5, seed=1),
                             method="random", seed=1, per_class=5)  # fmt: skip
    for subset, message in ((tmp_path / "other.json", "was built for other data"),
                            (different.path, "is not the one study 'tiny' searched on")):  # fmt: skip
        assert main(["retrain", str(best), "--subset", str(subset), "--out-dir", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retrain_on_another_host_takes_the_subset_the_export_carries(exported, dataset, fashion_subset, tmp_path, monkeypatch, capsys):
    """Issue 28: the recorded subset file is not on this host; the export's ``subset_content`` is
    written into this host's cache and used. An export without it names where it looked."""
    from kilotune.subset.subsetfile import cached_subset_path
    from kilotune.training.retrain import load_training_set

    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    export = json.loads(exported[0].read_text())
    subset = load_subset(fashion_subset)
    export["provenance"].update(subset_path=str(tmp_path / "creator" / "gone.json"), subset_content=subset.to_dict())
    _, found = load_training_set(export)
    assert found.path == cached_subset_path(dataset, subset.checksum) and found.path.is_file()
    assert found.indices.tolist() == subset.indices.tolist()
    export["provenance"]["subset_content"] = None  # the cache still serves
    assert load_training_set(export)[1].path == found.path
    found.path.unlink()
    (tmp_path / "old.json").write_text(json.dumps(export))
    assert main(["retrain", str(tmp_path / "old.json"), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is not on this host (subset file not found: " in err and "gone.json" in err and "pass --subset" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("schedule", "epochs", "steps", "k", "expected"),
    [
        ("onecycle", 40, 8, 1, [40]),
        ("onecycle", 40, 8, 3, [31, 35, 40]),
        ("cosine", 4, 8, 4, [1, 2, 3, 4]),
        ("cosine_restarts", 14, 1, 3, [2, 6, 14]),  # cycles of 2, 4 and 8 epochs
        ("cosine_restarts", 40, 7, 2, [17, 40]),
        ("cosine_restarts", 40, 7, 4, [31, 34, 37, 40]),  # more snapshots than cycles: evenly spaced
    ],
)
def test_snapshot_epochs(schedule, epochs, steps, k, expected):
    assert snapshot_epochs(TrainConfig(schedule=schedule, epochs=epochs), steps, k) == expected


def test_snapshot_epochs_rejects_more_snapshots_than_epochs():
    with pytest.raises(ValueError, match="snapshots must be from 1 to the 2 epochs trained"):
        snapshot_epochs(TrainConfig(epochs=2), 1, 3)


@pytest.mark.slow
def test_an_ensemble_export_trains_every_member_and_saves_one_predictor(exported, dataset, tmp_path, capsys):
    """Issue 27: each member trained on all images for the epochs asked (its schedule spanning
    them), tested once; the ensemble saved as one predictor whose own output is the figure."""
    import numpy as np

    import kilotune

    best, _ = exported
    data = json.loads(best.read_text())
    data["ensemble"] = {"selection": "seeds", "note": None, "validation": None,
                        "members": [{"trial": None, "weight": w, "config": {**TINY.to_dict(), "seed": s, "flip": s == 5}} for s, w in ((5, 1), (6, 2))]}
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["retrain", str(path), "--epochs", "2", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [m["seed"] for m in results["members"]] == [5, 6] and [m["epochs"] for m in results["members"]] == [2, 2]
    assert results["final_epochs"] == [2, 2] and results["total_epochs"] == 4
    assert results["flip_tta"] == [True, False], "flipped test images only for the member trained with flips"
    assert "tta_test_accuracy" in results["members"][0] and "tta_test_accuracy" not in results["members"][1]
    assert "ensemble of 2 members with flip TTA for 1 trained with flips: test accuracy" in printed and "member 2 (trial -, seed 6, weight 2)" in printed
    predictor = kilotune.load_predictor(out / "ensemble.keras")
    probabilities = predictor.predict(dataset.x_test.astype(np.float32), verbose=0)
    assert probabilities.shape == (len(dataset.x_test), 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert 0.0 < results["ensemble_test_accuracy"] <= 1.0
    # The figure, computed from the members' probabilities, is what the saved file scores.
    assert abs(results["ensemble_test_accuracy"] - np.mean(probabilities.argmax(axis=1) == dataset.y_test)) <= 1 / len(dataset.x_test)
    from kilotune.training.retrain import _check_saved_predictor

    with pytest.raises(RuntimeError, match="does not give its members' mean softmax"):
        _check_saved_predictor(out / "ensemble.keras", dataset.x_test, probabilities[::-1])
    with pytest.raises(ValueError, match="an ensemble export trains its members once each"):
        kilotune.retrain(data, seeds=2)
    with pytest.raises(ValueError, match="give epochs .* or total_epochs .*, not both: epochs=2, total_epochs=4"):
        kilotune.retrain(data, epochs=2, total_epochs=4)

    # 3 epochs in all cannot give 2 members the 54 each that paid: the winner alone trains them.
    assert main(["retrain", str(path), "--total-epochs", "3", "--out-dir", str(tmp_path / "short")]) == 0
    assert "1 of 2 members trained: 3 epochs in all give each member at least 54 only so" in capsys.readouterr().out
    short = json.loads((tmp_path / "short" / "results.json").read_text())
    assert [(m["seed"], m["epochs"]) for m in short["members"]] == [(5, 3)] and short["total_epochs"] == 3
    assert short["shape"] == {"total_epochs": 3, "members_exported": 2, "members_trained": 1, "min_member_epochs": 54}


@pytest.mark.parametrize(("members", "total", "least", "expected"), [
    (3, 54, 54, (1, 54)),  # the bench's final step: one model
    (3, 162, 54, (3, 54)),
    (3, 120, 54, (2, 60)),  # two members, the total shared
    (3, 500, 54, (3, 166)),  # never more members than exported
    (1, 10, 54, (1, 10)),  # one config: all the epochs
])
def test_final_shape_trains_the_members_that_get_enough_epochs(members, total, least, expected):
    from kilotune.training.retrain import final_shape

    assert final_shape(members, total, least) == expected


def test_final_shape_rejects_nothing_to_train():
    from kilotune.training.retrain import final_shape

    with pytest.raises(ValueError, match="total_epochs=0"):
        final_shape(3, 0)


def test_flip_test_time_augmentation_is_refused_where_a_flip_changes_the_class(tmp_path):
    """A dataset declares whether a horizontal flip keeps the class (subset/datasets/); flip TTA needs it to."""
    import numpy as np

    from kilotune.subset.datasets import ImageDataset
    from kilotune.training.retrain import retrain

    images = np.zeros((4, 8, 8, 1), np.uint8)
    digits = ImageDataset("digits", images, np.array([0, 1, 0, 1]), images, np.array([0, 1, 0, 1]), ("0", "1"), flip_keeps_class=False)
    export = {"config": TrainConfig(arch="vgg8", epochs=1).to_dict(), "provenance": {}}
    with pytest.raises(ValueError, match="a horizontal flip changes the class of an image of digits"):
        retrain(export, digits, np.arange(4), tta=True, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything is trained or written"
