#!/usr/bin/env bash
# acdc's attribution graph against circuit-tracer's own (same model, transcoders, prompt), and acdc's graph
# file read by circuit-tracer's graph-file model. Writes experiments/results/circuit_tracer_graph.md
# (with --gemma2: a tiny random Gemma 2, experiments/results/circuit_tracer_graph_gemma2.md; with --clt: a cross-layer
# transcoder, experiments/results/circuit_tracer_graph_clt.md).
#   bash experiments/peers/check_attribution_graph.sh [--gemma2 | --clt]   (run from the repository root, after make setup)
set -euo pipefail
source experiments/peers/ct_venv.sh  # sets $venv
out=$(mktemp -d)
flag=${1:-}
results=experiments/results/circuit_tracer_graph${flag:+_${flag#--}}.md
"$venv/bin/python" experiments/peers/circuit_tracer_graph.py "$out" $flag 2>/dev/null
"$venv/bin/pip" show circuit-tracer | awk '/^Version:/ {print "circuit-tracer", $2}' > "$out/version.txt"
HF_HUB_OFFLINE=1 .venv/bin/python experiments/peers/check_attribution_graph.py "$out" $flag
read_back=$("$venv/bin/python" experiments/peers/circuit_tracer_graph.py "$out" "$out/acdc_graph.json" $flag 2>/dev/null)
echo "$read_back"
echo "- acdc's graph file (\`AttributionGraph.to_json\`, pruned at 0.8 / 0.98): ${read_back}" >> "$results"
