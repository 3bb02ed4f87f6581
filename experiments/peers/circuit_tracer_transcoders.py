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
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet, load_transcoder_set
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
