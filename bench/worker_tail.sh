#!/usr/bin/env bash
# How long workers live after the study's last trial ends: a study of a tiny vgg8 on 100
# Fashion-MNIST images (3 trials a worker), `kilotune worker`s on SQLite, from the last trial's
# completion time to each worker process's exit (seconds). With two workers, one of them waits on
# the other's last trial. Run from the repository root: bash bench/worker_tail.sh [runs] [workers]
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python - "$dir" <<'P'
import json, sys
from kilotune.subset.datasets import load_dataset
from kilotune.subset.features import build_subset
build_subset(load_dataset("fashion-mnist"), "random", f"{sys.argv[1]}/subset.json", per_class=10, seed=0)
json.dump({"arch": ["vgg8"], "width": 0.125, "batch_size": 32, "mixing": "none", "optimizer": "sgd", "cutout": 0}, open(f"{sys.argv[1]}/space.json", "w"))
P
workers=${2:-1}
for run in $(seq "${1:-3}"); do
  url="sqlite:///$dir/study-$run.db"
  python -m kilotune study create --study tail --storage "$url" --dataset fashion-mnist --subset "$dir/subset.json" --epochs 2 \
    --n-trials $((3 * workers)) --space "$dir/space.json" --pruner none --no-warm-start --cv-top-k 0 > /dev/null
  for w in $(seq "$workers"); do
    (python -m kilotune worker --study tail --storage "$url" > "$dir/worker-$run-$w.log" 2>&1; date +%s.%N > "$dir/exit-$run-$w") &
  done
  wait
  python -c "
import optuna, sys
last = max(t.datetime_complete for t in optuna.load_study(study_name='tail', storage=sys.argv[1]).trials).timestamp()
tails = ', '.join(f'{float(open(f).read()) - last:.1f} s' for f in sys.argv[2:])
print(f'run $run: the workers exited {tails} after the last trial ended')" "$url" "$dir"/exit-"$run"-*
done
