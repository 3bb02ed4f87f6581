#!/usr/bin/env bash
# acdc's attribution graph against circuit-tracer's on SmolLM2-135M-Instruct at a long prompt: the first N tokens of
# the held-out speeches (as experiments/attribution_graph_lengths.py takes them), the per-layer set of
# experiments/smollm2_clt.py (TopK, 1,152 features, k = 16) turned into JumpReLU transcoders firing 16 features per
# token (circuit-tracer reads no TopK), both tools capped at the same max_feature_nodes with the same batch size, each
# alone on the machine: the same features kept, the same edges, and the time and memory of each.
# Writes experiments/results/circuit_tracer_graph_smollm2_N.md.
#   bash experiments/peers/check_attribution_graph_lengths.sh N [MAX_FEATURE_NODES] [BATCH]   (repository root, after make setup)
set -euo pipefail
n=${1:?give the prompt length in tokens}
cap=${2:-}
batch=${3:-64}
source experiments/peers/ct_venv.sh  # sets $venv
out=${OUT:-$(mktemp -d)}
sets=${TRANSCODERS:-$HOME/.cache/acdc/transcoders/smollm2-1152-k16-100000-per-layer}
.venv/bin/python experiments/peers/smollm2_jumprelu.py "$out" --transcoders "$sets" --prompt-tokens "$n"
capped=()
if [ -n "$cap" ]; then capped=(--max-feature-nodes "$cap"); fi
"$venv/bin/python" experiments/peers/circuit_tracer_smollm2.py "$out" --batch-size "$batch" "${capped[@]}" 2>/dev/null
"$venv/bin/pip" show circuit-tracer | awk '/^Version:/ {print "circuit-tracer", $2}' > "$out/version.txt"
HF_HUB_OFFLINE=1 .venv/bin/python experiments/peers/check_attribution_graph.py "$out" --smollm2 --batch-size "$batch" "${capped[@]}" \
  --results "circuit_tracer_graph_smollm2_$n.md" --command "bash experiments/peers/check_attribution_graph_lengths.sh $*"
