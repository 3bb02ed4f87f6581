#!/usr/bin/env bash
# acdc alone, two commits side by side: each measurement of experiments/bench.py (EAP, ACDC edge tests into
# layers 11/6/0, the 10-size faithfulness sweep, 5 Edge Pruning steps) in its own process, from a clean clone of
# each commit, alternating which goes first, REPS times, on the same inputs; prints one line per run.
#   bash experiments/bench_versions.sh BEFORE AFTER [REPS]     (from the repository root, after make setup)
# The AutoCircuit side of bench.py is left out: its code does not change between acdc's commits.
set -euo pipefail
before=$1; after=$2; reps=${3:-2}
py=$(pwd)/.venv/bin/python
root=$(mktemp -d)
for side in before after; do
  git clone -q . "$root/$side"
  (cd "$root/$side" && git checkout -q "${!side}")
done
data="$root/data"
(cd "$root/after" && PYTHONPATH="$root/after" "$py" -c "
import sys; sys.path.insert(0, 'experiments')
from pathlib import Path
import bench
bench.write_inputs(Path('$data'), 50, 15)")
for rep in $(seq 0 $((reps - 1))); do
  for what in eap acdc sweep edge-pruning; do
    if [ $((rep % 2)) = 0 ]; then order="before after"; else order="after before"; fi
    for side in $order; do
      (cd "$root/$side" && PYTHONPATH="$root/$side" "$py" experiments/bench.py --side --data "$data" --what $what \
        --model gpt2small --threads 2 --ep-steps 5 --layers 11 6 0 --edges 10 \
        --sizes 50 100 200 500 1000 2000 5000 10000 20000 32491 2>/dev/null) | grep '^RESULT ' | "$py" -c "
import json, sys
r = json.loads(sys.stdin.read()[len('RESULT '):]); r.pop('scores', None)
keep = {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}
keep.update({k: round(v['edges_per_s'], 2) for k, v in r.items() if isinstance(v, dict) and 'edges_per_s' in v})
print(sys.argv[1], sys.argv[2], sys.argv[3], keep)" "$rep" "$what" "$side"
    done
  done
done
