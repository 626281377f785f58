"""``kilotune subset build|show|compare`` through kilotune.cli.main, and compare_subsets on tiny data."""

import json

import numpy as np
import pytest

from kilotune.cli.main import main
from kilotune.subset.datasets import ImageDataset, load_dataset
from kilotune.subset.subsetfile import load_subset, write_subset
from kilotune.training.compare import compare_subsets, holdout_indices
from kilotune.training.config import TrainConfig
from tests.subset.datasets.files import write_fashion


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))


def test_build_random_then_show_with_a_grid(fashion_mnist, tmp_path, capsys):
    out = tmp_path / "random.json"
    assert main(["subset", "build", "--dataset", "fashion-mnist", "--method", "random", "--per-class", "5", "--seed", "2", "--out", str(out)]) == 0
    subset = load_subset(out, fashion_mnist)
    assert subset.method == "random" and subset.extractor is None and subset.counts() == {c: 5 for c in range(10)}
    grid = tmp_path / "grid.png"
    assert main(["subset", "show", str(out), "--grid", str(grid), "--per-row", "4"]) == 0
    printed = capsys.readouterr().out
    assert "0:T-shirt/top=5" in printed and "9:Ankle boot=5" in printed and subset.checksum in printed

    from PIL import Image

    with Image.open(grid) as image:
        assert image.size == (4 * 34 + 2, 10 * 34 + 2)  # 32x32 images with 2-pixel gaps


def test_build_refuses_bad_arguments_with_exit_status_2(tmp_path, capsys):
    for argv, message in (
        (["--method", "farthest"], "unknown --method 'farthest'"),
        (["--method", "max-sum", "--draws", "10"], "--draws applies to --method random-restarts"),
        (["--method", "mixed", "--weight", "2"], "argument --weight: must be a number in [0, 1], got '2'"),
        (["--method", "max-sum", "--extractor", str(tmp_path / "none.keras")], f"argument --extractor: no such file: '{tmp_path / 'none.keras'}'"),
    ):
        assert main(["subset", "build", "--dataset", "fashion-mnist", *argv]) == 2
        assert message in capsys.readouterr().err


def test_build_more_per_class_than_the_data_holds_is_exit_2(fashion_mnist, tmp_path, capsys):
    assert main(["subset", "build", "--dataset", "fashion-mnist", "--method", "random", "--per-class", "7000", "--out", str(tmp_path / "x.json")]) == 2
    assert "per_class=7000 is larger than class" in capsys.readouterr().err


def tiny(seed: int = 0, n: int = 120) -> ImageDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 3
    x = (rng.integers(0, 60, (n, 16, 16, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    return ImageDataset("cifar10", x, y, x[:30], y[:30], ("a", "b", "c"))


def test_compare_refuses_subsets_of_different_data(tmp_path, capsys):
    a = write_subset(tmp_path / "a.json", tiny(0), [0, 1, 2], method="random", seed=0, per_class=1)
    b = write_subset(tmp_path / "b.json", tiny(1), [0, 1, 2], method="random", seed=0, per_class=1)
    assert main(["subset", "compare", str(a.path), str(b.path)]) == 2
    assert "must be of the same dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_subsets_trains_each_subset_on_a_disjoint_holdout(tmp_path):
    dataset = tiny()
    a = write_subset(tmp_path / "a.json", dataset, np.arange(30), method="random", seed=0, per_class=10)
    b = write_subset(tmp_path / "b.json", dataset, np.arange(30, 60), method="max-sum", seed=0, per_class=10)
    holdout = holdout_indices(dataset.y_train, np.arange(60), 30)
    assert not np.isin(holdout, np.arange(60)).any() and np.bincount(dataset.y_train[holdout]).tolist() == [10, 10, 10]
    runs = []
    config = TrainConfig(arch="vgg8", width=0.125, epochs=1, batch_size=16)
    rows = compare_subsets(dataset, [a, b], config, seeds=[3], holdout_size=30, on_run=runs.append)
    assert [r["method"] for r in rows] == ["random", "max-sum"] and [r["seed"] for r in runs] == [3, 3]
    for row in rows:
        assert len(row["accuracies"]) == 1 and 0 <= row["mean"] <= 1 and row["std"] == 0.0
        assert row["mean"] == row["accuracies"][0] and row["holdout_size"] == 30
    json.dumps(rows)  # What --out writes must be plain JSON.
    with pytest.raises(ValueError, match="positive multiple of the 3 classes"):
        holdout_indices(dataset.y_train, np.arange(60), 31)


@pytest.mark.slow  # trains a tiny feature extractor for max-sum
def test_build_without_method_builds_the_default_and_max_sum_stays_available(tmp_path, capsys):
    from kilotune.subset.features import DEFAULT_METHOD, default_subset_path

    data = write_fashion(tmp_path / "data")  # 60 training images, 6 a class
    dataset = load_dataset("fashion-mnist", data)
    assert main(["subset", "build", "--dataset", "fashion-mnist", "--data-dir", str(data), "--per-class", "5"]) == 0
    default = load_subset(default_subset_path("fashion-mnist", DEFAULT_METHOD, 5, 0), dataset)
    assert default.method == DEFAULT_METHOD and default.counts() == {c: 5 for c in range(10)}
    assert main(["subset", "build", "--dataset", "fashion-mnist", "--data-dir", str(data), "--per-class", "5", "--method", "max-sum"]) == 0
    max_sum = load_subset(default_subset_path("fashion-mnist", "max-sum", 5, 0), dataset)
    assert max_sum.method == "max-sum" and max_sum.extractor is not None and max_sum.objectives["total"]["sum_distance"] > 0
    assert f"(default: {DEFAULT_METHOD}, chosen by held-out accuracy" in _build_help(capsys)


def _build_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["subset", "build", "--help"])
    return " ".join(capsys.readouterr().out.split())
