"""The inputs of the SmolLM2 side-by-side with circuit-tracer: the model as a Hugging Face folder and a
JumpReLU transcoder set that both tools read (circuit-tracer's loader reads ReLU and JumpReLU, not TopK).

    .venv/bin/python experiments/peers/smollm2_jumprelu.py OUT_DIR [--transcoders DIR]

- ``OUT_DIR/model``: SmolLM2-135M-Instruct as acdc loads it: a link to the plain Hugging Face folder acdc
  makes once from the shipped GGUF (dequantized weights and the tokenizer);
- ``OUT_DIR/transcoders``: acdc's TopK set (experiments/smollm2_transcoders.py) turned into JumpReLU
  transcoders, the same weights with one threshold per layer, the pre-activation above which a feature
  fires chosen so that 32 features fire per token on average over 16 held-out sequences of 128 tokens
  (the TopK set's k); written in circuit-tracer's layout (``layer_N.safetensors`` with ``W_enc [n, d]``,
  ``W_skip`` applied as ``x @ W_skip.T``, ``activation_function.threshold``; ``config.yaml``), which acdc
  reads too. A different function from the TopK set: the side-by-side needs one set, not the best one.
- ``OUT_DIR/prompt.txt``: the token ids of the IOI prompt of experiments/smollm2_feature_circuits.py (``--prompt-tokens
  N``: the first N tokens of the held-out speeches, as experiments/attribution_graph_lengths.py takes them), and
  ``logits.safetensors`` acdc's logits of it (circuit-tracer's copy of the model is checked against them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml
from safetensors.torch import save_file

import acdc
from acdc.loading import _converted, _local_source, cache_dir
from acdc.model import Transformer
from acdc.transcoders import text_stream

ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
ap.add_argument("out", type=Path)
ap.add_argument("--transcoders", type=Path, default=cache_dir() / "transcoders" / "smollm2-sotu")
ap.add_argument("--prompt-tokens", type=int, default=None, metavar="N",
                help="the prompt: the first N tokens of the held-out speeches (attribution_graph_lengths.py's), not the IOI prompt")
args = ap.parse_args()
torch.set_num_threads(2)
model = acdc.load_model("smollm2-135m-instruct")
tf = Transformer.from_bridge(model)
ts = acdc.load_transcoders(args.transcoders, model)
args.out.mkdir(parents=True, exist_ok=True)
folder = _converted(_local_source("smollm2-135m-instruct"))  # the plain Hugging Face folder acdc loads the GGUF through
if not (args.out / "model").exists():
    (args.out / "model").symlink_to(folder)

heldout = text_stream("sotu-heldout", model.tokenizer, 128, seed=0)
batch = heldout.batch(0, 16)
io = tf.mlp_io(batch, ts.layers)
tdir = args.out / "transcoders"
tdir.mkdir(exist_ok=True)
for layer in ts.layers:
    t = ts[layer]
    with torch.no_grad():
        pre = (io[layer][0].reshape(-1, t.cfg.d_model) @ t.W_enc + t.b_enc).flatten()
        k = t.cfg.k or 32
        theta = float(pre.kthvalue(pre.numel() - k * pre.numel() // t.n_features).values)
    tensors = {"W_enc": t.W_enc.detach().T.contiguous(), "b_enc": t.b_enc.detach().contiguous(), "W_dec": t.W_dec.detach().contiguous(),
               "b_dec": t.b_dec.detach().contiguous(), "activation_function.threshold": torch.full((t.n_features,), max(theta, 1e-6))}
    if t.W_skip is not None:
        tensors["W_skip"] = t.W_skip.detach().T.contiguous()
    save_file(tensors, str(tdir / f"layer_{layer}.safetensors"))
(tdir / "config.yaml").write_text(yaml.dump({
    "model_kind": "transcoder_set", "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "feature_input_hook": "mlp.hook_in",
    "feature_output_hook": "mlp.hook_out", "scan": "acdc-smollm2-sotu-jumprelu",
    "transcoders": [f"layer_{layer}.safetensors" for layer in ts.layers]}))
if args.prompt_tokens:
    tokens = text_stream("sotu-heldout", model.tokenizer, args.prompt_tokens, seed=0).batch(0, 1)[0]
else:
    tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")[0]
(args.out / "prompt.txt").write_text(" ".join(str(int(t)) for t in tokens) + "\n")
with torch.no_grad():
    save_file({"logits": model(tokens[None])[0].contiguous()}, str(args.out / "logits.safetensors"))
print(f"wrote {args.out}/model, {tdir} ({len(ts)} JumpReLU layers), prompt.txt ({len(tokens)} tokens)")
