"""circuit-tracer's attribution graph of one prompt on a small random GPT-2 with random JumpReLU skip
transcoders, for acdc's attribution graph to be compared with (experiments/peers/check_attribution_graph.py).

Runs inside a venv with circuit-tracer (made by ``bash experiments/peers/check_attribution_graph.sh``):

    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_graph.py OUT_DIR            # make and attribute
    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_graph.py OUT_DIR FILE.json  # read acdc's graph file
    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_graph.py OUT_DIR --gemma2   # a tiny random Gemma 2
    /tmp/ct-venv/bin/python experiments/peers/circuit_tracer_graph.py OUT_DIR --clt      # a cross-layer transcoder

``--clt``: the GPT-2 with one random JumpReLU cross-layer transcoder (circuit-tracer's `CrossLayerTranscoder`, its
features reading ``hook_resid_mid``, the stream before the MLP's norm, and writing into every later ``hook_mlp_out``),
saved by its ``to_safetensors`` with the ``config.yaml`` of circuit-tracer's cache in ``OUT_DIR/transcoders``.

``--gemma2``: a tiny random Gemma 2 (2 layers, norms after attention and after the MLP, soft caps, a 4-token
sliding window) instead of the GPT-2; its transcoders read ``mlp.hook_in`` (the MLP's normed input) and write
``hook_mlp_out`` (the MLP's output after its norm, as GemmaScope's are hooked in circuit-tracer), and circuit-tracer
freezes the norms after attention and after the MLP as it freezes every norm's scale.

The first form writes ``OUT_DIR/model`` (the Hugging Face GPT-2, ``save_pretrained``), ``OUT_DIR/transcoders``
(circuit-tracer's own layout: ``layer_N.safetensors`` by `TranscoderSet.to_safetensors` and ``config.yaml``),
runs `circuit_tracer.attribute` on the prompt's tokens and stores the dense adjacency, the active
features and the logit targets in ``OUT_DIR/ct_graph.safetensors`` (and the seconds it took in
``ct_time.txt``), and the same with ``max_feature_nodes=40`` (batches of 8, re-ranked every 2) in
``OUT_DIR/ct_graph_capped.safetensors``. The second form checks that FILE.json is read by circuit-tracer's own graph-file
model (`circuit_tracer.frontend.graph_models.Model`, pydantic), and that circuit-tracer's own
pruning (`prune_graph`, `create_used_nodes_and_edges`) of its own graph keeps the same nodes and links.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml
from circuit_tracer import attribute
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.frontend.graph_models import Model
from circuit_tracer.graph import Graph, prune_graph
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet, load_transcoder_set
from circuit_tracer.utils.create_graph_files import create_nodes, create_used_nodes_and_edges
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import GPT2Config, GPT2LMHeadModel

out = Path(sys.argv[1])
GEMMA2 = "--gemma2" in sys.argv
CLT = "--clt" in sys.argv


N_LAYERS, D, HEADS, VOCAB, N_FEATURES = (2 if GEMMA2 else 4), 32, 4, 60, 64
TOKENS = torch.tensor([0, 5, 9, 3, 7, 2, 8, 11, 4, 6])
CAP = 40  # max_feature_nodes of the capped graph
HOOK_OUT = "hook_mlp_out" if GEMMA2 or CLT else "mlp.hook_out"
if GEMMA2:
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights
    from transformers import Gemma2Config, Gemma2ForCausalLM

    hf_cfg = Gemma2Config(num_hidden_layers=N_LAYERS, num_attention_heads=HEADS, num_key_value_heads=2, head_dim=8, hidden_size=D,
                          intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0, sliding_window=4, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                          final_logit_softcapping=3.0, attn_implementation="eager")
    cfg = HookedTransformerConfig(
        d_model=D, d_head=8, n_heads=HEADS, d_mlp=48, n_layers=N_LAYERS, n_ctx=32, eps=hf_cfg.rms_norm_eps, d_vocab=VOCAB,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=hf_cfg.rope_theta, rotary_dim=8,
        positional_embedding_type="rotary", use_attn_scale=True, attn_scale=4.0, n_key_value_heads=2, window_size=4,
        use_local_attn=True, attn_types=["local", "global"], attn_scores_soft_cap=5.0, output_logits_soft_cap=3.0,
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM",
        device="cpu", model_name="tiny-gemma2")
else:
    cfg = HookedTransformerConfig(n_layers=N_LAYERS, d_model=D, n_ctx=32, d_head=D // HEADS, n_heads=HEADS, d_mlp=4 * D, d_vocab=VOCAB,
                                  act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard", eps=1e-5,
                                  original_architecture="GPT2LMHeadModel", device="cpu", model_name="tiny-gpt2")

if len(sys.argv) > 2 and not sys.argv[2].startswith("--"):  # read acdc's graph file; prune circuit-tracer's own graph and compare what each keeps
    theirs = Model.model_validate_json(Path(sys.argv[2]).read_text())
    kinds = sorted({n.feature_type for n in theirs.nodes})
    t = load_file(str(out / "ct_graph.safetensors"))
    graph = Graph(input_string="", input_tokens=t["tokens"], active_features=t["active_features"], adjacency_matrix=t["adjacency"],
                  cfg=cfg, selected_features=t["selected_features"], activation_values=t["activations"],
                  logit_targets=[LogitTarget(token_str=str(int(i)), vocab_idx=int(i)) for i in t["logit_tokens"]],
                  logit_probabilities=t["logit_probs"], scan="acdc-check", vocab_size=VOCAB)
    node_mask, edge_mask, cumulative = prune_graph(graph, 0.8, 0.98)
    nodes, links = create_used_nodes_and_edges(graph, create_nodes(graph, node_mask, None, cumulative), edge_mask)
    ours = json.loads(Path(sys.argv[2]).read_text())
    same_nodes = {n.node_id for n in nodes} == {n["node_id"] for n in ours["nodes"]}
    same_links = {(e["source"], e["target"]) for e in links} == {(e["source"], e["target"]) for e in ours["links"]}
    print(f"circuit-tracer read {sys.argv[2]}: {len(theirs.nodes)} nodes ({', '.join(kinds)}), {len(theirs.links)} links; "
          f"its own pruning of its graph keeps {len(nodes)} nodes and {len(links)} links: the same nodes {same_nodes}, "
          f"the same links {same_links}")
    sys.exit(0 if same_nodes and same_links else 1)

out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
if GEMMA2:
    hf = Gemma2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # weights large enough that every edge matters
            p.normal_(0, 0.25)
else:
    hf = GPT2LMHeadModel(GPT2Config(n_layer=N_LAYERS, n_head=HEADS, n_embd=D, vocab_size=VOCAB, n_positions=32,
                                    initializer_range=0.2, bos_token_id=0, eos_token_id=0)).eval()
hf.save_pretrained(out / "model")

built = {}
for layer in range(0 if CLT else N_LAYERS):
    tc = SingleLayerTranscoder(D, N_FEATURES, JumpReLU(torch.rand(N_FEATURES) * 0.5 + 0.2, 0.1), layer, skip_connection=True,
                               device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        for name, p in tc.named_parameters():
            if name != "activation_function.threshold":
                p.copy_(torch.randn(p.shape) * 0.4)
    built[layer] = tc
tdir = out / "transcoders"
if CLT:  # one cross-layer transcoder: each feature reads the stream before its layer's MLP norm, writes into every later MLP
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt

    clt = CrossLayerTranscoder(N_LAYERS, N_FEATURES, D, activation_function="jump_relu", lazy_decoder=False,
                               feature_input_hook="hook_resid_mid", feature_output_hook=HOOK_OUT, device=torch.device("cpu"),
                               dtype=torch.float32)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            p.copy_(torch.rand(p.shape) * 0.5 + 0.2 if "threshold" in name else torch.randn(p.shape) * 0.3)
    clt.to_safetensors(str(tdir))
    (tdir / "config.yaml").write_text(yaml.dump({"model_kind": "cross_layer_transcoder", "model_name": cfg.model_name,
                                                 "feature_input_hook": "hook_resid_mid", "feature_output_hook": HOOK_OUT,
                                                 "scan": "acdc-check"}))
    transcoders = load_clt(str(tdir), feature_input_hook="hook_resid_mid", feature_output_hook=HOOK_OUT, scan="acdc-check",
                           device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
else:
    TranscoderSet(built, feature_input_hook="mlp.hook_in", feature_output_hook=HOOK_OUT, scan="acdc-check").to_safetensors(str(tdir))
    (tdir / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set", "model_name": cfg.model_name, "feature_input_hook": "mlp.hook_in",
                                                 "feature_output_hook": HOOK_OUT, "scan": "acdc-check"}))
    transcoders = load_transcoder_set({i: str(tdir / f"layer_{i}.safetensors") for i in built}, scan="acdc-check",
                                      feature_input_hook="mlp.hook_in", feature_output_hook=HOOK_OUT,
                                      device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)


class Tokens:
    """The little a tokenizer must answer for circuit-tracer: token 0 is the BOS, text is the id."""

    all_special_ids = [0]
    bos_token_id = pad_token_id = eos_token_id = 0
    vocab_size = VOCAB
    padding_side = "right"

    def decode(self, ids):  # noqa: D102
        return " ".join(str(int(i)) for i in torch.as_tensor(ids).reshape(-1).tolist())


model = TransformerLensReplacementModel(cfg)
missing = model.load_state_dict((convert_gemma_weights if GEMMA2 else convert_gpt2_weights)(hf, cfg), strict=False)
assert not [k for k in missing.missing_keys if not k.endswith(("IGNORE", "mask", "b_U", "rotary_sin", "rotary_cos"))], missing.missing_keys  # buffers; GPT-2 has no unembedding bias: zeros
model.tokenizer = Tokens()
model._configure_replacement_model(transcoders)
with torch.no_grad():
    tl_logits = model(TOKENS[None])[0, -1]
assert torch.allclose(tl_logits, hf(TOKENS[None]).logits[0, -1], atol=1e-4), "the TransformerLens copy is not the model"

t0 = time.perf_counter()
graph = attribute(TOKENS, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=64)
seconds = time.perf_counter() - t0
save_file({"adjacency": graph.adjacency_matrix.contiguous(), "active_features": graph.active_features.contiguous(),
           "selected_features": graph.selected_features.contiguous(), "activations": graph.activation_values.contiguous(),
           "logit_tokens": graph.logit_token_ids.contiguous(), "logit_probs": graph.logit_probabilities.contiguous(),
           "tokens": graph.input_tokens.contiguous()}, str(out / "ct_graph.safetensors"))
(out / "ct_time.txt").write_text(f"{seconds:.3f}\n")
# with max_feature_nodes: the features circuit-tracer visits first (by partial influence, re-ranked every 2 batches of 8)
capped = attribute(TOKENS, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=8, max_feature_nodes=CAP, update_interval=2)
save_file({"adjacency": capped.adjacency_matrix.contiguous(), "active_features": capped.active_features.contiguous(),
           "selected_features": capped.selected_features.contiguous(), "activations": capped.activation_values.contiguous()},
          str(out / "ct_graph_capped.safetensors"))
print(f"circuit-tracer: {graph.active_features.shape[0]} active features, {len(graph.logit_targets)} logits, {seconds:.2f} s")
