#!/usr/bin/env bash
# acdc's sparsify reader against sparsify 1.3.3's own files and outputs (writes experiments/results/sparsify_reader.md).
#   bash experiments/peers/check_sparsify_reader.sh [SPARSIFY_VENV]     (run from the repository root, after make setup)
set -euo pipefail
VENV=${1:-/tmp/sparsify-venv}
[ -x "$VENV/bin/python" ] || bash experiments/peers/setup_sparsify.sh "$VENV"
OUT=$(mktemp -d)
"$VENV/bin/python" experiments/peers/sparsify_transcoders.py "$OUT"
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file
import acdc
out = Path(sys.argv[1])
ts, want = acdc.load_transcoders(out), load_file(str(out / "expected.safetensors"))
lines = ["# acdc's sparsify reader against sparsify 1.3.3 (`bash experiments/peers/check_sparsify_reader.sh`)", "",
         "Folders written by `SparseCoder.save_to_disk` (TopK k=6, 40 latents, d_in 16; layer 0 with a skip connection),",
         "outputs by `SparseCoder.forward(x, x)` in sparsify's own venv; acdc reads the folder with `acdc.load_transcoders`.", "",
         "| layer | skip | max abs diff, activations | max abs diff, outputs |", "|---|---|---|---|"]
for layer in ts.layers:
    a = float((ts[layer].encode(want["x"]) - want[f"acts.{layer}"]).abs().max())
    o = float((ts[layer](want["x"]) - want[f"out.{layer}"]).abs().max())
    assert a < 1e-5 and o < 1e-5, (layer, a, o)
    lines.append(f"| {layer} | {ts[layer].cfg.skip} | {a:.1e} | {o:.1e} |")
Path("experiments/results/sparsify_reader.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
