"""How long a finished study's workers sat idle: each worker's training time against the study's span.

    python bench/worker_idle.py --storage sqlite:///run.db [--study kilotune]
    bash bench/worker_idle.sh [runs] [out]   # README's main job with pinned workers, then this

A trial trained for its ``time_split``'s wall seconds less its storage part (mostly the wait for the
trial to be handed out), up to its completion time. The span runs from the first trial's start to
the last trial's end, search and fold trials together; a worker is idle for the span less its
trials' time (claims, waits, and the gaps where nothing was left for it to take). Measured in
docs/benchmarks.md section 15.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass

import optuna

from kilotune.search.attrs import CV_OF, TIME_SPLIT, WORKER
from kilotune.search.storage import open_storage
from kilotune.search.winner import StudyTrials


@dataclass
class Idle:
    """A finished study's span (seconds), each worker's training seconds, and the fold trials that
    started before the last search trial ended (of how many)."""

    span: float
    trained: dict[str, float]
    early_folds: int
    folds: int


def trained_seconds(split: dict[str, float]) -> float:
    """A trial's wall seconds less its ``storage`` part: mostly the wait for the trial to be handed
    out (workers/worker.py ``time_split``), which is idle time, not training."""
    return split["wall"] - split.get("storage", 0.0)


def idle(trials: StudyTrials) -> Idle:
    """Reads each finished trial's time: it ended at its completion, its ``time_split`` before."""
    timed = [t for t in trials.search + trials.folds if t.state.is_finished() and TIME_SPLIT in t.user_attrs and t.datetime_complete]
    if not timed:
        raise ValueError(f"no finished trial records a {TIME_SPLIT!r}")
    ends = [t.datetime_complete.timestamp() for t in timed]
    starts = [end - trained_seconds(t.user_attrs[TIME_SPLIT]) for t, end in zip(timed, ends)]
    trained: dict[str, float] = defaultdict(float)
    for t, start, end in zip(timed, starts, ends):
        trained[t.user_attrs.get(WORKER, "?")] += end - start
    last_search = max(end for t, end in zip(timed, ends) if CV_OF not in t.user_attrs)
    early = sum(start < last_search for t, start in zip(timed, starts) if CV_OF in t.user_attrs)
    return Idle(max(ends) - min(starts), dict(sorted(trained.items())), early, len(trials.folds))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the study's storage URL")
    parser.add_argument("--study", default="kilotune", help="the study's name (default: %(default)s)")
    args = parser.parse_args(argv)
    storage = open_storage(args.storage)
    try:
        found = idle(StudyTrials.read(optuna.load_study(study_name=args.study, storage=storage), storage))
    except (KeyError, ValueError) as e:  # no such study, or nothing finished
        raise SystemExit(f"worker_idle: study {args.study!r}: {e}")
    print(f"span {found.span:.0f} s (first trial's start to last trial's end); "
          f"fold trials started before the last search trial ended: {found.early_folds} of {found.folds}")
    for worker, seconds in found.trained.items():
        print(f"  worker {worker}: trained {seconds:.0f} s, idle {found.span - seconds:.0f} s")
    print(f"idle in all: {sum(found.span - s for s in found.trained.values()):.0f} worker-seconds")


if __name__ == "__main__":
    main()
