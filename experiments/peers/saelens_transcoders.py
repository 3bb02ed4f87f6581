"""Transcoder folders written by SAELens's own code, for acdc's reader to be checked against.

Runs inside a venv with SAELens (made by ``bash experiments/peers/check_transcoder_readers.sh saelens``):

    /tmp/saelens-venv/bin/python experiments/peers/saelens_transcoders.py OUT_DIR

Writes one folder per layer with `SAE.save_model` (``cfg.json`` + ``sae_weights.safetensors``), one
of each of SAELens's transcoder classes: ``Transcoder`` (ReLU), ``SkipTranscoder``,
``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder``, with random weights from a fixed seed and
decoder rows of random norm; the input hook is the normed MLP input (``blocks.N.ln2.hook_normalized``,
as in Dunefsky et al.'s GPT-2 transcoders). ``expected.safetensors`` holds inputs x and SAELens's own
``encode(x)`` and ``forward(x)``, which experiments/peers/check_transcoder_reader.py compares with
acdc's reading of the folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from sae_lens.saes import transcoder as T
from safetensors.torch import save_file

out = Path(sys.argv[1])
torch.manual_seed(0)
d, n = 16, 40
x = torch.randn(10, d)
expected = {"x": x}
kinds = [(T.Transcoder, T.TranscoderConfig), (T.SkipTranscoder, T.SkipTranscoderConfig),
         (T.JumpReLUTranscoder, T.JumpReLUTranscoderConfig), (T.JumpReLUSkipTranscoder, T.JumpReLUSkipTranscoderConfig)]
for layer, (cls, cfg_cls) in enumerate(kinds):
    cfg = cfg_cls(d_in=d, d_sae=n, d_out=d, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = f"blocks.{layer}.ln2.hook_normalized"
    cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
    cfg.metadata.model_name = "planted"
    tc = cls(cfg)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
            if name == "threshold":
                p.copy_(torch.rand(p.shape) * 0.5)  # positive thresholds, some features cut off
    tc.eval()
    tc.save_model(out / f"layer_{layer}")
    with torch.no_grad():
        expected[f"acts.{layer}"] = tc.encode(x).contiguous()
        expected[f"out.{layer}"] = tc(x).contiguous()
save_file(expected, str(out / "expected.safetensors"))
print(f"wrote {out}")
