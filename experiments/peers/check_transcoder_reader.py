"""acdc's transcoder readers against files written (and outputs computed) by each project's own code.

    .venv/bin/python experiments/peers/check_transcoder_reader.py PROJECT FOLDER [NAME]

PROJECT is sparsify, SAELens or circuit-tracer; FOLDER was written by that project's script in
experiments/peers/ (``expected.safetensors`` beside the transcoders: inputs x, the project's own
activations and outputs). Reads FOLDER with `acdc.load_transcoders`, compares, and writes
experiments/results/{NAME}_reader.md (NAME: the project's, e.g. circuit_tracer). Run through check_transcoder_readers.sh.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import acdc

project, folder = sys.argv[1], Path(sys.argv[2])
name = sys.argv[3] if len(sys.argv) > 3 else project.lower().replace("-", "_")
torch.set_grad_enabled(False)
ts, want = acdc.load_transcoders(folder), load_file(str(folder / "expected.safetensors"))
assert ts.source.lower().startswith(project.lower()), (ts.source, project)
version = (folder / "version.txt").read_text().strip() if (folder / "version.txt").exists() else project
rows = []
extra = ("; circuit-tracer's Gemma presets' files: layer 0 a Gemma Scope params.npz read by its load_gemma_scope_transcoder, layer 1 "
         "a Gemma Scope 2 safetensors by its load_gemma_scope_2_transcoder") if name.endswith("gemma_scope") else ""
for layer in ts.layers:
    tc = ts[layer]
    a = float((tc.encode(want["x"]) - want[f"acts.{layer}"]).abs().max())
    o = float((tc(want["x"]) - want[f"out.{layer}"]).abs().max())
    assert a < 1e-5 and o < 1e-5, (layer, a, o)
    rows.append(f"| {layer} | {tc.cfg.activation} | {tc.cfg.skip} | {a:.1e} | {o:.1e} |")
assert len(rows) == len(want) // 2, "every layer the project computed is read"
lines = [f"# acdc's {project} reader against {version} (`bash experiments/peers/check_transcoder_readers.sh`)", "",
         f"Files written by {version}'s own code (experiments/peers/{project.lower().replace('-', '_')}_transcoders.py, in its own venv{extra}),",
         f"activations and outputs computed by it; acdc reads the folder with `acdc.load_transcoders` ({ts.source.split(':')[0]}).", "",
         "| layer | activation | skip | max abs diff, activations | max abs diff, outputs |", "|---|---|---|---|---|", *rows]
out = Path("experiments/results") / f"{name}_reader.md"
out.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
