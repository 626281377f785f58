"""Does a seeded 1-worker ``kilotune run`` make the same trials as before a change? (issue 26)

    python bench/same_trials.py --out bench/results/same_trials_before.json   # on the old code
    python bench/same_trials.py --out bench/results/same_trials_after.json    # on the new code
    python bench/same_trials.py --compare bench/results/same_trials_before.json bench/results/same_trials_after.json

The run: ``kilotune run --dataset fashion-mnist --space <vgg8 at width 0.125, batch 32> --epochs 2
--n-trials 8 --workers 1 --seed 0`` in a temporary directory with its own cache and checkpoint
directories (the data directory stays the user's, so nothing is fetched again). Every trial of the
study and of its fold trials' companion study is written as (study, number, state, params, value,
intermediate values). ``--compare`` checks params exactly and values within 1e-6, and says how far
apart the rest are; exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6
SPACE = "arch: vgg8\nwidth: 0.125\nbatch_size: 32\n"
RUN = ["--dataset", "fashion-mnist", "--epochs", "2", "--n-trials", "8", "--workers", "1", "--seed", "0"]


def record(out: Path) -> None:
    import optuna

    from kilotune.subset.files import cache_dir

    with tempfile.TemporaryDirectory(prefix="same-trials-") as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(SPACE)
        env = {**os.environ, "KILOTUNE_DATA_DIR": os.environ.get("KILOTUNE_DATA_DIR") or str(cache_dir()),
               "KILOTUNE_CACHE_DIR": str(tmp / "cache"), "KILOTUNE_CHECKPOINT_DIR": str(tmp / "checkpoints")}
        env.pop("KILOTUNE_STORAGE", None)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "kilotune", "run", "--space", str(tmp / "space.yaml"), *RUN],
                       cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp / 'kilotune.db'}")
        trials = [
            {"study": s.study_name, "number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
             "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
            for s in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.study_name)
            for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
        ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "kilotune run --space <vgg8, width 0.125, batch 32> " + " ".join(RUN), "commit": commit,
                               "seconds": round(time.monotonic() - started), "trials": trials}, indent=1) + "\n")
    print(f"wrote {out}: {len(trials)} trials in {time.monotonic() - started:.0f} s")


def compare(a: Path, b: Path) -> int:
    """Prints each difference between two recordings; 0 if none (values within TOLERANCE)."""
    old, new = ({(t["study"], t["number"]): t for t in json.loads(p.read_text())["trials"]} for p in (a, b))
    lines, worst = [], 0.0
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new:
            lines.append(f"{key}: only in {a if key in old else b}")
            continue
        x, y = old[key], new[key]
        for field in ("state", "params"):
            if x[field] != y[field]:
                lines.append(f"{key}: {field} {x[field]} != {y[field]}")
        pairs = [(x["value"], y["value"], "value")] + [
            (x["intermediate_values"].get(s), y["intermediate_values"].get(s), f"epoch {s}")
            for s in sorted(x["intermediate_values"].keys() | y["intermediate_values"].keys(), key=int)]
        for u, v, what in pairs:
            if (u is None) != (v is None):
                lines.append(f"{key}: {what} {u} != {v}")
            elif u is not None:
                worst = max(worst, abs(u - v))
                if abs(u - v) > TOLERANCE:
                    lines.append(f"{key}: {what} {u:.6f} != {v:.6f} (apart by {abs(u - v):.2e})")
    print("\n".join(lines) or f"same: {len(old)} trials, params equal, values within {TOLERANCE:g} (largest difference {worst:.1e})")
    return 1 if lines else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write the run's trials to")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two recordings")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out FILE, or --compare A B")
    record(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
