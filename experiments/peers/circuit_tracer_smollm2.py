"""circuit-tracer's attribution graph of SmolLM2-135M-Instruct on the IOI prompt, with the JumpReLU set
made by experiments/peers/smollm2_jumprelu.py (in OUT_DIR).

    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_smollm2.py OUT_DIR [--batch-size 64] [--max-feature-nodes N]

Loads OUT_DIR/model with transformers, copies its weights into a TransformerLens HookedTransformer
(TransformerLens's own Llama conversion; the logits are checked against acdc's, OUT_DIR/logits.safetensors),
loads OUT_DIR/transcoders with circuit-tracer's `load_transcoder_set`, runs `circuit_tracer.attribute`
(10 logits / 0.95, every active feature or ``--max-feature-nodes``) on OUT_DIR/prompt.txt on 2 threads, and writes
OUT_DIR/ct_graph.safetensors and OUT_DIR/ct_time.txt (seconds; peak resident memory in GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from circuit_tracer import attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("out", type=Path)
ap.add_argument("--batch-size", type=int, default=64)
ap.add_argument("--max-feature-nodes", type=int, default=None, help="circuit-tracer's cap (default: every active feature)")
args = ap.parse_args()
torch.set_num_threads(2)
# a config.json written by a newer transformers keeps rope_theta under rope_parameters, which this venv's reads as
# the default 10,000: take it from the file (SmolLM2's is 100,000)
raw = json.loads((args.out / "model" / "config.json").read_text())
theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta")
config = LlamaConfig.from_pretrained(args.out / "model", rope_theta=theta)
hf = LlamaForCausalLM.from_pretrained(args.out / "model", config=config, torch_dtype=torch.float32).eval()
# the folder's tokenizer_config names a tokenizer class newer than this venv's transformers: read tokenizer.json
tok = PreTrainedTokenizerFast(tokenizer_file=str(args.out / "model" / "tokenizer.json"), bos_token="<|im_start|>",
                              eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
c = hf.config
cfg = HookedTransformerConfig(
    d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
    n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048,
    d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
    rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=c.rope_theta, final_rms=True, gated_mlp=True,
    eps=c.rms_norm_eps, original_architecture="LlamaForCausalLM", device="cpu", model_name="SmolLM2-135M-Instruct",
)
model = TransformerLensReplacementModel(cfg)
loaded = model.load_state_dict(convert_llama_weights(hf, cfg), strict=False)
assert not [k for k in loaded.missing_keys if not k.endswith(("IGNORE", "mask", "b_U", "rotary_sin", "rotary_cos"))], loaded.missing_keys  # buffers made at init
model.tokenizer = tok  # set_tokenizer would fetch the tokenizer again from the hub; only decoding is needed
tdir = args.out / "transcoders"
transcoders = load_transcoder_set({i: str(tdir / f"layer_{i}.safetensors") for i in range(c.num_hidden_layers)},
                                  scan="acdc-smollm2-sotu-jumprelu", feature_input_hook="mlp.hook_in",
                                  feature_output_hook="mlp.hook_out", device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
model._configure_replacement_model(transcoders)
tokens = torch.tensor([int(t) for t in (args.out / "prompt.txt").read_text().split()])
with torch.no_grad():  # against acdc's own logits of the prompt (its forward is checked against Hugging Face's at load)
    diff = float((model(tokens[None])[0] - load_file(str(args.out / "logits.safetensors"))["logits"]).abs().max())
assert diff < 1e-3, f"the TransformerLens copy is not the model (max logit difference {diff})"
t0 = time.perf_counter()
graph = attribute(tokens, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=args.batch_size,
                  max_feature_nodes=args.max_feature_nodes)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
save_file({"adjacency": graph.adjacency_matrix.contiguous(), "active_features": graph.active_features.contiguous(),
           "selected_features": graph.selected_features.contiguous(), "activations": graph.activation_values.contiguous(),
           "logit_tokens": graph.logit_token_ids.contiguous(), "logit_probs": graph.logit_probabilities.contiguous(),
           "tokens": graph.input_tokens.contiguous()}, str(args.out / "ct_graph.safetensors"))
(args.out / "ct_time.txt").write_text(f"{seconds:.3f} {peak:.2f} {diff:.2e}\n")
print(f"circuit-tracer: {graph.active_features.shape[0]} active features, {len(graph.logit_targets)} logits, {seconds:.1f} s, "
      f"peak RSS {peak:.2f} GB; its logits within {diff:.1e} of acdc's")
