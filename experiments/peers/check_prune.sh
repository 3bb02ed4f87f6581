#!/usr/bin/env bash
# acdc's attribution-graph pruning against circuit-tracer's prune_graph on random graphs (its own venv).
#   bash experiments/peers/check_prune.sh      (run from the repository root, after make setup)
set -euo pipefail
source experiments/peers/ct_venv.sh  # sets $venv
out=$(mktemp -d)
"$venv/bin/python" experiments/peers/circuit_tracer_prune.py "$out" 5 2>/dev/null
"$venv/bin/pip" show circuit-tracer | awk '/^Version:/ {print "circuit-tracer", $2}' > "$out/version.txt"
.venv/bin/python experiments/peers/check_prune.py "$out"
