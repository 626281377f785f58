"""The subset file: round trip, checksums, and refusing other data or broken files."""

import json

import numpy as np
import pytest

from kilotune.subset.datasets import ImageDataset
from kilotune.subset.subsetfile import FORMAT, cached_subset_path, find_subset, load_subset, write_subset


def tiny_dataset(seed: int = 0, name: str = "fashion-mnist", n: int = 40) -> ImageDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return ImageDataset(name, x, np.arange(n, dtype=np.int64) % 4, x[:8], np.arange(8, dtype=np.int64) % 4, ("a", "b", "c", "d"))


@pytest.fixture
def written(tmp_path):
    dataset = tiny_dataset()
    objectives = {"total": {"sum_distance": 1.5}, "per_class": {}}
    subset = write_subset(tmp_path / "sub" / "s.json", dataset, [9, 1, 2, 3], method="max-sum", params={"max_swaps": 5},
                          seed=3, per_class=1, extractor={"path": "x.keras", "train_accuracy": 0.9, "arch": "resnet9"}, objectives=objectives)
    return dataset, subset


def test_round_trip_keeps_every_field_and_sorts_indices(written):
    dataset, subset = written
    loaded = load_subset(subset.path, dataset)
    assert loaded.indices.tolist() == [1, 2, 3, 9] and loaded.labels.tolist() == [1, 2, 3, 1]
    assert (loaded.dataset, loaded.method, loaded.params, loaded.seed, loaded.per_class) == ("fashion-mnist", "max-sum", {"max_swaps": 5}, 3, 1)
    assert loaded.dataset_checksum == dataset.checksum and loaded.extractor["arch"] == "resnet9"
    assert loaded.objectives["total"]["sum_distance"] == 1.5 and loaded.created and loaded.kilotune_version
    assert loaded.counts() == {1: 2, 2: 1, 3: 1}
    assert json.loads(subset.path.read_text())["format"] == FORMAT


def test_checksum_names_the_indices(written, tmp_path):
    dataset, subset = written
    assert subset.checksum.startswith("sha256:") and subset.checksum == load_subset(subset.path).checksum
    other = write_subset(tmp_path / "o.json", dataset, [1, 2, 3, 8], method="random", seed=0, per_class=1)
    assert other.checksum != subset.checksum


def test_a_subset_of_other_data_is_refused_naming_both(written):
    _, subset = written
    with pytest.raises(ValueError, match=r"built for other data: fashion-mnist \(sha256:.*loaded data is cifar10"):
        load_subset(subset.path, tiny_dataset(seed=1, name="cifar10"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not readable JSON"),
        ('{"format": "something/2"}', "not a subset file: format is 'something/2'"),
        ('[1, 2]', "not a subset file"),
        (json.dumps({"format": FORMAT, "dataset": "x"}), r"missing dataset_checksum, "),
    ],
)
def test_corrupt_files_are_clear_value_errors(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_subset(path)


def test_bad_indices_and_missing_files(written, tmp_path):
    dataset, subset = written
    data = json.loads(subset.path.read_text())
    for indices, match in (([1, 1, 2, 3], "distinct"), ([1, "2", 3, 4], "list of integers")):
        (tmp_path / "bad.json").write_text(json.dumps({**data, "indices": indices}))
        with pytest.raises(ValueError, match=match):
            load_subset(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({**data, "labels": [0, 0, 0, 0]}))
    with pytest.raises(ValueError, match="do not match"):
        load_subset(tmp_path / "bad.json", dataset)
    with pytest.raises(ValueError, match="subset file not found"):
        load_subset(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="without duplicates"):
        write_subset(tmp_path / "w.json", dataset, [1, 1], method="random", seed=0, per_class=1)


def test_find_subset_takes_given_then_recorded_then_cache_then_the_stored_copy(written, tmp_path, monkeypatch):
    """A study's subset on a host that may lack the creator's file (issue 28): the order, and
    the stored copy written into this host's cache, from which the next call reads it."""
    dataset, subset = written
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    stored, checksum = subset.to_dict(), subset.checksum
    other = write_subset(tmp_path / "other.json", dataset, [1, 2, 3, 8], method="random", seed=0, per_class=1)
    # --subset wins even where it is another subset: the caller names the mismatch (check_same_data).
    assert find_subset(dataset, checksum, given=other.path, recorded=subset.path, stored=stored).path == other.path
    assert find_subset(dataset, checksum, recorded=subset.path, stored=stored).path == subset.path
    cached = cached_subset_path(dataset, checksum)
    assert cached.parent == tmp_path / "cache" / "subsets" and checksum[7:23] in cached.name and dataset.checksum[7:19] in cached.name
    assert not cached.exists(), "the recorded file served: nothing written"
    # This host has another subset at the creator's path: skipped, the stored copy is written and used.
    found = find_subset(dataset, checksum, recorded=other.path, stored=stored)
    assert found.path == cached and found.checksum == checksum and found.indices.tolist() == [1, 2, 3, 9]
    assert load_subset(cached, dataset).to_dict() == stored
    subset.path.unlink()
    assert find_subset(dataset, checksum, recorded=subset.path, stored=None).path == cached, "the cache serves without the copy"


def test_find_subset_refuses_what_it_cannot_verify(written, tmp_path, monkeypatch):
    dataset, subset = written
    monkeypatch.setenv("KILOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    subset.path.unlink()
    # A study from before studies carried their subset, its file gone: one line naming each place tried.
    with pytest.raises(ValueError, match=r"is not on this host \(subset file not found: .*s\.json; subset file not found: .*cache.*"
                                         r"stores no copy.*pass --subset"):
        find_subset(dataset, subset.checksum, recorded=subset.path)
    other = write_subset(tmp_path / "other.json", dataset, [1, 2, 3, 8], method="random", seed=0, per_class=1)
    with pytest.raises(ValueError, match="the stored copy of subset sha256:.* is another subset"):
        find_subset(dataset, subset.checksum, recorded=subset.path, stored=other.to_dict())
    with pytest.raises(ValueError, match="built for other data"):
        find_subset(tiny_dataset(seed=1), subset.checksum, recorded=subset.path, stored=subset.to_dict())
    assert not (tmp_path / "cache" / "subsets").exists() or not list((tmp_path / "cache" / "subsets").iterdir()), "nothing unverified cached"
