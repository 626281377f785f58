"""Feature extractor round trip and the cached default subset, on a tiny synthetic dataset."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from kilotune.subset.datasets import ImageDataset
from kilotune.subset.features import (
    DEFAULT_METHOD,
    Extractor,
    default_extractor_path,
    default_subset_path,
    ensure_default_subset,
    extract_features,
    load_extractor,
    metadata_path,
    train_extractor,
)
from kilotune.subset.selection import METHODS
from kilotune.subset.subsetfile import load_subset, write_subset

ACCURACY_BENCH = Path(__file__).resolve().parents[2] / "bench" / "results" / "subset_accuracy.json"


def tiny_images(n: int = 200, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 4
    # Class-dependent brightness so one epoch learns something.
    x = (rng.integers(0, 60, (n, 16, 16, 3)) + 60 * y[:, None, None, None]).astype(np.uint8)
    return ImageDataset("cifar10", x, y, x[:40], y[:40], ("a", "b", "c", "d"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    dataset = tiny_images()
    path = tmp_path_factory.mktemp("extractor") / "tiny.keras"
    blind = dataclasses.replace(dataset)
    object.__setattr__(blind, "x_test", None)  # only train and retrain read the test set: reading it here fails
    object.__setattr__(blind, "y_test", None)
    accuracy = train_extractor(blind, path, epochs=1, seed=0, batch_size=50)
    return dataset, path, accuracy


@pytest.mark.slow
def test_train_saves_model_and_metadata_and_round_trips(trained):
    dataset, path, accuracy = trained
    assert 0.0 <= accuracy <= 1.0 and path.is_file()
    metadata = json.loads(metadata_path(path).read_text())
    assert metadata["train_accuracy"] == accuracy and metadata["dataset_checksum"] == dataset.checksum
    assert len(metadata["mean"]) == 3 and metadata["arch"] == "resnet9"
    extractor = load_extractor(path)
    features = extract_features(extractor, dataset.x_train[:30], batch_size=16)  # several batches
    assert features.shape == (30, 128) and features.dtype == np.float32  # resnet9 width 0.25: 128-d
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert np.allclose(features, extract_features(extractor, dataset.x_train[:30]), atol=1e-5)


def test_load_extractor_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="feature extractor not found"):
        load_extractor(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="missing or bad metadata"):
        load_extractor(tmp_path / "junk.keras")


def test_default_paths_follow_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path))
    assert default_extractor_path("cifar10") == tmp_path / "extractors" / "cifar10.keras"
    assert default_subset_path("cifar10", "max-sum", 100, 0) == tmp_path / "subsets" / "cifar10-max-sum-100pc-seed0.json"


def test_default_method_is_the_one_the_accuracy_bench_chose():
    result = json.loads(ACCURACY_BENCH.read_text())
    assert DEFAULT_METHOD in METHODS and DEFAULT_METHOD == result["chosen"]
    by_method = {r["method"]: r for r in result["results"]}
    best = max((r for r in result["results"] if r["complete"]), key=lambda r: r["mean"])
    # Chosen by the bench's rule: within 2 standard errors of the best mean.
    assert best["mean"] - by_method[DEFAULT_METHOD]["mean"] <= 2 * by_method[DEFAULT_METHOD]["diff_se"]
    assert len(by_method) >= 3 and by_method[DEFAULT_METHOD]["complete"] and len(by_method[DEFAULT_METHOD]["accuracies"]) == 3


@pytest.mark.slow  # the module's tiny extractor is trained
def test_default_subset_is_built_once_then_reused(trained, monkeypatch, tmp_path):
    dataset, path, _ = trained
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path))
    built = ensure_default_subset(dataset, per_class=5, extractor_path=path)
    assert built == default_subset_path(dataset.name, DEFAULT_METHOD, 5, 0)
    subset = load_subset(built, dataset)
    assert subset.method == DEFAULT_METHOD and np.bincount(subset.labels).tolist() == [5] * 4
    stamp = built.stat().st_mtime_ns
    assert ensure_default_subset(dataset, per_class=5, extractor_path=path) == built and built.stat().st_mtime_ns == stamp


@pytest.mark.slow  # the module's tiny extractor is trained
def test_a_cached_file_of_another_method_is_not_taken_for_the_default(trained, monkeypatch, tmp_path):
    dataset, path, _ = trained
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path))
    other = "max-sum" if DEFAULT_METHOD != "max-sum" else "random"
    # E.g. a max-sum file left under the default's name by an older version or by hand.
    stale = write_subset(default_subset_path(dataset.name, DEFAULT_METHOD, 5, 0), dataset, np.arange(20), method=other, seed=0, per_class=5)
    built = ensure_default_subset(dataset, per_class=5, extractor_path=path)
    assert built == stale.path and load_subset(built, dataset).method == DEFAULT_METHOD


@pytest.mark.slow  # the module's tiny extractor is trained
def test_max_sum_default_subset_still_builds_with_its_objectives(trained, monkeypatch, tmp_path, capsys):
    dataset, path, _ = trained
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path))
    built = ensure_default_subset(dataset, method="max-sum", per_class=5, extractor_path=path)
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("subset (max-sum)")]
    assert [line.rsplit(":", 1)[-1].split()[:2] for line in steps[1::2]] == [["done", "in"]] * 2, steps
    assert "feature vectors of" in steps[0] and "choosing 5 a class" in steps[2], steps
    assert built.name == f"{dataset.name}-max-sum-5pc-seed0.json"
    subset = load_subset(built, dataset)
    assert subset.method == "max-sum" and np.bincount(subset.labels).tolist() == [5] * 4
    assert subset.extractor["path"] == str(path) and subset.objectives["total"]["sum_upper_bound"] >= subset.objectives["total"]["sum_distance"]


@pytest.mark.slow
def test_training_prints_a_line_per_epoch_with_an_estimate(tmp_path, capsys):
    import re

    train_extractor(tiny_images(40), tmp_path / "p.keras", epochs=2, seed=0, batch_size=20)
    err = capsys.readouterr().err
    assert re.findall(r"feature extractor \(40 cifar10 images\): epoch (\d)/2, \d+ s elapsed, about \d+ s left \(", err) == ["1", "2"], err[-2000:]


def test_feature_extraction_reports_its_progress(capsys):
    """Issue 20: a long step says how far it is, the elapsed time and an estimate of what is left."""

    class Model:  # stands in for the cut backbone: an 8-d vector of each image's mean
        def predict_on_batch(self, x):
            return np.repeat(x.mean(axis=(1, 2, 3))[:, None], 8, axis=1) + 1.0

    extractor = Extractor(Model(), np.zeros(3, np.float32), np.ones(3, np.float32), {}, Path("x.keras"))
    images = np.random.default_rng(0).integers(0, 255, (50, 4, 4, 3), dtype=np.uint8)
    assert extract_features(extractor, images, batch_size=10, every_s=0.0).shape == (50, 8)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"features: {n}/50 images" for n in (10, 20, 30, 40)], lines
    assert all("elapsed, about" in line and line.endswith("left") for line in lines), lines
    extract_features(extractor, images, batch_size=10, every_s=None)
    assert capsys.readouterr().err == ""
