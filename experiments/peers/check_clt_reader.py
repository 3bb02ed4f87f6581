"""acdc's `load_clt` against cross-layer transcoders written (and outputs computed) by circuit-tracer's own code.

    .venv/bin/python experiments/peers/check_clt_reader.py OUT_DIR --write   # acdc's CLTs, for circuit-tracer to read
    .venv/bin/python experiments/peers/check_clt_reader.py OUT_DIR           # compare both directions

OUT_DIR/relu and OUT_DIR/jumprelu were written by experiments/peers/circuit_tracer_clt.py (in circuit-tracer's venv);
with ``--write`` acdc writes its own random CLTs in circuit-tracer's layout to OUT_DIR/acdc-relu and OUT_DIR/acdc-jumprelu
(`CrossLayerTranscoder.to_circuit_tracer`, with inputs x), which circuit-tracer's `load_clt` reads and runs
(``circuit_tracer_clt.py OUT_DIR --read``). Run through check_transcoder_readers.sh. Writes
experiments/results/circuit_tracer_clt_reader.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import acdc

out = Path(sys.argv[1])
torch.set_grad_enabled(False)
if "--write" in sys.argv:
    from safetensors.torch import save_file

    from acdc.transcoders import CLTConfig, CrossLayerTranscoder

    gen = torch.Generator().manual_seed(1)
    for kind in ("relu", "jumprelu"):
        clt = CrossLayerTranscoder(CLTConfig(3, 16, 24, kind, reads="stream"))
        for name, p in clt.named_parameters():
            p.copy_((torch.rand(p.shape, generator=gen) * 0.5 + 0.1).log() if name == "log_threshold" else torch.randn(p.shape, generator=gen) * 0.5)
        clt.to_circuit_tracer(out / f"acdc-{kind}")
        save_file({"x": torch.randn(3, 10, 16, generator=gen)}, str(out / f"acdc-{kind}" / "x.safetensors"))
    raise SystemExit(0)
version = (out / "version.txt").read_text().strip() if (out / "version.txt").exists() else "circuit-tracer"
rows = []
for kind in ("relu", "jumprelu"):
    clt, want = acdc.load_clt(out / kind), load_file(str(out / kind / "expected.safetensors"))
    x = want["x"]
    a = max(float((clt.encode(layer, x[layer]) - want[f"acts.{layer}"]).abs().max()) for layer in range(clt.cfg.n_layers))
    o = float((clt(x) - want["out"]).abs().max())
    assert a < 1e-5 and o < 1e-5, (kind, a, o)
    rows.append(f"| {kind} | {clt.cfg.n_layers} | {clt.cfg.n_features} | {clt.cfg.reads} | {a:.1e} | {o:.1e} |")
back = []
for kind in ("relu", "jumprelu"):  # acdc's files, read and run by circuit-tracer
    folder = out / f"acdc-{kind}"
    clt, theirs = acdc.load_clt(folder), load_file(str(folder / "ct_forward.safetensors"))
    o = float((clt(theirs["x"]) - theirs["out"]).abs().max())
    assert o < 1e-5, (kind, o)
    back.append(f"| {kind} | {o:.1e} |")
lines = [f"# acdc's cross-layer transcoder reader against {version} (`bash experiments/peers/check_transcoder_readers.sh circuit-tracer`)", "",
         f"CLTs saved by {version}'s own `CrossLayerTranscoder.to_safetensors` (experiments/peers/circuit_tracer_clt.py, in its own venv),",
         "activations (`encode_layer`) and every layer's reconstruction (`forward`) computed by its `load_clt`; acdc reads each folder",
         "with `acdc.load_clt`.", "",
         "| activation | layers | features per layer | reads | max abs diff, activations | max abs diff, reconstructions |",
         "|---|---|---|---|---|---|", *rows, "",
         f"And back: CLTs written by acdc (`CrossLayerTranscoder.to_circuit_tracer`, check_clt_reader.py --write), read and run by "
         f"{version}'s `load_clt` (circuit_tracer_clt.py --read):", "",
         "| activation | max abs diff, reconstructions (circuit-tracer's forward against acdc's) |", "|---|---|", *back]
(Path("experiments/results") / "circuit_tracer_clt_reader.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
