#!/usr/bin/env bash
# README's main job, each worker pinned to a core of its own (as each GPU worker owns its device),
# then how long its workers sat idle (bench/worker_idle.py). One run after another; each in its own
# folder under OUT. PIN=0 leaves the workers on every core, as README's command runs.
# Run from the repository root: bash bench/worker_idle.sh [runs] [out]   (docs/benchmarks.md section 15)
set -euo pipefail
runs=${1:-1}
out=$(realpath -m "${2:-runs/worker_idle}")
for run in $(seq "$runs"); do
  dir="$out/run-$run"
  rm -rf "$dir" && mkdir -p "$dir"
  started=$(date +%s)
  (cd "$dir" && exec kilotune run --dataset fashion-mnist --space small --workers 2 --n-trials 12 --epochs 10 --seed 0 \
    --storage "sqlite:///$dir/run.db" > run.log 2>&1) &
  job=$!
  while [ "${PIN:-1}" != 0 ] && kill -0 "$job" 2>/dev/null; do
    for w in 0 1; do  # workers start as the run does: pin each (all its threads) once it is there
      for pid in $(pgrep -f "kilotune.workers .*local-$w" || true); do taskset -a -c -p "$w" "$pid" > /dev/null 2>&1 || true; done
    done
    sleep 1
  done
  wait "$job"
  echo "run $run: kilotune run took $(( $(date +%s) - started )) s"
  python "$(dirname "$0")/worker_idle.py" --storage "sqlite:///$dir/run.db"
done
