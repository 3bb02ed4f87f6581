"""acdc's `load_clt` against cross-layer transcoders written (and outputs computed) by circuit-tracer's own code.

    .venv/bin/python experiments/peers/check_clt_reader.py OUT_DIR

OUT_DIR was written by experiments/peers/circuit_tracer_clt.py (in circuit-tracer's venv; run through
check_transcoder_readers.sh). Writes experiments/results/circuit_tracer_clt_reader.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import acdc

out = Path(sys.argv[1])
torch.set_grad_enabled(False)
version = (out / "version.txt").read_text().strip() if (out / "version.txt").exists() else "circuit-tracer"
rows = []
for kind in ("relu", "jumprelu"):
    clt, want = acdc.load_clt(out / kind), load_file(str(out / kind / "expected.safetensors"))
    x = want["x"]
    a = max(float((clt.encode(layer, x[layer]) - want[f"acts.{layer}"]).abs().max()) for layer in range(clt.cfg.n_layers))
    o = float((clt(x) - want["out"]).abs().max())
    assert a < 1e-5 and o < 1e-5, (kind, a, o)
    rows.append(f"| {kind} | {clt.cfg.n_layers} | {clt.cfg.n_features} | {clt.cfg.reads} | {a:.1e} | {o:.1e} |")
lines = [f"# acdc's cross-layer transcoder reader against {version} (`bash experiments/peers/check_transcoder_readers.sh circuit-tracer`)", "",
         f"CLTs saved by {version}'s own `CrossLayerTranscoder.to_safetensors` (experiments/peers/circuit_tracer_clt.py, in its own venv),",
         "activations (`encode_layer`) and every layer's reconstruction (`forward`) computed by its `load_clt`; acdc reads each folder",
         "with `acdc.load_clt`.", "",
         "| activation | layers | features per layer | reads | max abs diff, activations | max abs diff, reconstructions |",
         "|---|---|---|---|---|---|", *rows]
(Path("experiments/results") / "circuit_tracer_clt_reader.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
