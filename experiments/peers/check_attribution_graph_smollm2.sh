#!/usr/bin/env bash
# acdc's attribution graph against circuit-tracer's on SmolLM2-135M-Instruct (same JumpReLU transcoders, same IOI
# prompt), each tool alone on the machine: the same edges, and the time and memory of each.
# Writes experiments/results/circuit_tracer_graph_smollm2.md. Needs the transcoders of experiments/smollm2_transcoders.py.
#   bash experiments/peers/check_attribution_graph_smollm2.sh      (run from the repository root, after make setup)
set -euo pipefail
source experiments/peers/ct_venv.sh  # sets $venv
out=${OUT:-$(mktemp -d)}
.venv/bin/python experiments/peers/smollm2_jumprelu.py "$out"
"$venv/bin/python" experiments/peers/circuit_tracer_smollm2.py "$out" 2>/dev/null
"$venv/bin/pip" show circuit-tracer | awk '/^Version:/ {print "circuit-tracer", $2}' > "$out/version.txt"
HF_HUB_OFFLINE=1 .venv/bin/python experiments/peers/check_attribution_graph.py "$out" --smollm2
