"""A transcoder set in circuit-tracer's own layout, written and read back by circuit-tracer's code,
for acdc's reader to be checked against.

Runs inside a venv with circuit-tracer (made by ``bash experiments/peers/check_transcoder_readers.sh circuit-tracer``):

    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_transcoders.py OUT_DIR

Writes ``layer_{i}.safetensors`` with circuit-tracer's `TranscoderSet.to_safetensors` and the
``config.yaml`` its cache writes (``model_kind: transcoder_set``, ``feature_input_hook: mlp.hook_in``,
``feature_output_hook: mlp.hook_out``): layer 0 ReLU, 1 JumpReLU, 2 ReLU with a skip connection,
3 JumpReLU with one; random weights from a fixed seed, decoder rows of random norm. Then loads the
folder with circuit-tracer's `load_transcoder_set` and stores, in ``expected.safetensors``, inputs
x and its ``encode(x)`` and ``forward(x)`` (``decode(encode(x))`` plus the skip path), which
experiments/peers/check_transcoder_reader.py compares with acdc's reading of the folder.

Then the same for circuit-tracer's Gemma presets' files in OUT_DIR/gemma-scope: layer 0 a Gemma Scope
``params.npz`` (numpy arrays, W_enc [d, n], JumpReLU) read by ``load_gemma_scope_transcoder``, layer 1 a
Gemma Scope 2 safetensors (``w_enc``, ``affine_skip_connection``) read by ``load_gemma_scope_2_transcoder``;
``config.yaml`` lists both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.single_layer_transcoder import (
    SingleLayerTranscoder,
    TranscoderSet,
    load_gemma_scope_2_transcoder,
    load_gemma_scope_transcoder,
    load_transcoder_set,
)
from safetensors.torch import save_file

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
d, n = 16, 40
built = {}
for layer, (jump, skip) in enumerate(((False, False), (True, False), (False, True), (True, True))):
    act = JumpReLU(torch.rand(n) * 0.5, 0.1) if jump else F.relu
    tc = SingleLayerTranscoder(d, n, act, layer, skip_connection=skip, device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            if name != "activation_function.threshold":
                p.copy_(torch.randn(p.shape) * 0.5)
    built[layer] = tc
TranscoderSet(built, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="acdc-check").to_safetensors(str(out))
config = {"model_kind": "transcoder_set", "model_name": "planted", "feature_input_hook": "mlp.hook_in",
          "feature_output_hook": "mlp.hook_out", "scan": "acdc-check"}
(out / "config.yaml").write_text(yaml.dump(config))

loaded = load_transcoder_set({i: str(out / f"layer_{i}.safetensors") for i in built}, scan="acdc-check", feature_input_hook="mlp.hook_in",
                             feature_output_hook="mlp.hook_out", device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
x = torch.randn(10, d)
expected = {"x": x}
with torch.no_grad():
    for layer in built:
        tc = loaded[layer]
        expected[f"acts.{layer}"] = tc.encode(x).contiguous()
        expected[f"out.{layer}"] = tc(x).detach().contiguous()
save_file(expected, str(out / "expected.safetensors"))
print(f"wrote {out}")

gs = out / "gemma-scope"
gs.mkdir(exist_ok=True)
rand = {"W_enc": torch.randn(d, n) * 0.5, "W_dec": torch.randn(n, d), "b_enc": torch.randn(n) * 0.5, "b_dec": torch.randn(d),
        "threshold": torch.rand(n) * 0.5}
np.savez(gs / "params.npz", **{k: v.numpy() for k, v in rand.items()})
save_file({"w_enc": torch.randn(d, n) * 0.5, "w_dec": torch.randn(n, d), "b_enc": torch.randn(n) * 0.5, "b_dec": torch.randn(d),
           "threshold": torch.rand(n) * 0.5, "affine_skip_connection": torch.randn(d, d) * 0.5}, str(gs / "gs2.safetensors"))
(gs / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set", "model_name": "planted", "feature_input_hook": "mlp.hook_in",
                                           "feature_output_hook": "mlp.hook_out", "scan": "acdc-check-gemma-scope",
                                           "transcoders": ["params.npz", "gs2.safetensors"]}))
cpu = torch.device("cpu")
loaded = {0: load_gemma_scope_transcoder(str(gs / "params.npz"), 0, device=cpu),
          1: load_gemma_scope_2_transcoder(str(gs / "gs2.safetensors"), 1, device=cpu)}
expected = {"x": x}
with torch.no_grad():
    for layer, tc in loaded.items():
        expected[f"acts.{layer}"] = tc.encode(x).contiguous()
        expected[f"out.{layer}"] = tc(x).detach().contiguous()
save_file(expected, str(gs / "expected.safetensors"))
print(f"wrote {gs}")
