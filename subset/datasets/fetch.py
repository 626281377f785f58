"""Where a dataset's files are looked for, and fetching them when they are nowhere: the data
directory, Debian's datasets, Keras' cache; downloads and Debian's archive.

TensorFlow is deliberately not imported: workers that only select subsets or compute
statistics should not pay its start-up cost, so the fetches use Keras' URLs, not its loaders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kilotune.subset.datasets.base import DatasetError
from kilotune.subset.files import cache_dir, file_lock

DEBIAN_DATASETS = "usr/share/datasets"  # where Debian's dataset-* packages put their files


def data_directory(data_dir: str | Path | None) -> Path:
    """Where a dataset is looked for first and fetched into: ``data_dir``, else
    ``$KILOTUNE_DATA_DIR``, else the cache (``$KILOTUNE_CACHE_DIR``, else ``~/.cache/kilotune``)."""
    return Path(data_dir if data_dir is not None else os.environ.get("KILOTUNE_DATA_DIR") or cache_dir()).expanduser()


def system_datasets_dir() -> Path:
    """Debian's ``/usr/share/datasets``, or ``$KILOTUNE_SYSTEM_DATASETS_DIR`` (an empty one hides it)."""
    return Path(os.environ.get("KILOTUNE_SYSTEM_DATASETS_DIR") or Path("/") / DEBIAN_DATASETS)


def keras_datasets_dir() -> Path:
    """Where Keras' loaders keep what they download (``keras.utils.get_file``'s rule)."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp/.keras")) / "datasets"


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")


def fetch_url(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=20) as response, open(path, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def run(argv: list[str], cwd: Path) -> None:
    """Runs a command; raises with its last line of output when it fails."""
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise RuntimeError(f"{argv[0]} not found (not a Debian system?)") from e
    if out.returncode:
        last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"`{' '.join(argv)}` exited with {out.returncode}: {last}")


def find_or_fetch(
    what: str,
    find: Callable[[], Path | None],
    looked: list[Path],
    into: Path,
    files: tuple[str, ...],
    sources: list[tuple[str, Callable[[Path], None]]],
    check: Callable[[Path], object],
    *,
    todo: str,
    download: bool,
) -> Path:
    """What ``find`` finds in ``looked``, else ``files`` fetched into directory ``into`` from the
    first of ``sources`` that works (a description, and a function that writes the files into a
    directory); ``todo`` says what a user can do instead.

    Several processes may ask at once (``kilotune run``'s workers): a file lock lets one fetch
    while the others wait and then find its files. A fetch stages the files in a directory of
    its own, checks that they load (``check``), and only then moves each into place, so
    ``find`` (which wants every file) never trusts half a dataset; what a killed fetch staged
    is wiped by the next one.
    """
    if (found := find()) is not None:
        return found
    where = ", ".join(map(str, looked))
    if not download:
        raise DatasetError(f"{what} not found in {where}; {todo}")
    failed: list[str] = []
    staging = into / ".fetch.partial"
    try:
        with file_lock(into / ".fetch.lock"):
            if (found := find()) is not None:  # another process fetched it while this one waited
                return found
            names = ", else ".join(name for name, _ in sources)
            print(f"{what} not found in {where}; fetching it into {into} from {names}", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                for name, fetch in sources:
                    shutil.rmtree(staging, ignore_errors=True)
                    staging.mkdir()
                    try:
                        fetch(staging)
                        check(staging)
                    except Exception as e:  # urllib, apt-get, a truncated file...: each way's reason is reported
                        failed.append(f"{name}: {one_line(e)}")
                        continue
                    for file in files:
                        os.replace(staging / file, into / file)
                    size = sum((into / file).stat().st_size for file in files) / 1e6
                    tried = f"; tried first: {'; '.join(failed)}" if failed else ""
                    print(f"{what} fetched from {name} into {into} ({size:.1f} MB in {time.monotonic() - started:.0f} s{tried})", file=sys.stderr, flush=True)
                    return find() or into  # (into: its files vanished meanwhile, and loading it says which)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:  # the directory or its lock cannot be written
        failed.append(f"cannot write to {into} ({one_line(e)})")
    raise DatasetError(f"{what} not found in {where} and could not be fetched: {'; '.join(failed)}; {todo}")
