#!/usr/bin/env bash
# How long a worker lives after its last trial ends: a 3-trial study of a tiny vgg8 on 100
# Fashion-MNIST images, one `kilotune worker` on SQLite, from the last trial's completion time to
# the process's exit (seconds). Run from the repository root: bash bench/worker_tail.sh [runs]
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
for run in $(seq "${1:-3}"); do
  url="sqlite:///$dir/study-$run.db"
  python -m kilotune study create --study tail --storage "$url" --dataset fashion-mnist --subset "$dir/subset.json" --epochs 2 \
    --n-trials 3 --space "$dir/space.json" --pruner none --no-warm-start --cv-top-k 0 > /dev/null
  python -m kilotune worker --study tail --storage "$url" > "$dir/worker-$run.log" 2>&1
  exited=$(date +%s.%N)
  python -c "import optuna, sys; s = optuna.load_study(study_name='tail', storage=sys.argv[1]); print(f'run $run: the worker exited {float(sys.argv[2]) - max(t.datetime_complete for t in s.trials).timestamp():.1f} s after its last trial ended')" "$url" "$exited"
done
