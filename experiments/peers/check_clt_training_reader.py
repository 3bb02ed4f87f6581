"""acdc's `load_clt` against cross-layer transcoder folders written, and run, by EleutherAI's clt-training.

    .venv/bin/python experiments/peers/check_clt_training_reader.py OUT_DIR

OUT_DIR/documented and OUT_DIR/windowed were written by experiments/peers/clt_training_clt.py (in clt-training's venv,
run by check_clt_training_reader.sh), each with the runner's own outputs. Each folder is read with `acdc.load_clt`
and run on the same inputs: the TopK activations and every layer's MLP stand-in must agree. Writes
experiments/results/clt_training_reader.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import acdc

out = Path(sys.argv[1])
torch.set_grad_enabled(False)
version = (out / "version.txt").read_text().strip() if (out / "version.txt").exists() else "clt-training"
rows = []
for case in ("documented", "windowed"):
    clt, want = acdc.load_clt(out / case), load_file(str(out / case / "expected.safetensors"))
    xs = want["xs"]
    L = clt.cfg.n_layers
    a = max(float((clt.encode(layer, xs[layer]) - want[f"acts.{layer}"]).abs().max()) for layer in range(L))
    got = clt(xs)
    o = max(float((got[layer] - want[f"out.{layer}"]).abs().max()) for layer in range(L))
    scale = max(float(want[f"out.{layer}"].abs().max()) for layer in range(L))
    assert a < 1e-5 and o < 1e-5 * max(scale, 1.0), (case, a, o, scale)
    c = clt.cfg
    parts = [f"skip {'yes' if c.skip else 'no'}", f"offsets {'yes' if c.offsets else 'no'}",
             f"cross-layer skips {'yes' if c.cross_skip else 'no'}", f"reads {c.reads}"]
    rows.append(f"| {case} | {L} | {clt.info['n_targets']} | {', '.join(parts)} | {a:.1e} | {o:.1e} (of {scale:.1f}) |")
    if case == "documented":  # per-target offsets and cross-layer skips: circuit-tracer's layout refuses it in one line
        try:
            clt.check_linear("circuit-tracer's layout")
        except ValueError as err:
            refusal = str(err)
        else:
            raise AssertionError("a CLT with offsets and cross-layer skips was not refused")
lines = [f"# acdc's reader of clt-training's cross-layer transcoders against {version} "
         "(`bash experiments/peers/check_clt_training_reader.sh`)", "",
         f"Folders saved by {version}'s own `SparseCoder.save_to_disk` (experiments/peers/clt_training_clt.py, in its own venv,",
         "random weights from a fixed seed), every layer's MLP stand-in computed by its own `CrossLayerRunner` (layers in order,",
         "as its trainer calls it; the eager decoder on the CPU); acdc reads each folder with `acdc.load_clt` and runs",
         "`CrossLayerTranscoder.forward` on the same inputs.", "",
         "- documented: the README's usage (skip connections, trained post-encoder offsets and scales, normalized input and",
         "  output, cross-layer sums divided), 3 layers, every coder writing into every later layer;",
         "- windowed: `cross_layer=2` on 4 layers (each coder writes into its own layer and the next), no skip, untrained",
         "  (zero) offsets, `hookpoints_in` the MLP norms (the features read the stream).", "",
         "| case | layers | targets per source layer | read as | max abs diff, activations | max abs diff, MLP stand-ins |",
         "|---|---|---|---|---|---|", *rows, "",
         "The documented file's CLT runs in feature graphs (a feature's offsets as a second channel, each layer's skip node",
         "every skip path into its MLP) and attribution graphs (a feature's edge sums (a + offset) times each decoder; the",
         "cross-layer skips stay live in the frozen model); tests/test_clt.py checks both against hooked forwards.",
         f"circuit-tracer's layout refuses it in one line: \"{refusal}\"", ""]
(Path("experiments/results") / "clt_training_reader.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
