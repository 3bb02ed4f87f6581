"""Cross-layer transcoders in circuit-tracer's own layout, written and read back by circuit-tracer's code, for acdc's
`load_clt` to be checked against.

Runs inside a venv with circuit-tracer (made by ``bash experiments/peers/check_transcoder_readers.sh circuit-tracer``):

    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_clt.py OUT_DIR          # write and run circuit-tracer's CLTs
    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_clt.py OUT_DIR --read   # read and run acdc's (OUT_DIR/acdc-*)

Writes OUT_DIR/relu and OUT_DIR/jumprelu: a 3-layer CLT (d_model 16, 24 features per layer) with random weights
from a fixed seed, saved by circuit-tracer's `CrossLayerTranscoder.to_safetensors` with the ``config.yaml`` of its
cache (``model_kind: cross_layer_transcoder``, ``feature_input_hook: hook_resid_mid``). Loads each with
circuit-tracer's `load_clt` and stores, in ``expected.safetensors``, inputs x [L, 10, d], each layer's
``encode_layer`` and the CLT's ``forward(x)`` [L, 10, d] (every layer's reconstruction, decoded sparsely as
circuit-tracer decodes), which experiments/peers/check_clt_reader.py compares with acdc's `load_clt`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt
from safetensors.torch import save_file

out = Path(sys.argv[1])
if "--read" in sys.argv:  # acdc's CLTs in circuit-tracer's layout: circuit-tracer's loader and forward
    from safetensors.torch import load_file

    for kind in ("relu", "jumprelu"):
        folder = out / f"acdc-{kind}"
        loaded = load_clt(str(folder), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
        x = load_file(str(folder / "x.safetensors"))["x"]
        with torch.no_grad():
            save_file({"x": x, "out": loaded(x).contiguous()}, str(folder / "ct_forward.safetensors"))
        print(f"circuit-tracer read {folder}")
    raise SystemExit(0)
torch.manual_seed(0)
L, n, d = 3, 24, 16
cpu = torch.device("cpu")
for act in ("relu", "jump_relu"):
    folder = out / act.replace("_", "")
    clt = CrossLayerTranscoder(L, n, d, activation_function=act, lazy_decoder=False, device=cpu, dtype=torch.float32)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            p.copy_(torch.rand(p.shape) * 0.5 if "threshold" in name else torch.randn(p.shape) * 0.5)
    clt.to_safetensors(str(folder))
    (folder / "config.yaml").write_text(yaml.dump({"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
                                                   "feature_output_hook": "hook_mlp_out", "scan": "acdc-check-clt"}))
    loaded = load_clt(str(folder), device=cpu, dtype=torch.float32, lazy_decoder=False)
    x = torch.randn(L, 10, d)
    expected = {"x": x}
    with torch.no_grad():
        for layer in range(L):
            expected[f"acts.{layer}"] = loaded.encode_layer(x[layer], layer).contiguous()
        expected["out"] = loaded(x).contiguous()
    save_file(expected, str(folder / "expected.safetensors"))
    print(f"wrote {folder}")
