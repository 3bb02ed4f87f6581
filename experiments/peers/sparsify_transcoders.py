"""Transcoder files written by EleutherAI sparsify's own code, for acdc's reader to be checked against.

Runs inside a venv with sparsify (made by ``bash experiments/peers/check_transcoder_readers.sh sparsify``):

    /tmp/sparsify-venv/bin/python experiments/peers/sparsify_transcoders.py OUT_DIR

Writes ``layers.0.mlp`` (TopK, skip connection) and ``layers.1.mlp`` (TopK, no skip) with
`SparseCoder.save_to_disk`, random weights from a fixed seed, and ``expected.safetensors``: inputs
x and sparsify's own outputs (``SparseCoder.forward(x, x).sae_out``, which adds the skip path) and
top-k activations, which experiments/peers/check_transcoder_reader.py compares with acdc's reading of the folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

out = Path(sys.argv[1])
torch.manual_seed(0)
d_in, expected = 16, {}
x = torch.randn(10, d_in)
expected["x"] = x
for layer, skip in ((0, True), (1, False)):
    cfg = SparseCoderConfig(num_latents=40, k=6, transcode=True, skip_connection=skip)
    sc = SparseCoder(d_in, cfg)
    with torch.no_grad():
        for p in sc.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
        sc.set_decoder_norm_to_unit_norm()
    sc.save_to_disk(out / f"layers.{layer}.mlp")
    with torch.no_grad():
        fwd = sc(x, x)
        dense = torch.zeros(10, 40).scatter(-1, fwd.latent_indices, fwd.latent_acts)
    expected[f"out.{layer}"] = fwd.sae_out.contiguous()
    expected[f"acts.{layer}"] = dense
save_file(expected, str(out / "expected.safetensors"))
print(f"wrote {out}")
