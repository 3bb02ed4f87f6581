#!/usr/bin/env bash
# acdc's attribution graph against circuit-tracer's on SmolLM2-135M-Instruct at longer prompts: the first N tokens of
# the held-out speeches (as experiments/attribution_graph_lengths.py), the per-layer TopK set of smollm2_clt.py
# (smollm2-1152-k16-100000-per-layer) turned into JumpReLU for both tools, every active feature, each tool alone on
# 2 threads. Writes experiments/results/circuit_tracer_graph_smollm2_nN.md per length.
#   LENGTHS="16 64" bash experiments/peers/check_attribution_graph_lengths.sh   (from the repository root, after make setup)
set -euo pipefail
source experiments/peers/ct_venv.sh  # sets $venv
out=${OUT:-$(mktemp -d)}
.venv/bin/python experiments/peers/smollm2_jumprelu.py "$out" \
  --transcoders "${TRANSCODERS:-$HOME/.cache/acdc/transcoders/smollm2-1152-k16-100000-per-layer}"
"$venv/bin/pip" show circuit-tracer | awk '/^Version:/ {print "circuit-tracer", $2}' > "$out/version.txt"
for n in ${LENGTHS:-16 64}; do
  .venv/bin/python experiments/peers/sotu_prompt.py "$out" "$n"
  rm -f "$out/ct_graph.safetensors" "$out/ct_time.txt"
  if ! "$venv/bin/python" experiments/peers/circuit_tracer_smollm2.py "$out" 2>"$out/ct_err_$n.txt"; then
    echo "circuit-tracer did not finish at $n tokens: $(tail -1 "$out/ct_err_$n.txt")"
    continue
  fi
  HF_HUB_OFFLINE=1 .venv/bin/python experiments/peers/check_attribution_graph.py "$out" --smollm2 \
    --results "circuit_tracer_graph_smollm2_n$n.md" --command "LENGTHS=$n bash experiments/peers/check_attribution_graph_lengths.sh"
done
