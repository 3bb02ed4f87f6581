#!/usr/bin/env bash
# acdc's transcoder readers against files and outputs made by sparsify, SAELens and circuit-tracer's own code,
# each in its own venv (made here if missing). Writes experiments/results/{sparsify,saelens,circuit_tracer}_reader.md
# (circuit-tracer also circuit_tracer_gemma_scope_reader.md and circuit_tracer_clt_reader.md).
#   bash experiments/peers/check_transcoder_readers.sh [PROJECT...]     (run from the repository root, after make setup)
set -euo pipefail
projects=${*:-sparsify saelens circuit-tracer}
for p in $projects; do
  case $p in
    sparsify) venv=/tmp/sparsify-venv; pkg=eai-sparsify==1.3.3; name=sparsify; script=sparsify_transcoders.py ;;
    saelens) venv=/tmp/saelens-venv; pkg=sae-lens==6.54.12; name=SAELens; script=saelens_transcoders.py ;;
    circuit-tracer) venv=/tmp/ct-venv; pkg=circuit-tracer==0.5.0; name=circuit-tracer; script=circuit_tracer_transcoders.py ;;
    *) echo "unknown project $p (sparsify, saelens, circuit-tracer)"; exit 2 ;;
  esac
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu || "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q "$pkg" numpy
  fi
  out=$(mktemp -d)
  "$venv/bin/python" "experiments/peers/$script" "$out"
  "$venv/bin/pip" show "${pkg%%==*}" | awk -v n="$name" '/^Version:/ {print n, $2}' > "$out/version.txt"
  .venv/bin/python experiments/peers/check_transcoder_reader.py "$name" "$out"
  if [ "$p" = circuit-tracer ]; then  # its Gemma presets' files: Gemma Scope .npz and Gemma Scope 2 safetensors
    cp "$out/version.txt" "$out/gemma-scope/version.txt"
    .venv/bin/python experiments/peers/check_transcoder_reader.py "$name" "$out/gemma-scope" circuit_tracer_gemma_scope
    clt=$(mktemp -d)  # and its cross-layer transcoders
    "$venv/bin/python" experiments/peers/circuit_tracer_clt.py "$clt"
    .venv/bin/python experiments/peers/check_clt_reader.py "$clt" --write  # and acdc's CLT files, read by circuit-tracer
    "$venv/bin/python" experiments/peers/circuit_tracer_clt.py "$clt" --read
    cp "$out/version.txt" "$clt/version.txt"
    .venv/bin/python experiments/peers/check_clt_reader.py "$clt"
  fi
done
