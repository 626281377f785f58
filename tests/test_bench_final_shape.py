"""bench/final_shape.py: k seeds of E/k epochs against one model of E, scored on held-out images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REPO, load_script

bench = load_script(REPO / "bench" / "final_shape.py")


def test_dev_images_are_outside_the_subset_class_balanced_and_fixed():
    labels = np.arange(1000) % 10
    subset = np.arange(0, 1000, 7)
    dev = bench.dev_indices(labels, subset, 100)
    assert len(dev) == 100 and not set(dev) & set(subset)
    assert np.bincount(labels[dev]).tolist() == [10] * 10
    assert np.array_equal(dev, bench.dev_indices(labels, subset, 100)), "the same images every run"


def test_a_shape_is_scored_by_its_members_mean_softmax(tmp_path):
    """Three members each right on two thirds of the images, wrong on different thirds: their mean
    is right on all; one model right on half is the shape they are compared with."""
    labels = np.arange(6) % 3
    right, wrong = np.eye(3)[labels], np.eye(3)[(labels + 1) % 3] * 0.9
    (tmp_path / "probs").mkdir()
    rows = []
    for i in range(3):
        probs = right.copy()
        probs[2 * i : 2 * i + 2] = wrong[2 * i : 2 * i + 2]
        rows.append(member(tmp_path, f"three-{i}", seed=i, epochs=18, probs=probs, labels=labels))
    half = np.where(np.arange(6)[:, None] < 3, right, wrong)
    rows.append(member(tmp_path, "one", seed=0, epochs=54, probs=half, labels=labels))
    (tmp_path / "rows-60.json").write_text(json.dumps(rows))
    scores = bench.shape_scores(tmp_path, 60, 54, [1, 3])
    assert scores[4][1]["dev"] == 0.5 and scores[4][3]["dev"] == 1.0
    assert scores[4][3]["members_dev"] == pytest.approx(2 / 3)


def member(out, name, *, seed, epochs, probs, labels) -> dict:
    np.savez_compressed(out / "probs" / f"{name}.npz", val=probs.astype(np.float16), dev=probs.astype(np.float16), val_labels=labels, dev_labels=labels)
    accuracy = float(np.mean(np.argmax(probs, 1) == labels))
    return {"name": name, "budget": 60, "winner": 4, "arch": "vgg8", "seed": seed, "epochs": epochs, "status": "complete",
            "wall_s": 1.0, "val_accuracy": accuracy, "dev_accuracy": accuracy}


@pytest.mark.slow
def test_a_winner_is_trained_in_both_shapes_and_the_run_resumes(tmp_path, fashion_mnist):
    out = tmp_path / "out"
    args = ["--out", str(out), "--winners", "3", "--members", "1", "2", "--total-epochs", "4", "--dev-images", "100"]
    bench.main(args)
    rows = json.loads((out / "rows-60.json").read_text())
    seed = int(bench.winners(60)[3]["seed"])
    assert sorted((r["seed"], r["epochs"]) for r in rows) == [(seed, 2), (seed, 4), (seed + 1, 2)]
    assert all(0.0 <= r["dev_accuracy"] <= 1.0 and r["status"] == "complete" for r in rows)
    bench.main(args)  # everything done: nothing trained again
    assert json.loads((out / "rows-60.json").read_text()) == rows
    scores = bench.shape_scores(out, 60, 4, [1, 2])
    assert set(scores[3]) == {1, 2}
    with pytest.raises(SystemExit, match="final_shape: warmup_epochs="):
        bench.main(["--out", str(out), "--winners", "3", "--members", "4", "--total-epochs", "4", "--dev-images", "100"])
    # --snapshots trains the 1 x 4 model again, keeping its softmax at the epochs retrain --snapshots 2 averages.
    snapshots = ["--out", str(out), "--winners", "3", "--snapshots", "2", "--total-epochs", "4", "--dev-images", "100"]
    bench.main(snapshots)
    [row] = json.loads((out / "snapshots-60.json").read_text())
    assert row["kept_epochs"] == [3, 4] and row["snapshot_epochs"] == {"2": [3, 4]}
    one = next(r for r in rows if r["epochs"] == 4)
    assert bench.snapshot_scores(out, [row])[3]["last"]["dev"] == one["dev_accuracy"], "the same training as the 1 x 4 model"
    bench.main(snapshots)  # resumes: nothing trained again
    assert json.loads((out / "snapshots-60.json").read_text()) == [row]


def test_a_horizon_counts_the_pairs_of_architectures_it_orders_as_the_longest_does(tmp_path):
    """A vgg8 ahead at 6 epochs, a resnet9 ahead at 54 (on dev; tied on validation): the short
    horizon orders the pair against the long one, and a tie is out of order."""
    configs = bench.winners(60)
    resnet, vgg = (next(w for w, c in configs.items() if c["arch"] == arch) for arch in ("resnet9", "vgg8"))
    rows = [{"winner": w, "seed": int(configs[w]["seed"]), "epochs": epochs, "val_accuracy": 0.8, "dev_accuracy": dev}
            for w, epochs, dev in [(resnet, 6, 0.70), (vgg, 6, 0.80), (resnet, 54, 0.86), (vgg, 54, 0.84)]]
    rows.append({"winner": resnet, "seed": int(configs[resnet]["seed"]) + 1, "epochs": 6, "val_accuracy": 0.9, "dev_accuracy": 0.9})  # a second seed: not read
    (tmp_path / "rows-60.json").write_text(json.dumps(rows))
    lines = bench.horizon_report(tmp_path, 60, [6, 54]).splitlines()
    assert "6 epochs: 0 of 1 pairs of architectures in the order 54 epochs give them on dev; on validation 0" in lines[-2]
    assert "54 epochs: 1 of 1 pairs" in lines[-1]
    assert sum(line.startswith(f"| {w} |") for w in (resnet, vgg) for line in lines) == 2, "a row per winner with every horizon"
    with pytest.raises(ValueError, match="horizons=\\[6, 12\\]"):
        bench.horizon_report(tmp_path, 60, [6, 12])


def test_a_snapshot_ensemble_is_the_mean_softmax_of_its_epochs_against_the_last(tmp_path):
    """The last epoch is right on 2 of 4 images. On the third, epochs 41 and 47 outvote it; on the
    fourth, 47 sides with it: the 3-snapshot mean is right on 3."""
    labels = np.array([0, 1, 0, 1])
    last = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])
    e41 = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.4, 0.6]])
    e47 = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])
    (tmp_path / "probs").mkdir()
    arrays = {f"{s}@{e}": p.astype(np.float16) for s in ("val", "dev") for e, p in ((41, e41), (47, e47), (54, last))}
    np.savez_compressed(tmp_path / "probs" / "w.npz", **arrays, val_labels=labels, dev_labels=labels)
    winner = sorted(bench.winners(60))[0]
    row = {"name": "w", "budget": 60, "winner": winner, "arch": "vgg8", "seed": 0, "epochs": 54, "status": "complete", "wall_s": 1.0,
           "kept_epochs": [41, 47, 54], "snapshot_epochs": {"2": [41, 54], "3": [41, 47, 54]}}
    (tmp_path / "snapshots-60.json").write_text(json.dumps([row]))
    scores = bench.snapshot_scores(tmp_path, bench.snapshot_rows(tmp_path, 60))[winner]
    assert scores["last"]["dev"] == 0.5 and scores["3"]["dev"] == 0.75
    lines = bench.snapshot_report(tmp_path, 60).splitlines()
    assert "3 snapshots less the last epoch on dev: +25.0 ± nan points over 1 winners, ahead in 1, behind in 0" in lines
    with pytest.raises(ValueError, match="budget=180"):  # no rows at that budget: a line, not a traceback
        bench.snapshot_report(tmp_path, 180)
