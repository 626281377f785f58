"""Fetching a dataset found nowhere (subset/datasets/fetch.py), the network faked (urllib's urlopen and a fake ``apt-get`` on
PATH; a real ``dpkg-deb`` and real processes), and one real fetch end to end."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from kilotune.subset.datasets import DatasetError
from kilotune.subset.datasets import load_dataset
from tests.conftest import _unavailable, run_bounded
from tests.subset.datasets.files import FASHION_FILES, KERAS_FASHION_URL, write_fashion


def upstream_files(tmp_path: Path, seed: int = 5) -> dict[str, bytes]:
    root = write_fashion(tmp_path / f"upstream-{seed}", seed)
    return {name: (root / name).read_bytes() for name in FASHION_FILES}


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], calls: list[str] | None = None) -> None:
    """urllib's urlopen answers Keras' URLs with ``files``."""

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        if calls is not None:
            calls.append(url)
        if not url.startswith(KERAS_FASHION_URL) or url[len(KERAS_FASHION_URL):] not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]
        return io.BytesIO(files[url[len(KERAS_FASHION_URL):]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def urlopen(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def fake_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deb: Path | None) -> Path:
    """An ``apt-get`` first on PATH: ``download`` copies ``deb`` here, or fails as apt-get does
    without the package; it logs its arguments to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = bin_dir / "calls"
    act = f"cp {deb} ." if deb else 'echo "E: Unable to locate package $2" >&2; exit 100'
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n{act}\n')
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def debian_package(tmp_path: Path) -> Path:
    """A real .deb laid out as Debian's dataset-fashion-mnist (tiny files), built with dpkg-deb."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (not a Debian system): the Debian fallback cannot run here")
    root = tmp_path / "pkg"
    write_fashion(root / "usr" / "share" / "datasets" / "fashion-mnist", seed=7)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: dataset-fashion-mnist\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: kilotune tests <tests@example.org>\nDescription: test\n")  # fmt: skip
    deb = tmp_path / "dataset-fashion-mnist_1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_a_missing_fashion_mnist_is_fetched_from_keras_urls_into_the_cache(tmp_path, monkeypatch, capsys):
    files, calls = upstream_files(tmp_path), []
    serve(monkeypatch, files, calls)
    cache = tmp_path / "cache" / "fashion-mnist"  # KILOTUNE_CACHE_DIR's
    ds = load_dataset("fashion-mnist")
    assert sorted(calls) == sorted(KERAS_FASHION_URL + name for name in FASHION_FILES)
    assert {name: (cache / name).read_bytes() for name in FASHION_FILES} == files
    assert sorted(p.name for p in cache.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"])
    assert ds.checksum == load_dataset("fashion-mnist", tmp_path / "upstream-5").checksum
    before, after = capsys.readouterr().err.splitlines()
    assert before == (f"Fashion-MNIST not found in {cache}, {tmp_path / 'system' / 'fashion-mnist'}, "
                      f"{tmp_path / 'home/.keras/datasets/fashion-mnist'}; fetching it into {cache} from Keras' URLs "
                      f"{KERAS_FASHION_URL}, else Debian's archive (apt-get download dataset-fashion-mnist)")  # fmt: skip
    size = sum(map(len, files.values())) / 1e6
    assert re.fullmatch(rf"Fashion-MNIST fetched from Keras' URLs {KERAS_FASHION_URL} into {cache} \({size:.1f} MB in \d+ s\)", after)
    load_dataset("fashion-mnist")
    assert len(calls) == 4 and capsys.readouterr().err == "", "fetched once"


def test_without_keras_urls_it_comes_from_debians_archive(tmp_path, monkeypatch, capsys):
    deb = debian_package(tmp_path)
    offline(monkeypatch)
    log = fake_apt_get(tmp_path, monkeypatch, deb)
    ds = load_dataset("fashion-mnist", tmp_path / "data")  # --data-dir: fetched into it
    assert log.read_text() == "download dataset-fashion-mnist\n"
    into = tmp_path / "data" / "fashion-mnist"
    assert ds.checksum == load_dataset("fashion-mnist", tmp_path / "pkg/usr/share/datasets/fashion-mnist").checksum
    assert sorted(p.name for p in into.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"]), "the .deb and its tree are gone"
    after = capsys.readouterr().err.splitlines()[-1]
    assert after.startswith(f"Fashion-MNIST fetched from Debian's archive (apt-get download dataset-fashion-mnist) into {into} (")
    assert after.endswith(f" s; tried first: Keras' URLs {KERAS_FASHION_URL}: URLError: <urlopen error [Errno -3] Temporary failure in name resolution>)")


def test_when_every_way_fails_one_line_names_each_and_what_to_do(tmp_path, monkeypatch):
    offline(monkeypatch)
    fake_apt_get(tmp_path, monkeypatch, None)
    cache = tmp_path / "cache" / "fashion-mnist"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist")
    assert str(info.value) == (
        f"Fashion-MNIST not found in {cache}, {tmp_path / 'system/fashion-mnist'}, {tmp_path / 'home/.keras/datasets/fashion-mnist'} "
        f"and could not be fetched: Keras' URLs {KERAS_FASHION_URL}: URLError: <urlopen error [Errno -3] Temporary failure in name "
        "resolution>; Debian's archive (apt-get download dataset-fashion-mnist): RuntimeError: `apt-get download dataset-fashion-mnist` "
        "exited with 100: E: Unable to locate package dataset-fashion-mnist; put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {cache} (or apt-get install dataset-fashion-mnist)"
    )  # fmt: skip
    assert [p.name for p in cache.iterdir()] == [".fetch.lock"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=re.escape("RuntimeError: apt-get not found (not a Debian system?); put ")):
        load_dataset("fashion-mnist")


def test_a_download_that_does_not_load_is_never_put_in_place(tmp_path, monkeypatch):
    files = upstream_files(tmp_path)
    files["t10k-images-idx3-ubyte.gz"] = files["t10k-images-idx3-ubyte.gz"][:-20]  # a cut-off transfer
    serve(monkeypatch, files)
    fake_apt_get(tmp_path, monkeypatch, None)
    with pytest.raises(DatasetError, match=r"Keras' URLs \S+: DatasetError: \S+/t10k-images-idx3-ubyte.gz: not a readable gzip"):
        load_dataset("fashion-mnist")
    assert [p.name for p in (tmp_path / "cache" / "fashion-mnist").iterdir()] == [".fetch.lock"]


def _load_and_record(out: Path) -> None:
    out.write_text(load_dataset("fashion-mnist").checksum)


def test_processes_fetching_at_once_fetch_once_and_a_killed_fetch_is_never_trusted(tmp_path, monkeypatch):
    files, log = upstream_files(tmp_path), tmp_path / "downloads"
    cache = tmp_path / "cache" / "fashion-mnist"
    block_at = {"t10k-images-idx3-ubyte.gz": 60.0}  # the killed fetch hangs there

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        name = url[len(KERAS_FASHION_URL):]
        with open(log, "a") as f:
            f.write(name + "\n")
        time.sleep(block_at.get(name, 0.3))
        return io.BytesIO(files[name])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    fake_apt_get(tmp_path, monkeypatch, None)
    fork = multiprocessing.get_context("fork")  # the children inherit the faked network

    def downloads() -> list[str]:
        return log.read_text().split() if log.exists() else []

    def wait(predicate) -> None:
        deadline = time.monotonic() + 60
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert predicate()

    killed = fork.Process(target=_load_and_record, args=(tmp_path / "killed",))
    killed.start()
    wait(lambda: "t10k-images-idx3-ubyte.gz" in downloads())
    killed.kill()
    killed.join()
    assert (cache / ".fetch.partial" / "train-images-idx3-ubyte.gz").is_file(), "the fetch was killed half-way"
    with pytest.raises(DatasetError, match="Fashion-MNIST not found in"):
        load_dataset("fashion-mnist", download=False)  # what it staged is not trusted

    block_at.clear()
    log.unlink()
    first = fork.Process(target=_load_and_record, args=(tmp_path / "first",))
    first.start()
    wait(lambda: downloads())  # the first holds the lock and fetches; the second finds nothing yet
    second = fork.Process(target=_load_and_record, args=(tmp_path / "second",))
    second.start()
    for p in (first, second):
        p.join(60)
        assert p.exitcode == 0
    assert sorted(downloads()) == sorted(FASHION_FILES), "one fetch, the other process waited for it"
    assert (tmp_path / "first").read_text() == (tmp_path / "second").read_text() == load_dataset("fashion-mnist").checksum
    assert not (cache / ".fetch.partial").exists()


@pytest.mark.slow
def test_the_first_commands_data_path_fetches_fashion_mnist_for_real(tmp_path):
    """``kilotune subset build --dataset fashion-mnist`` as on a fresh machine (the environment
    ``_isolated_home`` made: an empty cache, no data directory, no Debian package installed, an
    empty Keras cache). It fetches for real: Keras' URLs, else Debian's archive."""
    out = run_bounded([sys.executable, "-m", "kilotune", "subset", "build", "--dataset", "fashion-mnist", "--out", str(tmp_path / "x.json")],
                      cwd=tmp_path)  # fmt: skip
    if out.returncode and "could not be fetched" in out.stderr:
        _unavailable(f"no way to fetch Fashion-MNIST here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    cache = tmp_path / "cache" / "fashion-mnist"
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"Fashion-MNIST not found in {cache}, {tmp_path / 'system' / 'fashion-mnist'}, ")
    assert re.fullmatch(rf"Fashion-MNIST fetched from .+ into {cache} \(30\.\d MB in \d+ s(; tried first: .+)?\)", lines[1]), lines
    ds = load_dataset("fashion-mnist", cache)
    assert ds.x_train.shape == (60000, 32, 32, 1) and ds.x_test.shape == (10000, 32, 32, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted([*FASHION_FILES, ".fetch.lock"])
    subset = json.loads((tmp_path / "x.json").read_text())
    assert subset["dataset"] == "fashion-mnist" and subset["dataset_checksum"] == ds.checksum and len(subset["indices"]) == 1000
